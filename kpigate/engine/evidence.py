"""What one evaluation window says about each KPI: the observations per arm and how to read them.

Every KPI type reduces, per window, to an estimate for each arm and the variance of the
candidate-minus-baseline difference. The sequential tests only ever see those two numbers,
so adding a KPI type means adding one reader here and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rate:
    """successes / trials (precision, recall, FPR, error rate, SLO exceedance...)."""

    successes: float
    trials: float

    @property
    def samples(self) -> float:
        return self.trials

    def __add__(self, other: Rate) -> Rate:
        return Rate(self.successes + other.successes, self.trials + other.trials)


@dataclass(frozen=True, slots=True)
class Histogram:
    """Prometheus-style cumulative buckets: count of observations <= each upper bound."""

    bounds: tuple[float, ...]  # strictly increasing, last is +inf
    cumulative: tuple[float, ...]

    @property
    def samples(self) -> float:
        return self.cumulative[-1] if self.cumulative else 0.0

    def __add__(self, other: Histogram) -> Histogram:
        if other.bounds != self.bounds:
            raise ValueError("histograms with different buckets cannot be combined")
        return Histogram(
            self.bounds,
            tuple(a + b for a, b in zip(self.cumulative, other.cumulative, strict=True)),
        )


@dataclass(frozen=True, slots=True)
class ScoreHistograms:
    """Score histograms per true class, on the same buckets: enough for the AUC."""

    positives: Histogram
    negatives: Histogram

    @property
    def samples(self) -> float:
        # Positives are the scarce class in fraud; the burn-in counts them.
        return min(self.positives.samples, self.negatives.samples)

    def __add__(self, other: ScoreHistograms) -> ScoreHistograms:
        return ScoreHistograms(self.positives + other.positives, self.negatives + other.negatives)


@dataclass(frozen=True, slots=True)
class SegmentRates:
    """One rate in two segments; the KPI is the gap a - b (fairness)."""

    a: Rate
    b: Rate

    @property
    def samples(self) -> float:
        return min(self.a.trials, self.b.trials)

    def __add__(self, other: SegmentRates) -> SegmentRates:
        return SegmentRates(self.a + other.a, self.b + other.b)


ArmData = Rate | Histogram | ScoreHistograms | SegmentRates


@dataclass(frozen=True, slots=True)
class Observation:
    """One KPI in one window; an arm is None when it sent no data."""

    baseline: ArmData | None
    candidate: ArmData | None


@dataclass(frozen=True, slots=True)
class Cohort:
    """The predictions served in one earlier window, read once their labels have matured."""

    window: int  # the serving window
    stage: float | None  # the stage it was served at; None when it straddles two stages
    matured_at: float  # Unix seconds


@dataclass(frozen=True, slots=True)
class Pending:
    """The next cohort still waiting for its labels."""

    window: int
    matures_at: float  # Unix seconds


@dataclass(frozen=True, slots=True)
class Window:
    """One evaluation interval of one rollout.

    Immediate KPIs (latency, errors, decisions) describe this window's own traffic. When the
    policy has a `labels` section, label KPIs describe `cohort` (an earlier serving window whose
    labels have matured) and are absent when no cohort matured since the last look; `pending`
    then says which cohort is next and when it matures.
    """

    index: int
    stage: float
    kpis: Mapping[str, Observation]
    stale: bool = False
    note: str = ""
    cohort: Cohort | None = None
    pending: Pending | None = None


@dataclass(frozen=True, slots=True)
class Comparison:
    """Candidate vs baseline in one window, in the KPI's own units."""

    candidate: float
    baseline: float
    variance: float  # of candidate - baseline

    @property
    def difference(self) -> float:
        return self.candidate - self.baseline


class NotComparable(ValueError):
    """The window holds data but not enough to compare (e.g. an empty class)."""


# --- readers: one per KPI type -------------------------------------------------------------


def _smoothed(successes: float, trials: float) -> float:
    # (x+1)/(n+2) keeps the variance positive when a window is all successes or all failures.
    return (successes + 1.0) / (trials + 2.0)


def compare_rates(candidate: Rate, baseline: Rate, reference: Rate) -> Comparison:
    if candidate.trials <= 0 or baseline.trials <= 0:
        raise NotComparable("an arm has no trials")
    # The variance uses a reference rate that excludes this window's candidate data (see
    # compare()): weights that moved with the candidate's own noise would favour windows where
    # it happened to look better, and more harm could then weigh less.
    rate = _smoothed(reference.successes, reference.trials)
    variance = rate * (1.0 - rate) * (1.0 / candidate.trials + 1.0 / baseline.trials)
    return Comparison(
        candidate.successes / candidate.trials, baseline.successes / baseline.trials, variance
    )


def histogram_quantile(q: float, hist: Histogram) -> float:
    """Linear interpolation inside the bucket, as Prometheus' histogram_quantile does."""
    total = hist.samples
    if total <= 0:
        raise NotComparable("empty histogram")
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(hist.bounds, hist.cumulative, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bucket: its bound is all we know
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def _density_at(value: float, hist: Histogram) -> float:
    """Observations per unit near `value`, from the bucket holding it."""
    lower_bound, lower_count = 0.0, 0.0
    total = hist.samples
    for bound, count in zip(hist.bounds, hist.cumulative, strict=True):
        if value <= bound:
            if math.isinf(bound):
                break
            width = bound - lower_bound
            if width > 0 and count > lower_count:
                return (count - lower_count) / total / width
        lower_bound, lower_count = bound, count
    raise NotComparable("the quantile falls in an empty or unbounded bucket; add finer buckets")


def compare_quantiles(
    q: float, candidate: Histogram, baseline: Histogram, reference: Histogram
) -> Comparison:
    if candidate.samples <= 0 or baseline.samples <= 0:
        raise NotComparable("an arm has no observations")
    density = _density_at(histogram_quantile(q, reference), reference)
    # Asymptotic variance of a sample quantile: q(1-q) / (n f(x_q)^2), f from the reference.
    unit = q * (1.0 - q) / density**2
    return Comparison(
        histogram_quantile(q, candidate),
        histogram_quantile(q, baseline),
        unit / candidate.samples + unit / baseline.samples,
    )


def auc_from_histograms(scores: ScoreHistograms) -> float:
    """P(score of a positive > score of a negative), ties within a bucket counted half."""
    positives, negatives = scores.positives, scores.negatives
    n_pos, n_neg = positives.samples, negatives.samples
    if n_pos <= 0 or n_neg <= 0:
        raise NotComparable("a class has no scores")
    wins = 0.0
    below_pos = below_neg = 0.0
    for pos_cum, neg_cum in zip(positives.cumulative, negatives.cumulative, strict=True):
        pos_in, neg_in = pos_cum - below_pos, neg_cum - below_neg
        wins += pos_in * (below_neg + 0.5 * neg_in)
        below_pos, below_neg = pos_cum, neg_cum
    return wins / (n_pos * n_neg)


def _auc_variance(auc: float, n_pos: float, n_neg: float) -> float:
    # Hanley & McNeil (1982).
    q1 = auc / (2.0 - auc)
    q2 = 2.0 * auc * auc / (1.0 + auc)
    spread = auc * (1.0 - auc) + (n_pos - 1.0) * (q1 - auc * auc) + (n_neg - 1.0) * (q2 - auc * auc)
    return max(spread, 1e-12) / (n_pos * n_neg)


def compare_aucs(
    candidate: ScoreHistograms, baseline: ScoreHistograms, reference: ScoreHistograms
) -> Comparison:
    cand, base = auc_from_histograms(candidate), auc_from_histograms(baseline)
    pooled = min(max(auc_from_histograms(reference), 1e-6), 1.0 - 1e-6)
    variance = _auc_variance(
        pooled, candidate.positives.samples, candidate.negatives.samples
    ) + _auc_variance(pooled, baseline.positives.samples, baseline.negatives.samples)
    return Comparison(cand, base, variance)


def _gap(arm: SegmentRates) -> float:
    if arm.a.trials <= 0 or arm.b.trials <= 0:
        raise NotComparable("a segment has no trials")
    return arm.a.successes / arm.a.trials - arm.b.successes / arm.b.trials


def compare_gaps(
    candidate: SegmentRates, baseline: SegmentRates, reference: SegmentRates
) -> Comparison:
    cand, base = _gap(candidate), _gap(baseline)
    pa = _smoothed(reference.a.successes, reference.a.trials)
    pb = _smoothed(reference.b.successes, reference.b.trials)
    variance = 0.0
    for arm in (candidate, baseline):
        variance += pa * (1 - pa) / arm.a.trials + pb * (1 - pb) / arm.b.trials
    return Comparison(cand, base, variance)


def value_of(arm: ArmData, quantile: float | None = None) -> float:
    """The KPI's value for one arm, for display and for the sigma rule."""
    if isinstance(arm, Rate):
        if arm.trials <= 0:
            raise NotComparable("no trials")
        return arm.successes / arm.trials
    if isinstance(arm, Histogram):
        return histogram_quantile(quantile if quantile is not None else 0.5, arm)
    if isinstance(arm, ScoreHistograms):
        return auc_from_histograms(arm)
    return _gap(arm)


def compare(
    candidate: ArmData,
    baseline: ArmData,
    quantile: float | None = None,
    reference: ArmData | None = None,
) -> Comparison:
    """Candidate vs baseline in one window; both arms must have the same form.

    `reference` (both arms of all earlier windows, summed) sets the variance. Without one (the
    first window) the baseline's own window stands in: either way the variance does not depend
    on this window's candidate data, so the weights are predictable and the evidence moves
    monotonically with the candidate's results.
    """
    ref = baseline if reference is None else reference
    if isinstance(candidate, Rate) and isinstance(baseline, Rate) and isinstance(ref, Rate):
        return compare_rates(candidate, baseline, ref)
    if (
        isinstance(candidate, Histogram)
        and isinstance(baseline, Histogram)
        and isinstance(ref, Histogram)
    ):
        if quantile is None:
            raise NotComparable("a histogram KPI needs a quantile")
        return compare_quantiles(quantile, candidate, baseline, ref)
    if (
        isinstance(candidate, ScoreHistograms)
        and isinstance(baseline, ScoreHistograms)
        and isinstance(ref, ScoreHistograms)
    ):
        return compare_aucs(candidate, baseline, ref)
    if (
        isinstance(candidate, SegmentRates)
        and isinstance(baseline, SegmentRates)
        and isinstance(ref, SegmentRates)
    ):
        return compare_gaps(candidate, baseline, ref)
    raise NotComparable("the two arms report different kinds of data")

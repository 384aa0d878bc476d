"""What one evaluation window says about each KPI: the observations per arm and how to read them.

Every KPI type reduces, per window, to an estimate for each arm and the variance of the
candidate-minus-baseline difference. The sequential tests only ever see those two numbers,
so adding a KPI type means adding one reader here and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

_NORMAL = NormalDist()


@dataclass(frozen=True, slots=True)
class Rate:
    """successes / trials (precision, recall, FPR, error rate, SLO exceedance...).

    `deff`, when the source knows it, is the design effect of this arm's rate over the rollout
    so far (this window and the arm's earlier ones): its cluster-robust variance with the user
    (entity_key) as the unit, over the binomial one (design_effect()). Rollout-to-date because
    users recur: a user's outcomes are correlated across windows as well as within one. A sum
    of records has no design effect of its own, so it has none.
    """

    successes: float
    trials: float
    deff: float | None = None

    @property
    def samples(self) -> float:
        return self.trials

    def __add__(self, other: Rate) -> Rate:
        return Rate(self.successes + other.successes, self.trials + other.trials)


@dataclass(frozen=True, slots=True)
class ClusterMoments:
    """Per arm, sums over its users i of y_i (successes) and n_i (trials): enough for the
    cluster-robust variance of y / n without the per-user rows (a source sums them in SQL)."""

    successes: float  # sum y_i
    trials: float  # sum n_i
    yy: float  # sum y_i^2
    yn: float  # sum y_i n_i
    nn: float  # sum n_i^2
    clusters: float  # users with n_i > 0


def design_effect(m: ClusterMoments) -> float | None:
    """Cluster-robust variance of p = y / n over its binomial variance p (1 - p) / n.

    Delta method for the ratio with users as the independent units: Var(p) ~ sum_i (y_i -
    p n_i)^2 / n^2 x G / (G - 1) (G users; the factor is the usual small-sample correction).
    1 when every user makes one transaction (then sum (y_i - p n_i)^2 = n p (1 - p)), above 1
    when a user's transactions share their outcome. None when it is not defined: fewer than two
    users, or a rate of exactly 0 or 1 (no binomial variance to compare with).
    """
    if m.clusters < 2 or m.trials <= 0:
        return None
    p = m.successes / m.trials
    binomial = p * (1.0 - p)
    if not binomial > 0:
        return None
    # sum (y - p n)^2 expanded; rounding can push it a hair below 0.
    residual = max(m.yy - 2.0 * p * m.yn + p * p * m.nn, 0.0)
    value = residual * m.clusters / ((m.clusters - 1.0) * m.trials * binomial)
    return value if math.isfinite(value) else None


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

    A `calibration` window is an A/A comparison from before the rollout started: the baseline's
    traffic split in two halves by a hash of the user, `baseline` one half and `candidate` the
    other. It feeds only the between-window variance (docs/engine.md), never the evidence, and
    is no look; label KPIs in it are cohorts that had matured before the rollout began.
    """

    index: int
    stage: float
    kpis: Mapping[str, Observation]
    stale: bool = False
    note: str = ""
    cohort: Cohort | None = None
    pending: Pending | None = None
    calibration: bool = False


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


def _bucket_weights(x: float, bounds: tuple[float, ...]) -> list[float]:
    """Per bucket, the share of it at or below x under linear interpolation (Prometheus')."""
    weights, lower = [], 0.0
    for bound in bounds:
        if bound <= x:
            weights.append(1.0)
        elif lower < x and not math.isinf(bound):
            weights.append((x - lower) / (bound - lower))
        else:
            weights.append(0.0)
        lower = bound
    return weights


def _bucket_counts(hist: Histogram) -> list[float]:
    previous, out = 0.0, []
    for count in hist.cumulative:
        out.append(count - previous)
        previous = count
    return out


def cdf_at(x: float, hist: Histogram) -> float:
    """Share of observations <= x, interpolated linearly inside the bucket holding x."""
    total = hist.samples
    if total <= 0:
        raise NotComparable("empty histogram")
    weights = _bucket_weights(x, hist.bounds)
    return sum(c * a for c, a in zip(_bucket_counts(hist), weights, strict=True)) / total


def _cdf_unit_variance(x: float, reference: Histogram) -> float:
    """n x Var(cdf_at(x)) for n observations distributed as the reference (multinomial)."""
    weights = _bucket_weights(x, reference.bounds)
    shares = [c / reference.samples for c in _bucket_counts(reference)]
    mean = sum(p * a for p, a in zip(shares, weights, strict=True))
    second = sum(p * a * a for p, a in zip(shares, weights, strict=True))
    return max(second - mean * mean, 0.0)


def _probit_slope(bounds: tuple[float, ...], probits: Mapping[int, float], i: int) -> float | None:
    """d probit(F) / d log(t) across bucket i (from bound i-1 to bound i); None for the first
    bucket, one reaching +Inf, or one empty in earlier windows."""
    if i <= 0 or i >= len(bounds) or math.isinf(bounds[i]) or bounds[i - 1] <= 0:
        return None
    rise = probits[i] - probits[i - 1]
    return rise / math.log(bounds[i] / bounds[i - 1]) if rise > 0 else None


def _interpolation_density(x: float, reference: Histogram) -> float | None:
    """How fast cdf_at(x) moves when the distribution shifts: F̂(x) interpolates the bucket's
    bounds linearly, so a shift by d moves it by d times the same interpolation of the density
    at the two bounds. The bucket's mean density instead (what histogram_quantile assumes)
    misreads a shift in a wide tail bucket: +25 ms at a p95 of 900 ms inside the 0.5-1 s bucket
    read as +8.9 ms. At each bound, probit(F) is taken as locally linear in log(t) (exact for a
    lognormal), its slope the mean of the two buckets the bound separates, so each bound has
    one density and the result is continuous in x. None where a bound's density cannot be
    estimated (x in the first bucket or one reaching +Inf, or no bucket beside a bound with
    observations in earlier windows)."""
    bounds, n = reference.bounds, reference.samples
    i = next((k for k, bound in enumerate(bounds) if x <= bound), len(bounds))
    if i == 0 or i >= len(bounds) or math.isinf(bounds[i]):
        return None
    floor = 0.5 / n  # F kept off 0 and 1 by half an observation
    probits = {
        k: _NORMAL.inv_cdf(min(max(reference.cumulative[k] / n, floor), 1.0 - floor))
        for k in range(max(i - 2, 0), min(i + 2, len(bounds)))
    }
    densities = []
    for k in (i - 1, i):
        slopes = [s for s in (_probit_slope(bounds, probits, k),
                              _probit_slope(bounds, probits, k + 1)) if s is not None]  # fmt: skip
        if not slopes:
            return None
        densities.append(_NORMAL.pdf(probits[k]) * (sum(slopes) / len(slopes)) / bounds[k])
    w = (x - bounds[i - 1]) / (bounds[i] - bounds[i - 1])
    return (1.0 - w) * densities[0] + w * densities[1]


def compare_quantiles(
    q: float,
    candidate: Histogram,
    baseline: Histogram,
    reference: Histogram,
    span: float | None = None,
) -> Comparison:
    """Quantiles compared on the exceedance scale, so coarse buckets cannot fake a difference.

    At x, the reference's q-quantile (from earlier windows: predictable), each arm's share of
    observations at or below x is a linear function of its bucket counts, so its variance is
    exact from the multinomial, whatever the bucket layout; an interpolated quantile instead
    jumps by a bucket's width when x sits near a bucket edge. The shares are turned into the
    KPI's units by the density with which the interpolated share responds to a shift
    (_interpolation_density), continuous in x; where it cannot be estimated, by the reference's
    density averaged over x +- span (at least 2% of x). The linearised quantile is
    x + (q - F(x)) / density.
    """
    if candidate.samples <= 0 or baseline.samples <= 0:
        raise NotComparable("an arm has no observations")
    if candidate.bounds != baseline.bounds or reference.bounds != candidate.bounds:
        raise NotComparable("the arms' histograms have different buckets")
    x = histogram_quantile(q, reference)
    density = _interpolation_density(x, reference)
    if density is None or not density > 0:
        half = max(span or 0.1 * x, 0.02 * x, 1e-9)
        low = max(x - half, 0.0)
        density = (cdf_at(x + half, reference) - cdf_at(low, reference)) / (x + half - low)
    if not density > 0:
        raise NotComparable("no observations near the quantile in earlier windows")
    unit = _cdf_unit_variance(x, reference)
    if not unit > 0:
        raise NotComparable("every earlier observation falls on one side of the quantile")
    f_c, f_b = cdf_at(x, candidate), cdf_at(x, baseline)
    return Comparison(
        x + (q - f_c) / density,
        x + (q - f_b) / density,
        unit * (1.0 / candidate.samples + 1.0 / baseline.samples) / density**2,
    )


def exceedance(threshold: float, hist: Histogram) -> Rate:
    """Observations above a threshold that is one of the bucket bounds: exact, no interpolation."""
    for bound, count in zip(hist.bounds, hist.cumulative, strict=True):
        if math.isclose(bound, threshold, rel_tol=1e-9, abs_tol=1e-12):
            return Rate(hist.samples - count, hist.samples)
    finite = ", ".join(f"{b:g}" for b in hist.bounds if not math.isinf(b))
    raise NotComparable(
        f"threshold {threshold:g} is not a bucket bound (bounds: {finite}); "
        "choose one so the share above it is exact"
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


Contrast = Literal["signed", "widen", "reverse"]


def compare_gaps(
    candidate: SegmentRates,
    baseline: SegmentRates,
    reference: SegmentRates,
    contrast: Contrast = "signed",
) -> Comparison:
    """The gap a - b of each arm; on magnitude, two linear contrasts instead of |gap|.

    |g_c| <= |g_b| holds exactly when s g_c <= |g_b| and -s g_c <= |g_b| (s = the sign of the
    baseline's gap): `widen` compares s g_c with s g_b (the gap grows on its side), `reverse`
    compares -s g_c with s g_b (it flips and grows on the other side). Each is linear in the
    segment rates, so the per-window estimates stay unbiased; |gap| per window would not be (the
    smaller arm's noise inflates its absolute value). s comes from the reference (earlier
    windows), so it is known before the window is seen.
    """
    cand, base = _gap(candidate), _gap(baseline)
    pa = _smoothed(reference.a.successes, reference.a.trials)
    pb = _smoothed(reference.b.successes, reference.b.trials)
    variance = 0.0
    for arm in (candidate, baseline):
        variance += pa * (1 - pa) / arm.a.trials + pb * (1 - pb) / arm.b.trials
    if contrast == "signed":
        return Comparison(cand, base, variance)
    side = -1.0 if _gap(reference) < 0 else 1.0
    towards = side if contrast == "widen" else -side
    return Comparison(towards * cand, side * base, variance)


def value_of(arm: ArmData, quantile: float | None = None, threshold: float | None = None) -> float:
    """The KPI's value for one arm, for display and for the sigma rule."""
    if isinstance(arm, Histogram) and threshold is not None:
        arm = exceedance(threshold, arm)
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
    *,
    span: float | None = None,
    threshold: float | None = None,
    contrast: Contrast = "signed",
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
        if threshold is not None:
            return compare_rates(
                exceedance(threshold, candidate),
                exceedance(threshold, baseline),
                exceedance(threshold, ref),
            )
        if quantile is None:
            raise NotComparable("a histogram KPI needs a quantile or a threshold")
        return compare_quantiles(quantile, candidate, baseline, ref, span)
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
        return compare_gaps(candidate, baseline, ref, contrast)
    raise NotComparable("the two arms report different kinds of data")

"""The statistics under the gate: KPI readers, e-values, and error rates by simulation."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from kpigate.engine import Decision, Histogram, RolloutState, ScoreHistograms, compile_plan, judge
from kpigate.engine import sequential as seq
from kpigate.engine.evidence import (
    Rate,
    SegmentRates,
    auc_from_histograms,
    compare,
    histogram_quantile,
)
from kpigate.policy import Kpi
from tests.engine_helpers import policy, simulate_rates


def hist(bounds: list[float], values: np.ndarray) -> Histogram:
    edges = np.array(bounds)
    cumulative = [(values <= b).sum() for b in edges]
    return Histogram(tuple(bounds), tuple(float(c) for c in cumulative))


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    h = Histogram((10.0, 20.0, math.inf), (50.0, 100.0, 100.0))
    assert histogram_quantile(0.5, h) == 10.0
    assert histogram_quantile(0.75, h) == 15.0
    assert histogram_quantile(0.25, h) == 5.0


def test_quantile_variance_matches_the_sampling_spread() -> None:
    rng = np.random.default_rng(1)
    bounds = [*np.linspace(10, 300, 59).tolist(), math.inf]
    estimates, variances = [], []
    for _ in range(300):
        a, b = rng.lognormal(4, 0.4, 4000), rng.lognormal(4, 0.4, 4000)
        c = compare(hist(bounds, a), hist(bounds, b), 0.95)
        estimates.append(c.difference)
        variances.append(c.variance)
    assert np.std(estimates) ** 2 == pytest.approx(np.mean(variances), rel=0.25)


# Prometheus' default buckets in ms (client_golang DefBuckets, prometheus/histogram.go).
DEFAULT_BUCKETS_MS = (5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
                      10000.0, math.inf)  # fmt: skip


@pytest.mark.parametrize("p95", [300.0, 600.0, 900.0])
def test_a_shift_inside_a_wide_bucket_reads_near_its_size(p95: float) -> None:
    """+25 ms at a lognormal p95 on the default buckets, from exact bucket shares. The bucket's
    mean density (histogram_quantile's assumption) read it as +8.9 ms at 900 ms (inside the
    0.5-1 s bucket, below a 10 ms margin at any traffic) and +42 ms at 300 ms; the density at
    which the interpolated share responds to a shift reads it within 15%."""
    normal, n = NormalDist(), 1e7

    def histogram(at: float) -> Histogram:
        mu = math.log(at) - normal.inv_cdf(0.95) * 0.5
        shares = [1.0 if math.isinf(b) else normal.cdf((math.log(b) - mu) / 0.5)
                  for b in DEFAULT_BUCKETS_MS]  # fmt: skip
        return Histogram(DEFAULT_BUCKETS_MS, tuple(share * n for share in shares))

    base = histogram(p95)
    c = compare(histogram(p95 + 25.0), base, 0.95, base, span=10.0)
    assert c.difference == pytest.approx(25.0, rel=0.15)
    same = compare(base, base, 0.95, base, span=10.0)
    assert same.difference == 0.0 and same.variance > 0


def test_auc_from_fine_histograms_matches_the_rank_statistic() -> None:
    rng = np.random.default_rng(2)
    pos, neg = rng.normal(2.0, 1.0, 3000), rng.normal(0.0, 1.0, 30000)
    bounds = [*np.linspace(-4, 7, 221).tolist(), math.inf]
    auc = auc_from_histograms(ScoreHistograms(hist(bounds, pos), hist(bounds, neg)))
    exact = (pos[:, None] > neg[None, :5000]).mean()
    assert auc == pytest.approx(exact, abs=0.005)
    same = ScoreHistograms(hist(bounds, neg[:3000]), hist(bounds, neg[3000:]))
    assert auc_from_histograms(same) == pytest.approx(0.5, abs=0.02)


def test_gap_compares_the_segment_difference() -> None:
    cand = SegmentRates(Rate(30, 1000), Rate(10, 1000))
    base = SegmentRates(Rate(20, 1000), Rate(10, 1000))
    c = compare(cand, base)
    assert (c.candidate, c.baseline) == pytest.approx((0.02, 0.01))
    assert c.variance > 0


@pytest.mark.parametrize("info", [1.0, 300.0, 1e4, 1e7])
def test_harm_boundary_is_where_the_e_value_reaches_the_threshold(info: float) -> None:
    rho, log_threshold = 2500.0, math.log(20.0)
    s = seq.harm_boundary(info, rho, log_threshold)
    assert seq.harm_log_evalue(s, info, rho) == pytest.approx(log_threshold, abs=1e-7)
    assert seq.harm_log_evalue(s * 0.99, info, rho) < log_threshold


def test_log_normal_cdf_in_the_far_tail() -> None:
    assert seq.log_normal_cdf(0.0) == pytest.approx(math.log(0.5))
    assert seq.log_normal_cdf(-40.0) == pytest.approx(-804.608, abs=1e-2)
    assert math.isfinite(seq.harm_log_evalue(-1e6, 10.0, 1.0))


def rollback_rate(
    kpis: tuple[Kpi, ...], rollouts: int, positives: int, drift: float, seed: int
) -> float:
    plan = compile_plan(policy(*kpis))
    rng = np.random.default_rng(seed)
    rolled = 0
    for _ in range(rollouts):
        windows = {k.name: simulate_rates(rng, 24, positives, 0.876, 0.0, drift) for k in kpis}
        state = RolloutState()
        for t in range(24):
            merged = windows[kpis[0].name][t]
            obs = {k.name: windows[k.name][t].kpis["recall"] for k in kpis}
            state, decision = judge(plan, state, type(merged)(merged.index, merged.stage, obs))
            if decision.decision is Decision.ROLLBACK:
                rolled += 1
                break
    return rolled / rollouts


def test_false_rollback_rate_of_an_identical_candidate_stays_within_alpha() -> None:
    # 50 labeled positives per window at 5% (the hardest setting), shared drift, 24 looks.
    rate = rollback_rate((Kpi(name="recall"),), rollouts=1500, positives=50, drift=0.008, seed=11)
    assert rate <= 0.05


def test_false_rollback_budget_is_shared_across_kpis() -> None:
    kpis = tuple(Kpi(name=n) for n in ("recall", "precision", "tpr_eu"))
    rate = rollback_rate(kpis, rollouts=600, positives=100, drift=0.0, seed=12)
    assert rate <= 0.05


def test_a_two_point_drop_is_caught_and_never_promoted() -> None:
    plan = compile_plan(policy())
    rng = np.random.default_rng(13)
    caught = promoted = 0
    for _ in range(200):
        state = RolloutState()
        for window in simulate_rates(rng, 24, 500, 0.876, -0.02):
            state, decision = judge(plan, state, window)
            promoted += decision.decision is Decision.PROMOTE
            if decision.decision is Decision.ROLLBACK:
                caught += 1
                break
    assert caught / 200 >= 0.95
    assert promoted == 0

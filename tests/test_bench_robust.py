"""The real-traffic benchmark's simulated data have the properties it claims (bench/robust.py).

The latency buckets are Prometheus' defaults: DefBuckets in client_golang's
prometheus/histogram.go ({.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10} seconds).
"""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import engine_at  # bench/ is not a package
import robust
import simulate as sim

from kpigate.engine import Rate
from kpigate.serve.routing import bucket


def test_extra_binomial_noise_adds_its_variance() -> None:
    rng = np.random.default_rng(7)
    windows, total, sd = 20_000, 10_000, 0.02
    x_c, n_c, x_b, n_b = sim.binomial_arms(rng, windows, total, 0.0, sd)
    p = sim.BASE_RECALL
    for x, n in ((x_c[:, 3], n_c[:, 3]), (x_b[:, 0], n_b[:, 0])):
        rate = x / n
        binomial = p * (1 - p) / n[0]
        assert rate.var() == pytest.approx(binomial + sd * sd, rel=0.05)
        assert rate.var() > 2 * binomial  # the noise, not the binomial part, dominates
    # The arms move independently: within-window comparison does not cancel the noise.
    assert abs(np.corrcoef(x_c[:, 0] / n_c[:, 0], x_b[:, 0] / n_b[:, 0])[0, 1]) < 0.05
    assert (n_c + n_b == total).all()
    assert list(n_c[0]) == [500, 2500, 5000, 9500]  # split by the stage (holdback at 100%)


def test_repeat_users_are_sticky_heavy_tailed_and_correlated() -> None:
    rng = np.random.default_rng(11)
    people = sim.users(rng, 20_000, 10_000, salt="bench")
    top_fifth = np.sort(people.rate)[::-1][: people.rate.size // 5].sum() / people.rate.sum()
    assert 0.75 < top_fifth < 0.86
    assert people.rate.sum() == pytest.approx(10_000)
    assert people.propensity.mean() == pytest.approx(sim.BASE_RECALL, abs=0.005)
    assert people.propensity.std() == pytest.approx(0.099, abs=0.005)

    # The same users every window: an arm's rates share its users' propensities, so their
    # spread across rollouts is far above the binomial one, and the design effect says so.
    diffs, binomial, deffs = [], [], []
    for r in range(200):
        rng_r = np.random.default_rng([3, r])
        observe = sim.user_arms(rng_r, sim.users(rng_r, 20_000, 10_000, "bench"), 1)
        obs = observe(0, 0)["recall"]
        c, b = obs.candidate, obs.baseline
        assert isinstance(c, Rate) and isinstance(b, Rate)
        assert c.successes <= c.trials and b.successes <= b.trials
        assert c.trials + b.trials == pytest.approx(10_000, rel=0.05)
        diffs.append(c.successes / c.trials - b.successes / b.trials)
        binomial.append(0.876 * 0.124 * (1 / c.trials + 1 / b.trials))
        deffs.append(c.deff)
    assert np.var(diffs) > 1.2 * np.mean(binomial)
    assert np.mean(deffs) > 1.2


def test_users_design_effect_grows_over_windows_as_the_same_users_recur() -> None:
    """The arm's deff is over its rows of the rollout so far: with the same users every window
    it grows with the windows (their propensities do not average out), and it is the
    cluster-robust variance the rates show across rollouts."""
    first, sixth, rates_sixth, binomial_sixth = [], [], [], []
    for r in range(300):
        rng = np.random.default_rng([8, r])
        observe = sim.user_arms(rng, sim.users(rng, 5_000, 2_000, "bench"), 6)
        x = n = 0.0
        for t in range(6):
            arm = observe(t, 1)["recall"].candidate
            assert isinstance(arm, Rate) and arm.deff is not None
            x, n = x + arm.successes, n + arm.trials
            if t == 0:
                first.append(arm.deff)
            elif t == 5:
                sixth.append(arm.deff)
        rates_sixth.append(x / n)
        binomial_sixth.append(x / n * (1 - x / n) / n)
    assert np.median(sixth) > 2 * np.median(first) > 2.0
    # the rollout-to-date rate of the 25% arm varies across rollouts as deff x binomial says
    assert np.var(rates_sixth) == pytest.approx(
        np.mean(np.array(sixth) * np.array(binomial_sixth)), rel=0.3
    )
    # a higher weight only adds users: the 50% arm's trials exceed the 25% arm's
    people = sim.users(np.random.default_rng(1), 5_000, 2_000, "bench")
    c25 = sim.user_arms(np.random.default_rng(2), people, 1)(0, 1)["recall"].candidate
    c50 = sim.user_arms(np.random.default_rng(2), people, 1)(0, 2)["recall"].candidate
    assert isinstance(c25, Rate) and isinstance(c50, Rate)
    assert c50.trials > c25.trials


def test_user_routing_is_the_routers_sticky_hash() -> None:
    people = sim.users(np.random.default_rng(0), 4_000, 1_000, salt="s")
    assert [int(people.buckets[i]) for i in (0, 17, 3_999)] == [
        bucket(f"user-{i}", "s") for i in (0, 17, 3_999)
    ]
    share = [(people.buckets < w * 100).mean() for w in sim.stage_weights()]
    assert share == pytest.approx([0.05, 0.25, 0.50, 0.95], abs=0.02)


@pytest.mark.parametrize("p95", robust.P95S_MS)
def test_latency_buckets_hold_the_true_p95(p95: float) -> None:
    assert len(sim.BOUNDS_MS) == 12 and math.isinf(sim.BOUNDS_MS[-1])
    mu = sim.lognormal_mu(p95, 0.5)
    draws = np.random.default_rng(5).lognormal(mu, 0.5, 400_000)
    assert np.quantile(draws, 0.95) == pytest.approx(p95, rel=0.01)
    probabilities = sim.bucket_probabilities(p95, 0.5)
    assert probabilities.sum() == pytest.approx(1.0)
    # The buckets' shares are those of the distribution at every edge.
    edges = np.array(sim.PROMETHEUS_BUCKETS_MS)
    empirical = np.searchsorted(np.sort(draws), edges, side="right") / draws.size
    assert np.cumsum(probabilities)[:-1] == pytest.approx(empirical, abs=0.003)
    cand, base = sim.latency_arms(np.random.default_rng(1), 3, 10_000, p95, p95 + 25.0)
    assert cand.shape == (3, 4, 12)
    assert (cand[..., -1] + base[..., -1] == 10_000).all()
    assert (np.diff(cand, axis=-1) >= 0).all()


def test_segment_gaps_are_as_set() -> None:
    x_c, n_c, x_b, n_b = sim.segment_arms(np.random.default_rng(2), 4_000, 2_000, 0.007, -0.028)
    gap_c = x_c[:, 3, 0] / n_c[:, 3, 0] - x_c[:, 3, 1] / n_c[:, 3, 1]
    gap_b = x_b[:, 0, 0] / n_b[:, 0, 0] - x_b[:, 0, 1] / n_b[:, 0, 1]
    assert gap_c.mean() == pytest.approx(-0.028, abs=0.001)
    assert gap_b.mean() == pytest.approx(0.007, abs=0.001)


def _recording(observe: sim.Observe, stages: list[int]) -> sim.Observe:
    def recorded(t: int, s: int) -> sim.Kpis:
        stages.append(s)
        return observe(t, s)

    return recorded


def test_the_stage_advances_only_on_promote() -> None:
    setting = robust.Setting("early", "test", "-2pp", 1, effect=-0.02, early="no_harm")
    plan = robust._plan(setting)
    limit = sim.max_windows(plan.policy)
    assert limit == 4 * (6 + 6)
    for r in range(8):
        stages: list[int] = []
        traffic = robust._traffic(setting, limit, sim.calibration_windows(plan))
        observe, count, before = traffic(r)
        assert len(before) == plan.policy.calibration.windows == 24
        walk = sim.walk(plan, _recording(observe, stages), count, before)
        assert walk.end in {"rollback", "promoted", "suspended"}
        assert len(stages) == walk.windows
        assert all(b - a in (0, 1) for a, b in itertools.pairwise(stages))
        assert stages[-1] == min(walk.promotions, 3)
        if walk.end == "suspended":  # held max_holds past the soak of that stage
            assert stages.count(stages[-1]) == 6 + 6


def test_a_handful_of_rollouts_give_consistent_shares() -> None:
    setting = robust.Setting("fairness", "gap test", "reversed", 6, gap=-0.028)
    result = robust.run_setting(setting)
    shares = (result.rollback, result.promoted, result.suspended, result.past_25)
    assert all(0.0 <= v <= 1.0 for v in shares)
    assert result.promoted <= result.past_25 <= result.promoted_any
    assert result.rollback + result.promoted + result.suspended <= 1.0


def test_section_is_written_between_markers_and_keeps_the_rest(tmp_path: Path) -> None:
    doc = tmp_path / "statistics.md"
    doc.write_text(f"# intro\n\n{robust.STATISTICAL_MARKER}\n\nold table\n")
    sim.write_section(doc, robust.BEGIN, robust.END, "first", before=robust.STATISTICAL_MARKER)
    sim.write_section(doc, robust.BEGIN, robust.END, "second", before=robust.STATISTICAL_MARKER)
    text = doc.read_text()
    assert "first" not in text and text.count("second") == 1
    assert text.index("# intro") < text.index("second") < text.index(robust.STATISTICAL_MARKER)
    assert text.endswith("old table\n")


def test_bad_arguments_exit_2() -> None:
    for argv in (["--rollouts", "0"], ["--only", "nonsense"]):
        with pytest.raises(SystemExit) as raised:
            robust.main(argv)
        assert raised.value.code == 2


def test_engine_of_another_commit_is_the_one_imported(tmp_path: Path) -> None:
    """The power reference runs another commit's kpigate: a child that reports where its
    kpigate lives must report the archive, and an unknown commit is a clear error."""
    script = tmp_path / "where.py"
    script.write_text(
        "import json, pathlib, kpigate\n"
        "print(json.dumps({'engine': str(pathlib.Path(kpigate.__file__).resolve())}))\n"
    )
    data = engine_at.run_at_commit("HEAD", [str(script)])
    assert "kpigate-engine-" in data["engine"]
    assert not data["engine"].startswith(str(Path(engine_at.engine_path()).parents[1]))
    with pytest.raises(engine_at.NoSuchEngine):
        engine_at.run_at_commit("0" * 40, [str(script)])


def test_calibration_halves_carry_the_arms_noise_with_half_the_trials() -> None:
    """Each half of the baseline before the rollout moves by its own N(0, sd), as an arm does,
    with half the window's trials: the halves' difference has the variance of an A/A arm pair
    of that size, 2 sd^2 + the binomial part."""
    rng = np.random.default_rng(5)
    windows, total, sd = 20_000, 10_000, 0.02
    before = sim.binomial_calibration(rng, windows, total, sd)
    diffs = []
    for kpis in before:
        a, b = kpis["recall"].baseline, kpis["recall"].candidate
        assert isinstance(a, Rate) and isinstance(b, Rate)
        assert a.trials == b.trials == total / 2
        diffs.append(b.successes / b.trials - a.successes / a.trials)
    p = sim.BASE_RECALL
    binomial = p * (1 - p) * (2 / (total / 2))
    assert np.mean(diffs) == pytest.approx(0.0, abs=0.001)
    assert np.var(diffs) == pytest.approx(2 * sd * sd + binomial, rel=0.05)


def test_user_calibration_splits_by_another_hash_than_the_router() -> None:
    rng = np.random.default_rng(9)
    people = sim.users(rng, 5_000, 2_000, salt="bench")
    (window,) = sim.user_calibration(rng, people, 1)
    a, b = window["recall"].baseline, window["recall"].candidate
    assert isinstance(a, Rate) and isinstance(b, Rate)
    assert a.trials + b.trials == pytest.approx(2_000, rel=0.1)
    halves = sim.user_buckets(5_000, "calibration") < sim.BUCKETS // 2
    router = sim.user_buckets(5_000, "bench") < sim.BUCKETS // 2
    assert 0.45 < halves.mean() < 0.55
    # independent of the router's split: about half of each router half is in each calibration half
    assert 0.4 < (halves & router).sum() / router.sum() < 0.6

"""The forecast: its analytic crossings, its agreement with rollouts through the real judge,
and the warning for a stage that cannot decide."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kpigate.engine import Decision, Observation, Rate, RolloutState, Verdict, Window, compile_plan
from kpigate.engine import judge as judge_window
from kpigate.engine import sequential as seq
from kpigate.engine.forecast import (
    ForecastError,
    Traffic,
    certify_eta,
    forecast,
    info_to_catch,
    info_to_certify,
    look_quantile,
    spread_quantile,
)
from kpigate.engine.forecast_sim import kpi_models, window_info
from kpigate.engine.plan import Spread, SpreadArrays, pooled_tau2, pooled_tau2_arrays
from kpigate.policy import Calibration, Kpi, Labels, Method, Policy, Stage
from tests.engine_helpers import policy as make_policy

RECALL = Kpi(name="recall", margin=0.02, min_samples=100)


def _policy(**fields: object) -> Policy:
    fields.setdefault(
        "stages", tuple(Stage(traffic=t, soak=1800, interval=300) for t in (5, 25, 50, 100))
    )
    return make_policy(RECALL, **fields)


def _traffic(rps: float) -> Traffic:
    return Traffic(rps, {"recall": 0.02}, {"recall": 0.876})


def test_info_to_certify_is_where_the_lower_bound_meets_the_margin() -> None:
    hyp = compile_plan(_policy()).hypotheses[0]
    log_k = hyp.log_noninferiority_threshold
    for estimate in (0.0, 0.005, -0.005):
        info = info_to_certify(estimate, 0.02, 0.02, log_k)
        assert seq.lower_bound(estimate * info, info, 0.02, log_k) == pytest.approx(-0.02)
    # Worse than margin - theta / 2 below zero: the SPRT's bound never clears the margin.
    assert math.isinf(info_to_certify(-0.01, 0.02, 0.02, log_k))


def test_info_to_catch_is_where_the_harm_bound_meets_zero() -> None:
    rho, log_k = 1.0 / 0.04**2, math.log(20)
    for drop in (0.02, 0.05):
        info = info_to_catch(drop, 0.0, rho, log_k)
        assert seq.upper_bound(-drop * info, info, rho, log_k) == pytest.approx(0.0, abs=1e-9)
    assert info_to_catch(0.05, 0.0, rho, log_k) < info_to_catch(0.02, 0.0, rho, log_k)
    assert math.isinf(info_to_catch(0.01, 0.02, rho, log_k))  # not beyond the margin


def test_certify_eta_counts_the_samples_still_missing() -> None:
    log_k = math.log(20)
    needed = info_to_certify(0.0, 0.02, 0.02, log_k)
    eta = certify_eta(needed / 4, 0.0, 0.02, 0.02, log_k, 2.0, 0.5)
    assert eta.samples == pytest.approx(0.75 * needed / 2.0)
    assert eta.seconds == pytest.approx(eta.samples / 0.5)
    assert "more labeled samples" in eta.describe()
    assert certify_eta(2 * needed, 0.0, 0.02, 0.02, log_k, 2.0, 0.5).samples == 0
    never = certify_eta(needed, -0.03 * needed, 0.02, 0.02, log_k, 2.0, 0.5)
    assert math.isinf(never.samples) and "cannot be certified" in never.describe()
    fresh = certify_eta(0.0, 0.0, 0.02, 0.02, log_k, 2.0, 0.5)  # no evidence: as if identical
    assert fresh.samples == pytest.approx(needed / 2.0)
    unknown = certify_eta(0.0, 0.0, 0.02, 0.02, log_k, 0.0, 0.5)
    assert math.isnan(unknown.samples) and "no labeled samples yet" in unknown.describe()
    assert math.isinf(certify_eta(needed / 4, 0.0, 0.02, 0.02, log_k, 2.0, 0.0).seconds)


def test_spread_quantile_keeps_a_shared_look_time_and_says_when_out_of_reach() -> None:
    widths = np.full(10, 300.0)
    assert spread_quantile(np.full(10, 600.0), widths, 0.5) == pytest.approx(600.0)
    times = np.array([600.0] * 4 + [math.inf] * 6)
    assert math.isinf(spread_quantile(times, widths, 0.5))
    assert spread_quantile(times, widths, 0.3) < 600.0 + 150.0
    assert look_quantile(np.array([300.0] * 8 + [600.0, 900.0]), 0.9) == 600.0
    assert math.isinf(look_quantile(times, 0.9))


def test_window_info_is_the_engines_rate_variance() -> None:
    models, _ = kpi_models(_policy(), _traffic(100))
    # 100 rps x 300 s x 2% = 600 positives; 5% on the candidate.
    n_c, n_b = 30.0, 570.0
    p = (0.876 * n_b + 1) / (n_b + 2)  # the reference rate, smoothed as evidence.py does
    expected = 1.0 / (p * (1 - p) * (1 / n_c + 1 / n_b))
    assert window_info(models[0], 1500.0, 28500.0) == pytest.approx(expected)


def _judge_rollouts(
    policy: Policy, rps: float, drop: float, rollouts: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rollouts through the real judge, the stage advancing on PROMOTE: times from the start
    to the first PASS of recall and to a rollback (inf when it did not happen)."""
    plan = compile_plan(policy)
    rng = np.random.default_rng(seed)
    certified = np.full(rollouts, np.inf)
    rolled = np.full(rollouts, np.inf)
    for r in range(rollouts):
        state, s, now = RolloutState(), 0, 0.0
        # The policy's A/A calibration windows first, as the forecast assumes them: the
        # baseline's whole traffic of one first-stage interval, split in two halves.
        windows = policy.calibration.windows
        for i in range(windows):
            total = int(rng.poisson(rps * policy.stages[0].interval * 0.02))
            n_a, n_b = total // 2, total - total // 2
            halves = Observation(
                baseline=Rate(float(rng.binomial(n_b, 0.876)), float(n_b)),
                candidate=Rate(float(rng.binomial(n_a, 0.876)), float(n_a)),
            )
            aa = Window(i - windows, policy.stages[0].traffic, {"recall": halves}, calibration=True)
            state, _ = judge_window(plan, state, aa)
        for index in range(1, 60):
            stage = policy.stages[s]
            now += stage.interval
            share = policy.candidate_weight(stage) / 100
            mean = rps * stage.interval * 0.02
            n_c, n_b = rng.poisson(mean * share), rng.poisson(mean * (1 - share))
            obs = Observation(
                baseline=Rate(float(rng.binomial(n_b, 0.876)), float(n_b)),
                candidate=Rate(float(rng.binomial(n_c, 0.876 - drop)), float(n_c)),
            )
            state, decision = judge_window(
                plan, state, Window(index, stage.traffic, {"recall": obs})
            )
            if decision.kpis["recall"].verdict is Verdict.PASS:
                certified[r] = min(certified[r], now)
            if decision.decision is Decision.ROLLBACK:
                rolled[r] = now
            if decision.final or decision.suspend:
                break
            if decision.decision is Decision.PROMOTE:
                s += 1
    return certified, rolled


def test_spread_arrays_are_spread_entry_by_entry() -> None:
    """The forecast's vectorised spread sums give the engine's pooled tau^2 in every rollout,
    windows missing here and there (a label KPI's look without a matured cohort)."""
    rng = np.random.default_rng(3)
    paths, windows = 50, 12
    calibration, rollout = SpreadArrays.zeros((paths,)), SpreadArrays.zeros((paths,))
    scalar = [(Spread(), Spread()) for _ in range(paths)]
    for w in range(windows):
        variance = rng.uniform(0.5, 2.0, paths)
        difference = rng.normal(0.0, 1.5, paths)
        mask = rng.random(paths) < (1.0 if w < 4 else 0.7)
        group = calibration if w < 4 else rollout
        group.add(difference, variance, mask)
        for p in range(paths):
            if mask[p]:
                cal, roll = scalar[p]
                if w < 4:
                    cal = cal.add(float(difference[p]), float(variance[p]))
                else:
                    roll = roll.add(float(difference[p]), float(variance[p]))
                scalar[p] = (cal, roll)
        tau2 = pooled_tau2_arrays((calibration, rollout))
        expected = [pooled_tau2(pair) for pair in scalar]
        np.testing.assert_allclose(tau2, expected, rtol=1e-9, atol=1e-12)
    assert (tau2 > 0).any() and (tau2 == 0).any()  # both branches were exercised


def test_vectorised_boundaries_are_the_scalar_levels() -> None:
    (model,), _ = kpi_models(_policy(), _traffic(500))
    info = np.geomspace(10.0, 1e6, 40)
    for level, test in ((model.certify_level, model.certifies), (model.harm_level, model.harms)):
        at = np.array([level(float(i)) for i in info])
        above, below = at + 1e-6 * (1 + abs(at)), at - 1e-6 * (1 + abs(at))
        if test == model.certifies:
            assert test(above, info).all() and not test(below, info).any()
        else:
            assert test(below, info).all() and not test(above, info).any()
    assert not model.certifies(np.array([1e9]), np.array([0.0])).any()  # no information yet
    assert not model.harms(np.array([-1e9]), np.array([0.0])).any()


def test_calibration_windows_speed_up_certification() -> None:
    """With few windows behind it the engine's tau^2 estimate is often positive and inflated
    (1 + 2 / df): calibration windows steady it, and the forecast follows the engine there."""
    medians = []
    for windows in (0, 24, 200):
        policy = _policy(calibration=Calibration(windows=windows))
        result = forecast(policy, _traffic(500), paths=2000, seed=2)
        medians.append(result.stages[0].kpis[0].certify.median)
    assert medians[0] > medians[1] >= medians[2]


def test_forecast_agrees_with_rollouts_through_the_judge() -> None:
    """Direction and order of magnitude on 200 rollouts (bench/forecast.py checks +-25%)."""
    policy = _policy()
    medians = {}
    for rps in (500.0, 1000.0):
        result = forecast(policy, _traffic(rps), ("recall", 0.03), paths=2000, seed=1)
        certified, rolled = _judge_rollouts(policy, rps, 0.0, 200, seed=int(rps))
        _, caught = _judge_rollouts(policy, rps, 0.03, 200, seed=int(rps) + 1)
        first = result.stages[0]
        assert result.drop is not None
        forecast_cert = first.kpis[0].certify.median
        simulated_cert = float(np.median(certified))
        simulated_catch = float(np.median(caught))
        assert 0.5 < forecast_cert / simulated_cert < 2.0
        assert 0.5 < result.drop.rollback.median / simulated_catch < 2.0
        assert result.false_rollback < 0.05 and np.isfinite(rolled).mean() < 0.05
        medians[rps] = (forecast_cert, result.drop.rollback.median)
    # Twice the traffic: both certified and caught sooner, in the forecast as in the judge.
    assert medians[1000.0][0] < medians[500.0][0]
    assert medians[1000.0][1] < medians[500.0][1]


def test_a_stage_that_cannot_decide_is_named_in_a_warning() -> None:
    slow = forecast(_policy(), _traffic(50), paths=1000)
    assert slow.stages[0].timed_out > 0.9
    assert any(w.startswith("stage 5%: ") and "recall" in w for w in slow.warnings)
    assert all("stage 25%" not in w for w in slow.warnings)  # never reached
    fast = forecast(_policy(), _traffic(3000), paths=1000)
    assert fast.warnings == ()
    assert fast.promoted > 0.9


def test_label_horizon_delays_certification() -> None:
    """A 20-minute horizon judges each cohort four looks later: certification moves by about
    that much (the rest is sampling noise of the simulated medians)."""
    now = forecast(_policy(), _traffic(1000), paths=4000)
    later = forecast(_policy(labels=Labels(horizon=1200)), _traffic(1000), paths=4000)
    delay = later.stages[0].kpis[0].certify.median - now.stages[0].kpis[0].certify.median
    assert 900 < delay < 1500
    assert later.stages[0].timed_out > now.stages[0].timed_out


def test_no_harm_stage_promotes_on_burn_in_without_certifying() -> None:
    stages = tuple(
        Stage(
            traffic=t, soak=1800, interval=300, promote_when="no_harm" if t < 50 else "noninferior"
        )
        for t in (5, 25, 50, 100)
    )
    result = forecast(_policy(stages=stages), _traffic(150), paths=1000)
    first = result.stages[0]
    assert first.promote.median == pytest.approx(1800, abs=60)  # at the end of the soak
    assert first.kpis[0].certified < 0.1


def test_bad_traffic_and_policies_raise_a_clear_error() -> None:
    with pytest.raises(ForecastError, match="sigma"):
        forecast(_policy(method=Method.SIGMA), _traffic(100))
    with pytest.raises(ForecastError, match="positive"):
        forecast(_policy(), _traffic(0))
    with pytest.raises(ForecastError, match="not a forecast KPI"):
        forecast(_policy(), _traffic(100), ("precision", 0.02))
    with pytest.raises(ForecastError, match="positive number"):
        forecast(_policy(), _traffic(100), ("recall", -0.02))
    with pytest.raises(ForecastError, match=r"\[0, 1\]"):
        forecast(_policy(), Traffic(100, {}, {"recall": 1.5}))


def test_unforecastable_kpis_are_noted_not_dropped_silently() -> None:
    latency = Kpi(
        name="latency_p95",
        type="quantile",
        quantile=0.95,
        direction="lower",
        margin=10,
        action="hold",
    )
    models, notes = kpi_models(make_policy(RECALL, latency), _traffic(100))
    assert [m.key for m in models] == ["recall"]
    assert any("latency_p95" in n and "quantile" in n for n in notes)
    result = forecast(make_policy(RECALL), Traffic(100))
    assert any(
        "recall: assumed every request a trial, baseline value 0.5" in n for n in result.notes
    )

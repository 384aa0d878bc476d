"""A KPI that holds says how many more samples it needs and about how long: the number is
certify_eta's on the gate's own sums, and it is right when the estimate does hold."""

from __future__ import annotations

import itertools
import math

from kpigate.engine import GatePlan, KpiReport, RolloutState, Verdict, compile_plan, judge
from kpigate.engine.forecast_eta import certify_eta
from kpigate.policy import Kpi, Stage
from tests.engine_helpers import policy, rate_window

INTERVAL = 300.0
PER_WINDOW = (400.0, 500.0)  # candidate successes, trials: the same rate as the baseline
BASELINE = (7600.0, 9500.0)


def _plan() -> GatePlan:
    stages = tuple(Stage(traffic=t, soak=600, interval=INTERVAL) for t in (5, 25, 50, 100))
    kpi = Kpi(name="recall", margin=0.02, min_samples=100)
    return compile_plan(policy(kpi, stages=stages, max_holds=1000))


def _reports(looks: int) -> tuple[list[KpiReport], RolloutState]:
    plan, state = _plan(), RolloutState()
    reports = []
    for index in range(1, looks + 1):
        state, decision = judge(plan, state, rate_window(index, 5.0, PER_WINDOW, BASELINE))
        reports.append(decision.kpis["recall"])
    return reports, state


def test_a_hold_reason_gives_the_samples_and_time_certify_eta_computes() -> None:
    reports, state = _reports(2)
    report = reports[-1]
    assert report.verdict is Verdict.INCONCLUSIVE
    plan = _plan()
    (hyp,) = plan.hypotheses
    kpi_state = state.kpis["recall"]
    margin, theta = 0.02, 0.02  # an absolute margin is its own theta
    expected = certify_eta(
        kpi_state.info,
        kpi_state.weighted,
        margin,
        theta,
        hyp.log_noninferiority_threshold,
        kpi_state.info / (2 * PER_WINDOW[1]),  # information per candidate sample so far
        PER_WINDOW[1] / INTERVAL,  # candidate samples per second in the latest window
    )
    assert report.needs_samples is not None and report.eta_seconds is not None
    assert math.isclose(report.needs_samples, expected.samples, rel_tol=1e-12)
    assert math.isclose(report.eta_seconds, expected.seconds, rel_tol=1e-12)
    assert math.isclose(report.eta_seconds, report.needs_samples / (500 / 300), rel_tol=1e-12)
    assert f"needs ~{math.ceil(expected.samples):,} more labeled candidate samples" in report.reason
    out = report.as_dict()
    assert out["needs_samples"] == math.ceil(expected.samples)
    assert out["eta_seconds"] == round(expected.seconds)


def test_the_forecast_samples_are_what_certification_takes_when_the_estimate_holds() -> None:
    # Identical arms in every window: the estimate stays at 0 and the prediction is exact.
    reports, _ = _reports(2)
    needed_windows = math.ceil(reports[-1].needs_samples / PER_WINDOW[1])  # type: ignore[operator]
    assert needed_windows >= 2  # the test would prove nothing if one more look settled it
    later, _ = _reports(2 + needed_windows)
    assert later[-2].verdict is Verdict.INCONCLUSIVE
    assert later[-1].verdict is Verdict.PASS
    # As the look approaches, fewer samples are missing, and they take less time.
    missing = [r.needs_samples for r in later[1:-1]]
    assert all(a > b for a, b in itertools.pairwise(missing))  # type: ignore[operator]


def test_a_candidate_too_far_below_the_margin_is_never_certified() -> None:
    # 1.6pp worse with a 2pp margin: not harm yet, but never certifiable at that estimate
    # (the bound approaches estimate - theta/2 = -2.6pp).
    plan, state = _plan(), RolloutState()
    for index in (1, 2):
        state, decision = judge(plan, state, rate_window(index, 5.0, (392.0, 500.0), BASELINE))
    report = decision.kpis["recall"]
    assert report.verdict is Verdict.INCONCLUSIVE, report.reason
    assert report.needs_samples == math.inf and report.eta_seconds is None
    assert "cannot be certified while the estimate stays where it is" in report.reason
    assert report.as_dict()["needs_samples"] is None


def test_a_zero_margin_bound_never_prints_minus_zero() -> None:
    stages = tuple(Stage(traffic=t, soak=600, interval=INTERVAL) for t in (5, 25, 50, 100))
    kpi = Kpi(name="recall", margin=0.0, detect=0.02, min_samples=100)
    plan, state = compile_plan(policy(kpi, stages=stages)), RolloutState()
    state, decision = judge(plan, state, rate_window(1, 5.0, (250.0, 500.0), BASELINE))
    reason = decision.kpis["recall"].reason
    assert "-0" not in reason.replace("-0.", ""), reason

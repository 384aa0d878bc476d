"""The gate's decisions: what promotes, holds and rolls back, and how each explains itself."""

from __future__ import annotations

import numpy as np
import pytest

from kpigate.engine import (
    Decision,
    GateDecision,
    Histogram,
    Observation,
    Rate,
    RolloutState,
    Verdict,
    Window,
    compile_plan,
    judge,
)
from kpigate.policy import Action, Direction, Kpi, KpiType, Method, Scope, SigmaRule
from tests.engine_helpers import policy, rate_window, simulate_rates


def run(plan_policy, windows) -> list[GateDecision]:  # type: ignore[no-untyped-def]
    plan = compile_plan(plan_policy)
    state = RolloutState()
    out = []
    for window in windows:
        state, decision = judge(plan, state, window)
        out.append(decision)
    return out


def test_no_data_never_promotes_or_rolls_back_it_holds() -> None:
    windows = [
        Window(1, 5, {}),
        rate_window(2, 5, None, (900, 1000)),
        rate_window(3, 5, (0, 0), (0, 0)),
        rate_window(4, 5, (50, 100), None),
    ] + [Window(i, 5, {}) for i in range(5, 30)]
    decisions = run(policy(max_holds=100), windows)
    assert {d.decision for d in decisions} == {Decision.HOLD}
    reasons = " ".join(d.kpis["recall"].reason for d in decisions)
    assert "no candidate data in this window" in reasons
    assert "no baseline data in this window" in reasons
    assert "not comparable: an arm has no trials" in reasons


def test_stale_evidence_holds_even_when_the_data_say_harm() -> None:
    harmful = rate_window(1, 5, (300, 1000), (9000, 10000))
    stale = Window(1, 5, harmful.kpis, stale=True, note="scrape lag 20m > 15m")
    (decision,) = run(policy(), [stale])
    assert decision.decision is Decision.HOLD
    assert decision.reasons == ("stale evidence: scrape lag 20m > 15m",)
    assert decision.kpis["recall"].verdict is Verdict.INCONCLUSIVE


def test_missing_evidence_after_max_holds_takes_the_timeout_action() -> None:
    windows = [Window(i, 5, {}) for i in range(1, 10)]
    suspended = run(policy(max_holds=2, on_max_holds="suspend"), windows)
    assert [d.suspend for d in suspended[5:]] == [False, False, True, True]
    assert all(d.decision is Decision.HOLD for d in suspended)
    rolled = run(policy(max_holds=2, on_max_holds="rollback"), windows)
    assert [d.decision for d in rolled[5:8]] == [Decision.HOLD] * 2 + [Decision.ROLLBACK]
    assert "max_holds" in rolled[7].reasons[-1]


def test_burn_in_holds_with_the_count() -> None:
    (decision,) = run(
        policy(Kpi(name="recall", min_samples=300)), [rate_window(1, 5, (5, 50), (900, 1000))]
    )
    report = decision.kpis["recall"]
    assert report.verdict is Verdict.INCONCLUSIVE
    assert report.reason == "burn-in: 50 of 300 candidate samples"


def test_clear_harm_rolls_back_fast_and_explains_itself() -> None:
    rng = np.random.default_rng(3)
    windows = simulate_rates(rng, 24, positives=500, p_base=0.876, effect=-0.05)
    decisions = run(policy(), windows)
    first = next(d for d in decisions if d.decision is Decision.ROLLBACK)
    assert first.window <= 3
    assert first.final
    report = first.kpis["recall"].as_dict()
    assert report["verdict"] == "fail" and report["action"] == "rollback"
    lo, hi = report["ci"]
    assert lo < report["estimate"] < hi < 0
    assert report["margin"] == 0.01
    assert report["evidence"]["e_harm"] >= report["evidence"]["harm_threshold"] == 20
    # After the end the decision repeats; nothing more is judged.
    after = decisions[first.window]
    assert after.decision is Decision.ROLLBACK and "already ended" in after.reasons[0]


def test_identical_candidate_soaks_then_promotes_through_all_stages() -> None:
    rng = np.random.default_rng(4)
    windows = simulate_rates(rng, 24, positives=5000, p_base=0.876, effect=0.0)
    decisions = run(policy(), windows)
    assert [d.decision for d in decisions[:5]] == [Decision.HOLD] * 5
    assert decisions[0].reasons == ("soaking: look 1 of 6 at 5%",)
    assert [decisions[i].decision for i in (5, 11, 17, 23)] == [Decision.PROMOTE] * 4
    assert decisions[23].final and not decisions[17].final


def test_lower_is_better_kpi_rolls_back_when_the_candidate_errs_more() -> None:
    kpi = Kpi(name="error_rate", direction=Direction.LOWER, margin=0.005)
    windows = [rate_window(i, 5, (40, 2000), (380, 38000), "error_rate") for i in range(1, 4)]
    decisions = run(policy(kpi), windows)
    assert decisions[-1].decision is Decision.ROLLBACK
    assert decisions[-1].kpis["error_rate"].estimate == pytest.approx(0.02 - 0.01)


def test_fail_beyond_margin_tolerates_harm_inside_the_margin() -> None:
    windows = [rate_window(i, 50, (8650, 10000), (8760, 10000)) for i in range(1, 13)]
    strict = run(policy(), windows)
    lenient = run(policy(Kpi(name="recall", margin=0.03, fail_beyond_margin=True)), windows)
    assert any(d.decision is Decision.ROLLBACK for d in strict)
    assert not any(d.decision is Decision.ROLLBACK for d in lenient)


def latency(bounds: tuple[float, ...], counts: tuple[float, ...]) -> Histogram:
    cumulative = tuple(float(c) for c in np.cumsum(counts))
    return Histogram(bounds, cumulative)


def test_a_latency_spike_holds_while_it_lasts_then_the_rollout_continues() -> None:
    bounds = (50.0, 75.0, 100.0, 150.0, 200.0, float("inf"))
    normal = (6000.0, 2500.0, 1000.0, 400.0, 90.0, 10.0)
    spike = (1000.0, 2000.0, 3000.0, 2500.0, 1300.0, 200.0)
    kpi = Kpi(
        name="latency_p95",
        type=KpiType.QUANTILE,
        quantile=0.95,
        direction=Direction.LOWER,
        margin=10,
        action=Action.HOLD,
        scope=Scope.WINDOW,
    )

    def window(i: int, candidate: tuple[float, ...]) -> Window:
        obs = Observation(baseline=latency(bounds, normal), candidate=latency(bounds, candidate))
        return Window(i, 5, {"latency_p95": obs})

    windows = [window(i, spike if i in (7, 8) else normal) for i in range(1, 11)]
    decisions = run(policy(kpi), windows)
    assert decisions[5].decision is Decision.PROMOTE
    stage2 = run(policy(kpi), windows[:6] + [Window(w.index, 25, w.kpis) for w in windows[6:]])
    assert [d.decision for d in stage2[6:8]] == [Decision.HOLD, Decision.HOLD]
    assert "latency_p95: candidate worse" in stage2[6].reasons[0]
    assert stage2[6].kpis["latency_p95"].triggers == "hold"
    assert [d.decision for d in stage2[8:10]] == [Decision.HOLD, Decision.HOLD]  # soaking again
    assert stage2[8].kpis["latency_p95"].verdict is Verdict.PASS


def test_alerts_are_reported_without_changing_the_decision() -> None:
    kpis = (Kpi(name="recall"), Kpi(name="approval", action=Action.ALERT))
    obs = {
        "recall": Observation(Rate(8760, 10000), Rate(8760, 10000)),
        "approval": Observation(Rate(9900, 10000), Rate(9000, 10000)),
    }
    decisions = run(policy(*kpis), [Window(i, 50, obs) for i in range(1, 7)])
    assert decisions[-1].decision is Decision.PROMOTE
    assert decisions[-1].alerts and decisions[-1].alerts[0].startswith("approval: candidate worse")


def test_no_harm_stage_gate_promotes_on_safety_but_not_on_missing_data() -> None:
    p = policy(
        stages=(
            {"traffic": 5, "soak": 60, "interval": 10, "promote_when": "no_harm"},
            {"traffic": 100},
        )
    )
    judged = [rate_window(i, 5, (44, 50), (880, 1000)) for i in range(1, 7)]
    decisions = run(p, judged)
    assert decisions[-1].decision is Decision.PROMOTE
    assert (
        decisions[-1].kpis["recall"].verdict is Verdict.INCONCLUSIVE
    )  # not certified, not harmful
    missing = [*judged[:5], Window(6, 5, {})]
    assert run(p, missing)[-1].decision is Decision.HOLD


def test_holdback_zero_compares_the_last_stage_with_the_baselines_history() -> None:
    before = [rate_window(i, 50, (4380, 5000), (4380, 5000)) for i in range(1, 7)]
    last = [rate_window(i, 100, (8000, 10000), None) for i in range(7, 10)]
    without = run(policy(holdback=0), before + last)
    assert without[-1].decision is Decision.ROLLBACK  # 0.80 against a recorded 0.876
    with_holdback = run(policy(holdback=5), before + last)
    assert with_holdback[-1].decision is Decision.HOLD
    assert with_holdback[-1].kpis["recall"].reason == "no baseline data in this window"


def test_segments_are_separate_hypotheses_sharing_the_budget() -> None:
    kpi = Kpi(name="recall", segments=("eu", "na"))
    plan = compile_plan(policy(kpi))
    assert [h.key for h in plan.hypotheses] == ["recall{eu}", "recall{na}"]
    assert {round(np.exp(h.log_harm_threshold)) for h in plan.hypotheses} == {40}  # 2 / 0.05
    obs = {
        "recall{eu}": Observation(Rate(8760, 10000), Rate(7800, 10000)),
        "recall{na}": Observation(Rate(8760, 10000), Rate(8760, 10000)),
    }
    (decision,) = run(policy(kpi), [Window(1, 50, obs)])
    assert decision.decision is Decision.ROLLBACK
    assert decision.reasons[0].startswith("recall{eu}:")


def test_sigma_rule_uses_control_limits_and_rolls_back_identical_candidates_at_low_traffic() -> (
    None
):
    kpi = Kpi(name="recall", baseline_mean=0.876, baseline_sd=0.008)
    p = policy(kpi, method=Method.SIGMA, sigma=SigmaRule(k=2))
    rng = np.random.default_rng(5)
    rolled = 0
    for _ in range(200):
        decisions = run(p, simulate_rates(rng, 24, positives=50, p_base=0.876, effect=0.0))
        rolled += any(d.decision is Decision.ROLLBACK for d in decisions)
    assert rolled / 200 > 0.9  # the paper's rule: identical candidates are rolled back
    control = decisions[-1].kpis["recall"].control
    assert control is not None
    assert (control.lcl, control.ucl) == pytest.approx((0.860, 0.892))


def test_sigma_without_given_mu_uses_the_first_baseline_windows() -> None:
    windows = [rate_window(i, 5, (870, 1000), (8700 + 10 * i, 10000)) for i in range(1, 5)]
    decisions = run(policy(method=Method.SIGMA), windows)
    assert decisions[1].kpis["recall"].reason.startswith("building control limits")
    control = decisions[2].kpis["recall"].control
    assert control is not None and control.center == pytest.approx(0.872)


def test_judge_is_pure() -> None:
    plan = compile_plan(policy())
    state = RolloutState()
    window = rate_window(1, 5, (440, 500), (8700, 10000))
    first = judge(plan, state, window)
    second = judge(plan, state, window)
    assert first == second
    assert state == RolloutState()

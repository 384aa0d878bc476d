"""The gate with delayed labels: label KPIs read matured cohorts, each once; a stage is promoted
only on a cohort of its own; immediate KPIs stay per serving window; decisions carry a cause."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kpigate.engine import (
    Cause,
    Cohort,
    Decision,
    Observation,
    Pending,
    Rate,
    RolloutState,
    UnknownStage,
    Window,
    compile_plan,
    judge,
)
from kpigate.policy import Kpi, Labels, Policy, Stage
from tests.engine_helpers import policy


def _labels_policy() -> Policy:
    return policy(
        Kpi(name="recall", min_samples=50),
        Kpi(name="error_rate", direction="lower", margin=0.01, min_samples=50),
        stages=(Stage(traffic=5, soak=20, interval=10), Stage(traffic=100, soak=20, interval=10)),
        labels=Labels(horizon=15),
        max_holds=6,
    )


def _window(
    index: int, stage: float, cohort: Cohort | None, pending: Pending | None = None
) -> Window:
    errors = Observation(baseline=Rate(10, 10_000), candidate=Rate(1, 1000))
    kpis = {"error_rate": errors}
    if cohort is not None:
        kpis["recall"] = Observation(baseline=Rate(87_000, 100_000), candidate=Rate(8_800, 10_000))
    return Window(index, stage, kpis, cohort=cohort, pending=pending)


def test_label_kpis_wait_for_their_cohort_and_the_reason_says_when_it_matures() -> None:
    plan = compile_plan(_labels_policy())
    state, first = judge(plan, RolloutState(), _window(1, 5, None, Pending(1, 1764590400.0)))
    assert first.kpis["recall"].cause is Cause.WAITING_FOR_LABELS
    assert "matures at 2025-12-01 12:00:00 UTC" in first.kpis["recall"].reason
    # The immediate KPI is judged on this window's own traffic meanwhile.
    assert first.kpis["error_rate"].samples == (1000.0, 10_000.0)
    state, second = judge(plan, state, _window(2, 5, None, Pending(1, 1764590400.0)))
    assert second.decision is Decision.HOLD
    assert second.cause is Cause.WAITING_FOR_LABELS
    assert state.kpis.get("recall") is None  # nothing was added for the label KPI


def test_a_stage_is_promoted_only_on_a_cohort_served_at_that_stage() -> None:
    plan = compile_plan(_labels_policy())
    state = RolloutState()
    decisions = []
    cohorts = {3: Cohort(1, 5, 100.0), 4: Cohort(2, 5, 110.0), 5: Cohort(3, 5, 120.0)}
    for index in range(1, 6):
        state, decision = judge(plan, state, _window(index, 5, cohorts.get(index)))
        decisions.append(decision)
    promoted = [d for d in decisions if d.decision is Decision.PROMOTE]
    assert promoted, [d.reasons for d in decisions]
    # At 100%, the cohorts still maturing were served at 5%: they add evidence but do not
    # promote the last stage.
    later = {6: Cohort(4, 5, 130.0), 7: Cohort(5, 5, 140.0), 8: Cohort(6, 5, 150.0)}
    for index in range(6, 9):
        state, decision = judge(plan, state, _window(index, 100, later.get(index)))
        assert decision.decision is Decision.HOLD
    assert decision.cause is Cause.WAITING_FOR_LABELS
    assert "no cohort served at 100% has matured yet" in decision.reasons[0]
    state, decision = judge(plan, state, _window(9, 100, Cohort(7, 100, 160.0)))
    assert decision.decision is Decision.PROMOTE and decision.final
    assert decision.cause is Cause.CERTIFIED


def test_a_cohort_is_judged_once() -> None:
    plan = compile_plan(_labels_policy())
    state, _ = judge(plan, RolloutState(), _window(1, 5, Cohort(1, 5, 100.0)))
    info = state.kpis["recall"].info
    state, again = judge(plan, state, _window(2, 5, Cohort(1, 5, 100.0)))
    assert state.kpis["recall"].info == info
    assert "a cohort is judged once" in again.kpis["recall"].reason


def test_without_a_labels_section_label_kpis_are_read_per_window() -> None:
    plan = compile_plan(_labels_policy().model_copy(update={"labels": None}))
    _, decision = judge(plan, RolloutState(), _window(1, 5, Cohort(1, 5, 100.0)))
    assert decision.kpis["recall"].samples == (10_000.0, 100_000.0)


def test_a_window_at_a_stage_the_policy_lacks_is_an_error() -> None:
    plan = compile_plan(_labels_policy())
    with pytest.raises(UnknownStage, match="stage 30%"):
        judge(plan, RolloutState(), _window(1, 30, None))


def test_a_timeout_is_told_apart_from_harm() -> None:
    plan = compile_plan(
        policy(
            Kpi(name="recall", min_samples=10_000),
            stages=(Stage(traffic=5, soak=10, interval=10), Stage(traffic=100)),
            max_holds=1,
            on_max_holds="rollback",
        )
    )
    window = Window(1, 5, {"recall": Observation(Rate(80, 100), Rate(800, 1000))})
    state, first = judge(plan, RolloutState(), window)
    assert (first.decision, first.cause) == (Decision.HOLD, Cause.BURN_IN)
    state, second = judge(plan, state, replace(window, index=2))
    assert (second.decision, second.cause) == (Decision.ROLLBACK, Cause.TIMEOUT)
    assert second.as_dict()["cause"] == "timeout"
    harmful = Window(1, 5, {"recall": Observation(Rate(9000, 10_000), Rate(500, 1000))})
    plan = compile_plan(policy(Kpi(name="recall", min_samples=10)))
    _, rolled = judge(plan, RolloutState(), harmful)
    assert (rolled.decision, rolled.cause) == (Decision.ROLLBACK, Cause.HARM)
    assert rolled.kpis["recall"].cause is Cause.HARM

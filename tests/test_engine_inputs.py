"""Inputs that used to crash the gate or read wrong get a defined verdict with its reason."""

from __future__ import annotations

from kpigate.engine import (
    Cause,
    Observation,
    Rate,
    RolloutState,
    Verdict,
    Window,
    compile_plan,
    judge,
)
from kpigate.policy import Kpi
from tests.engine_helpers import policy


def test_a_relative_margin_of_a_zero_baseline_is_inconclusive_not_a_crash() -> None:
    kpi = Kpi(
        name="chargeback_rate",
        direction="lower",
        margin=0.25,
        margin_type="relative",
        fail_beyond_margin=True,
        min_samples=1,
    )
    window = Window(1, 5, {"chargeback_rate": Observation(Rate(0, 1000), Rate(0, 100))})
    _, decision = judge(compile_plan(policy(kpi)), RolloutState(), window)
    report = decision.kpis["chargeback_rate"]
    assert report.verdict is Verdict.INCONCLUSIVE and report.cause is Cause.NO_DATA
    assert "give `detect` or an absolute margin" in report.reason


def test_absurd_counts_are_refused_as_not_comparable() -> None:
    window = Window(1, 5, {"recall": Observation(Rate(1e307, 1e308), Rate(1e307, 1e308))})
    state, decision = judge(compile_plan(policy(Kpi(name="recall"))), RolloutState(), window)
    assert decision.kpis["recall"].verdict is Verdict.INCONCLUSIVE
    assert "out of range" in decision.kpis["recall"].reason
    assert state.kpis["recall"].info == 0.0


def test_window_scope_p_harm_is_small_when_the_candidate_is_clearly_worse() -> None:
    kpi = Kpi(name="recall", action="hold", scope="window", min_samples=10)
    window = Window(1, 5, {"recall": Observation(Rate(9000, 10_000), Rate(500, 1000))})
    _, decision = judge(compile_plan(policy(kpi)), RolloutState(), window)
    report = decision.kpis["recall"]
    assert report.verdict is Verdict.FAIL
    assert report.evidence["p_harm"] < 1e-6
    assert report.evidence["p_noninferior"] > 0.5

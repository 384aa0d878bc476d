"""The decision engine: pure functions from policy and KPI evidence to PROMOTE, HOLD or ROLLBACK."""

from kpigate.engine.evidence import (
    ArmData,
    Cohort,
    Histogram,
    Observation,
    Pending,
    Rate,
    ScoreHistograms,
    SegmentRates,
    Window,
)
from kpigate.engine.gate import (
    Decision,
    GateDecision,
    GatePlan,
    KpiReport,
    RolloutState,
    Verdict,
    compile_plan,
    judge,
)

__all__ = [
    "ArmData",
    "Cohort",
    "Decision",
    "GateDecision",
    "GatePlan",
    "Histogram",
    "KpiReport",
    "Observation",
    "Pending",
    "Rate",
    "RolloutState",
    "ScoreHistograms",
    "SegmentRates",
    "Verdict",
    "Window",
    "compile_plan",
    "judge",
]

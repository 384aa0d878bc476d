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
    Cause,
    Decision,
    GateDecision,
    GatePlan,
    KpiReport,
    RolloutState,
    UnknownStage,
    Verdict,
    compile_plan,
    judge,
)

__all__ = [
    "ArmData",
    "Cause",
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
    "UnknownStage",
    "Verdict",
    "Window",
    "compile_plan",
    "judge",
]

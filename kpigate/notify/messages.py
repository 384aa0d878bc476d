"""Turn a gate decision into notifications: what happened, how loud, with the evidence.

Messages are worded from the KPI names, not their numbers, so a hold that repeats window
after window reads the same and the dispatcher's dedup can fold it; numbers go in fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kpigate.audit import is_routine_soak
from kpigate.engine import Cause, Decision, GateDecision, KpiReport, Verdict
from kpigate.notify.base import KIND_FIELD, ROLLOUT_FIELD, Notifier, Severity

_MAX_KPI_FIELDS = 4


@dataclass(frozen=True)
class Notification:
    severity: Severity
    message: str
    fields: Mapping[str, str]


def _kpi_field(report: KpiReport) -> str:
    parts = [report.verdict.value]
    if report.estimate is not None:
        parts.append(f"estimate {report.estimate:+.4g}")
    if report.ci is not None:
        parts.append(f"CI [{report.ci[0]:+.4g}, {report.ci[1]:+.4g}]")
    if report.margin is not None:
        parts.append(f"margin {report.margin:.4g}")
    return ", ".join(parts)


def decision_notifications(
    rollout_id: str, decision: GateDecision, model_name: str, candidate_version: str
) -> list[Notification]:
    """Rollback: critical. Hold for a KPI, stale data or suspension: warning. Promotion: info.
    Alert KPIs failing: warning each. A hold that is only the soak running: nothing."""
    subject = f"{model_name} v{candidate_version}"
    stage = f"{decision.stage:g}%"
    base = {
        ROLLOUT_FIELD: rollout_id,
        "model": model_name,
        "candidate": candidate_version,
        "stage": stage,
        "window": str(decision.window),
        "decision": decision.decision.value,
    }
    failing = {k: r for k, r in decision.kpis.items() if r.verdict is Verdict.FAIL}
    out: list[Notification] = []

    def add(severity: Severity, kind: str, message: str, kpis: Mapping[str, KpiReport]) -> None:
        fields = {**base, KIND_FIELD: kind, "reasons": "; ".join(decision.reasons)}
        for key, report in list(kpis.items())[:_MAX_KPI_FIELDS]:
            fields[key] = _kpi_field(report)
        out.append(Notification(severity, message, fields))

    if decision.decision is Decision.ROLLBACK:
        culprits = {k: r for k, r in failing.items() if r.triggers == "rollback"}
        why = (
            f"harm on {', '.join(culprits)} (worse than the baseline)"
            if decision.cause is Cause.HARM
            else "no decision within max_holds (not evidence of harm)"
        )
        add(Severity.CRITICAL, "rollback", f"{subject} rolled back at {stage}: {why}", culprits)
    elif decision.decision is Decision.PROMOTE:
        what = (
            "promoted to 100%, rollout complete" if decision.final else f"passed the {stage} stage"
        )
        add(Severity.INFO, "promote", f"{subject} {what}", {})
    elif decision.suspend:
        add(
            Severity.WARNING,
            "suspend",
            f"{subject} suspended at {stage}: an operator must resume or roll back",
            failing,
        )
    elif not is_routine_soak({"decision": "hold", "cause": decision.cause.value}):
        holding = {k: r for k, r in failing.items() if r.triggers == "hold"}
        if holding:
            why = f"{', '.join(holding)} failing"
        else:
            why = _HOLD_WHY.get(decision.cause, "waiting for evidence")
        add(Severity.WARNING, "hold", f"{subject} held at {stage}: {why}", holding)
    for key, report in failing.items():
        if report.triggers == "alert":
            add(Severity.WARNING, "alert", f"{subject} alert at {stage}: {key}", {key: report})
    return out


_HOLD_WHY = {
    Cause.STALE: "evidence is stale",
    Cause.NO_DATA: "an arm sent no comparable data",
    Cause.BURN_IN: "KPIs still in burn-in",
    Cause.WAITING_FOR_LABELS: "waiting for labels to mature",
}


def notify_decision(
    notifier: Notifier,
    rollout_id: str,
    decision: GateDecision,
    model_name: str,
    candidate_version: str,
) -> list[Notification]:
    """Post every notification of one decision; returns them (empty for a routine soak)."""
    notes = decision_notifications(rollout_id, decision, model_name, candidate_version)
    for note in notes:
        notifier.post(note.severity, note.message, note.fields)
    return notes

"""Why a rollout ended or waits, in one word: harm, timeout, operator, promoted, or holding.

A rollback for harm (a KPI shown worse than the baseline) and a rollback because the evidence
never sufficed (max_holds ran out) call for different actions: fix the model, or give the gate
more traffic or time. The engine carries the cause on each decision (kpigate.engine.Cause);
`cause_of` maps it to these words, and reads the reasons only for records written before
decisions had a cause (old audit trails).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

HARM, TIMEOUT, OPERATOR, PROMOTED, HOLDING = "harm", "timeout", "operator", "promoted", "holding"

LABELS = {
    HARM: "rolled back for harm",
    TIMEOUT: "rolled back for lack of evidence (max_holds ran out)",
    OPERATOR: "rolled back by an operator",
    PROMOTED: "promoted",
    HOLDING: "holding",
}


def cause_of(decision: str, reasons: Sequence[str], cause: str | None = None) -> str:
    """The cause of a decision given as its value ("rollback"), reasons and engine cause."""
    if decision == "promote":
        return PROMOTED
    if decision != "rollback":
        return HOLDING
    if cause in (HARM, TIMEOUT, OPERATOR):
        return cause
    text = " ".join(reasons)
    if text.startswith("aborted by") or "operator declined" in text:
        return OPERATOR
    # The engine turns a HOLD into a timeout rollback only when no KPI triggered a rollback;
    # the reasons then are what held (a KPI on hold may be "worse"), plus the timeout.
    if "(max_holds)" in text:
        return TIMEOUT
    return HARM


def record_cause(record: Mapping[str, Any]) -> str:
    """The cause of an audit-trail decision record."""
    return cause_of(
        str(record.get("decision", "")), list(record.get("reasons") or []), record.get("cause")
    )

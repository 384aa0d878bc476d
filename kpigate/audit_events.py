"""The records a rollout writes to its audit trail: decisions with their evidence and rules,
actions done to the world, and notifications sent."""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from typing import Any

from kpigate.audit_chain import evidence_digest
from kpigate.engine import Cause, GateDecision
from kpigate.engine.evidence import NotComparable, value_of
from kpigate.policy import Policy


def default_actor(env: Mapping[str, str] | None = None) -> str:
    """KPIGATE_ACTOR (e.g. `argo:<workflow>`), else `kpigate-runner@<host>` with the user."""
    env = os.environ if env is None else env
    if env.get("KPIGATE_ACTOR"):
        return env["KPIGATE_ACTOR"]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        user = "uid" + str(os.getuid())
    return f"kpigate-runner:{user}@{socket.gethostname()}"


def is_routine_soak(record: Mapping[str, Any]) -> bool:
    """A HOLD only because the stage is still soaking: expected, not worth an alert."""
    return (
        record.get("decision") == "hold"
        and not record.get("suspend")
        and record.get("cause") == Cause.SOAKING.value
    )


def _kpi_rules(policy: Policy) -> dict[str, dict[str, Any]]:
    rules = {}
    for kpi in policy.kpis:
        rule = {
            "direction": kpi.direction.value,
            "margin": kpi.margin,
            "margin_type": kpi.margin_type,
            "action": kpi.action.value,
            "scope": kpi.scope.value,
            "gating": kpi.is_gating,
            "fail_beyond_margin": kpi.fail_beyond_margin,
            "min_samples": kpi.min_samples,
        }
        for key in kpi.hypotheses():
            rules[key] = rule
            if kpi.type.value == "gap" and not kpi.signed:
                rules[f"{key}[reversed]"] = rule  # the magnitude's second contrast
    return rules


def _window_values(policy: Policy, window: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per KPI, each arm's value in this window alone (the figures plot them)."""
    from kpigate.engine import compile_plan
    from kpigate.evidence_record import RecordError, record_of
    from kpigate.replay import LineError, to_window

    try:
        parsed = to_window(record_of(window), compile_plan(policy))
    except (LineError, RecordError):
        return {}
    readings = {key: kpi for kpi in policy.kpis for key in kpi.hypotheses()}
    values: dict[str, dict[str, float]] = {}
    for key, obs in parsed.kpis.items():
        for arm_name, arm in (("candidate", obs.candidate), ("baseline", obs.baseline)):
            if arm is None:
                continue
            try:
                kpi = readings.get(key)
                quantile, threshold = (kpi.quantile, kpi.threshold) if kpi else (None, None)
                values.setdefault(key, {})[arm_name] = value_of(arm, quantile, threshold)
            except (NotComparable, ValueError, ZeroDivisionError):
                continue
    return values


def decision_event(
    rollout_id: str,
    decision: GateDecision,
    policy: Policy,
    policy_hash: str,
    model_name: str,
    baseline_version: str | None,
    candidate_version: str,
    actor: str,
    *,
    window: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of one gate decision: all KPI evidence, the rules it was judged by, who.

    `window`: the evidence record of the decision's window (as the evidence store holds it);
    when given, each KPI also gets its per-window values, which the report plots, and the
    record carries the window's digest (`evidence_sha256`), so the chain covers the evidence.
    """
    body = decision.as_dict()
    rules = _kpi_rules(policy)
    per_window = _window_values(policy, window) if window is not None else {}
    for key, kpi in body["kpis"].items():
        kpi["rule"] = rules.get(key)
        if key in per_window:
            kpi["window_values"] = per_window[key]
    stage = policy.stage_for(decision.stage)
    return {
        "type": "decision",
        "rollout": rollout_id,
        "actor": actor,
        "model": {
            "name": model_name,
            "baseline": baseline_version,
            "candidate": candidate_version,
        },
        "policy": {
            "name": policy.name,
            "hash": policy_hash,
            "method": policy.method.value,
            "alpha": policy.alpha,
            "promotion_alpha": policy.promotion_alpha,
            "max_holds": policy.max_holds,
            "on_max_holds": policy.on_max_holds.value,
        },
        "stage_rules": None
        if stage is None
        else {
            "traffic": stage.traffic,
            "candidate_weight": policy.candidate_weight(stage),
            "soak_s": stage.soak,
            "interval_s": stage.interval,
            "looks": stage.looks,
            "promote_when": stage.promote_when,
        },
        **body,
        **({} if window is None else {"evidence_sha256": evidence_digest(window)}),
    }


def action_event(
    rollout_id: str,
    action: str,
    *,
    actor: str,
    model_name: str,
    candidate_version: str,
    baseline_version: str | None = None,
    stage: float | None = None,
    ok: bool = True,
    detail: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Something done to the world: start, deploy (set weight), promote, rollback, suspend,
    resume, approve, reject. `ok=False` with detail["error"] records an attempt that failed."""
    return {
        "type": "action",
        "rollout": rollout_id,
        "action": action,
        "actor": actor,
        "model": {
            "name": model_name,
            "baseline": baseline_version,
            "candidate": candidate_version,
        },
        "stage": stage,
        "ok": ok,
        "detail": dict(detail or {}),
    }


def notification_event(
    severity: str, message: str, fields: Mapping[str, str], actor: str
) -> dict[str, Any]:
    return {
        "type": "notification",
        "rollout": fields.get("rollout", ""),
        "severity": severity,
        "message": message,
        "fields": dict(fields),
        "actor": actor,
    }

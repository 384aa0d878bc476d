"""What a rollout tells the world: every decision and action to the audit trail, and the ones
people should hear about to the notifiers (Slack, PagerDuty, console)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kpigate.audit import AuditTrail, action_event, decision_event
from kpigate.engine import GateDecision
from kpigate.notify import notify_decision
from kpigate.notify.base import Notifier
from kpigate.policy import Policy


@dataclass
class Journal:
    trail: AuditTrail
    notifier: Notifier | None
    policy: Policy
    policy_digest: str
    model_name: str
    rollout_id: str
    actor: str
    baseline_version: str | None = None
    candidate_version: str = ""

    def decision(self, decision: GateDecision, window: Mapping[str, Any] | None) -> None:
        self.trail.append(
            decision_event(
                self.rollout_id, decision, self.policy, self.policy_digest, self.model_name,
                self.baseline_version, self.candidate_version, self.actor, window=window,
            )
        )  # fmt: skip
        if self.notifier is not None:
            notify_decision(
                self.notifier, self.rollout_id, decision, self.model_name, self.candidate_version
            )

    def action(
        self,
        action: str,
        stage: float | None = None,
        ok: bool = True,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        self.trail.append(
            action_event(
                self.rollout_id, action, actor=self.actor, model_name=self.model_name,
                candidate_version=self.candidate_version, baseline_version=self.baseline_version,
                stage=stage, ok=ok, detail=detail,
            )
        )  # fmt: skip

    def flush(self) -> None:
        flush = getattr(self.notifier, "flush", None)
        if callable(flush):
            flush()

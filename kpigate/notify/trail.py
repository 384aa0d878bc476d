"""The audit-trail channel: every message also becomes a record in the rollout's trail."""

from __future__ import annotations

from collections.abc import Mapping

from kpigate.audit import AuditTrail, notification_event
from kpigate.notify.base import Severity


class TrailNotifier:
    def __init__(self, trail: AuditTrail, actor: str) -> None:
        self.trail, self.actor = trail, actor

    def post(self, severity: Severity, message: str, fields: Mapping[str, str]) -> None:
        self.trail.append(notification_event(Severity(severity).value, message, fields, self.actor))

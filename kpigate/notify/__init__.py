"""Notifications: Slack, PagerDuty, the console and the audit trail behind one Notifier.

The runner needs two calls:

    dispatcher = dispatcher_from_env(trail=AuditTrail(path))   # once per rollout
    notify_decision(dispatcher, rollout_id, decision, model_name, candidate_version)
    dispatcher.flush()                                          # at the end
"""

from kpigate.notify.base import KIND_FIELD, ROLLOUT_FIELD, Notifier, NotifyError, Severity
from kpigate.notify.dispatch import Channel, Dispatcher, RateLimit
from kpigate.notify.factory import dispatcher_from_env
from kpigate.notify.messages import Notification, decision_notifications, notify_decision

__all__ = [
    "KIND_FIELD",
    "ROLLOUT_FIELD",
    "Channel",
    "Dispatcher",
    "Notification",
    "Notifier",
    "NotifyError",
    "RateLimit",
    "Severity",
    "decision_notifications",
    "dispatcher_from_env",
    "notify_decision",
]

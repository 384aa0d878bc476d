"""The notifier interface: one `post` per message, whatever the channel behind it."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Protocol, runtime_checkable


class Severity(StrEnum):
    """How loudly to tell people: critical pages (rollback), warning holds, info promotes."""

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


class NotifyError(Exception):
    """A channel refused or could not take a message. The text never holds a secret."""


# Field names with a meaning across channels. Any other field is shown as it is.
ROLLOUT_FIELD = "rollout"  # groups messages: PagerDuty dedup key, dispatcher dedup
KIND_FIELD = "kind"  # what happened: rollback, hold, promote, alert, suspend, summary


@runtime_checkable
class Notifier(Protocol):
    """One channel: Slack, PagerDuty, the console, the audit trail."""

    def post(self, severity: Severity, message: str, fields: Mapping[str, str]) -> None:
        """Deliver one message or raise NotifyError saying why not (without secrets)."""
        ...

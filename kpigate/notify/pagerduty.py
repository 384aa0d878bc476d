"""PagerDuty Events API v2 through the official `pagerduty` client: critical events page.

One incident per rollout: the dedup key is derived from the rollout id, so a repeated
critical message for the same rollout updates the open incident instead of paging again.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping

from pagerduty import EventsApiV2Client

from kpigate.notify.base import KIND_FIELD, ROLLOUT_FIELD, NotifyError, Severity
from kpigate.notify.redact import guarded_logger, redact, register_secret

EVENTS_URL = "https://events.pagerduty.com"
_SUMMARY_LIMIT = 1024  # Events v2 truncates longer summaries; we do it visibly
_DEDUP_LIMIT = 255


def dedup_key(fields: Mapping[str, str], message: str) -> str:
    rollout = fields.get(ROLLOUT_FIELD) or message
    return f"kpigate/{rollout}"[:_DEDUP_LIMIT]


class PagerDutyNotifier:
    """Triggers an incident for `critical` messages; other severities are not for paging."""

    def __init__(
        self,
        routing_key: str,
        *,
        base_url: str = EVENTS_URL,
        source: str = "kpigate",
        timeout_s: float = 10.0,
        verify: ssl.SSLContext | str | bool = True,
    ) -> None:
        if not routing_key.strip():
            raise NotifyError("PAGERDUTY_ROUTING_KEY is empty")
        register_secret(routing_key)
        # The client retries 5xx with growing sleeps and logs each attempt; its records must
        # not print the key, so its logger gets the secret filter too.
        guarded_logger("pagerduty.api_client")
        try:
            # The client only accepts https base URLs; tests use a TLS server on loopback.
            self._client = EventsApiV2Client(routing_key, base_url=base_url, verify=verify)
        except Exception as exc:
            raise NotifyError(f"PagerDuty client: {redact(str(exc))}") from None
        self._client.timeout = timeout_s  # type: ignore[assignment]  # httpx2 takes float
        self._client.max_network_attempts = 2
        self.source = source

    def post(self, severity: Severity, message: str, fields: Mapping[str, str]) -> None:
        if Severity(severity) is not Severity.CRITICAL:
            return
        summary = message if len(message) <= _SUMMARY_LIMIT else message[:1023] + "…"
        payload: dict[str, str] = {"group": "kpigate"}
        if fields.get(KIND_FIELD):
            payload["class"] = fields[KIND_FIELD]
        if fields.get("model"):
            payload["component"] = fields["model"]
        try:
            self._client.trigger(
                summary,
                self.source,
                dedup_key=dedup_key(fields, message),
                severity="critical",
                payload=payload,
                custom_details=dict(fields),
            )
        except Exception as exc:  # pagerduty.Error, httpx2 errors: all mean "not delivered"
            raise NotifyError(f"PagerDuty event not accepted: {redact(str(exc))}") from None

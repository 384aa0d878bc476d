"""Slack: an incoming-webhook URL, or a bot token and a channel, through slack-sdk."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

from kpigate.notify.base import NotifyError, Severity
from kpigate.notify.redact import guarded_logger, redact, register_secret

SLACK_API_URL = "https://slack.com/api/"
_EMOJI = {
    Severity.CRITICAL: ":rotating_light:",
    Severity.WARNING: ":warning:",
    Severity.INFO: ":information_source:",
}
_COLOR = {Severity.CRITICAL: "#d0021b", Severity.WARNING: "#f5a623", Severity.INFO: "#2eb67d"}
# Block Kit limits: 3000 characters per section text, 10 fields of 2000 per section.
_TEXT_LIMIT, _FIELDS_PER_SECTION, _FIELD_LIMIT = 3000, 10, 2000
# slack-sdk logs the webhook URL (the secret itself) at DEBUG; its records go through here.
_SDK_LOGGER = "kpigate.notify.slack.sdk"


def _escape(text: str) -> str:
    # Slack mrkdwn treats <...> as links and mentions: a KPI reason must not ping @channel.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_payload(severity: Severity, message: str, fields: Mapping[str, str]) -> dict[str, Any]:
    """text (the push notification's fallback) and one coloured attachment with the fields."""
    severity = Severity(severity)
    headline = f"{_EMOJI[severity]} *{severity.value.upper()}* {_escape(message)}"
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(headline, _TEXT_LIMIT)}}
    ]
    items = [
        {"type": "mrkdwn", "text": _clip(f"*{_escape(k)}*\n{_escape(str(v))}", _FIELD_LIMIT)}
        for k, v in fields.items()
    ]
    for start in range(0, len(items), _FIELDS_PER_SECTION):
        blocks.append({"type": "section", "fields": items[start : start + _FIELDS_PER_SECTION]})
    fallback = f"[{severity.value}] {message}"
    return {
        "text": _clip(fallback, _TEXT_LIMIT),
        "attachments": [{"color": _COLOR[severity], "fallback": fallback, "blocks": blocks}],
    }


class SlackWebhookNotifier:
    """Posts to an incoming webhook. The URL is the credential: it is never logged."""

    def __init__(self, webhook_url: str, *, timeout_s: int = 10) -> None:
        if not webhook_url.startswith(("https://", "http://")):
            raise NotifyError(
                "SLACK_WEBHOOK_URL must be an http(s) URL such as "
                "https://hooks.slack.com/services/T000/B000/XXXX"
            )
        register_secret(webhook_url)
        # The path after the host is the secret part; mask it on its own too.
        register_secret(webhook_url.split("://", 1)[1].partition("/")[2])
        self._client = WebhookClient(
            webhook_url, timeout=timeout_s, logger=guarded_logger(_SDK_LOGGER)
        )

    def post(self, severity: Severity, message: str, fields: Mapping[str, str]) -> None:
        payload = slack_payload(severity, message, fields)
        try:
            response = self._client.send(text=payload["text"], attachments=payload["attachments"])
        except Exception as exc:  # urllib raises many types; all mean "not delivered"
            raise NotifyError(f"Slack webhook unreachable: {redact(str(exc))}") from None
        if response.status_code != 200:
            raise NotifyError(
                f"Slack webhook answered HTTP {response.status_code}: "
                f"{redact(str(response.body))[:200]} (check that the webhook still exists)"
            )


class SlackBotNotifier:
    """Posts with a bot token (xoxb-...) to one channel via chat.postMessage."""

    def __init__(
        self, token: str, channel: str, *, base_url: str = SLACK_API_URL, timeout_s: int = 10
    ) -> None:
        if not channel:
            raise NotifyError("a Slack bot token needs SLACK_CHANNEL (a channel name or ID)")
        register_secret(token)
        self.channel = channel
        self._client = WebClient(
            token=token, base_url=base_url, timeout=timeout_s, logger=guarded_logger(_SDK_LOGGER)
        )

    def post(self, severity: Severity, message: str, fields: Mapping[str, str]) -> None:
        payload = slack_payload(severity, message, fields)
        try:
            self._client.chat_postMessage(
                channel=self.channel, text=payload["text"], attachments=payload["attachments"]
            )
        except SlackApiError as exc:
            error = exc.response.get("error", "unknown") if exc.response is not None else "?"
            hint = {
                "not_in_channel": "invite the bot to the channel",
                "channel_not_found": "check SLACK_CHANNEL",
                "invalid_auth": "check SLACK_BOT_TOKEN",
            }.get(str(error), "see https://api.slack.com/methods/chat.postMessage#errors")
            raise NotifyError(
                f"Slack refused the message to {self.channel}: {redact(str(error))} ({hint})"
            ) from None
        except Exception as exc:
            raise NotifyError(f"Slack API unreachable: {redact(str(exc))}") from None

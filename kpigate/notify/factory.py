"""Build the Dispatcher from the environment (or mounted secret files).

  SLACK_WEBHOOK_URL            incoming webhook: every severity, rate-limited
  SLACK_BOT_TOKEN + SLACK_CHANNEL   or a bot token posting to one channel
  SLACK_API_URL                Slack API base URL (default https://slack.com/api/)
  PAGERDUTY_ROUTING_KEY        Events v2 integration key: critical messages page
  PAGERDUTY_EVENTS_URL         Events API base URL (default https://events.pagerduty.com)
  KPIGATE_NOTIFY_PER_MINUTE    Slack rate limit, messages per minute (default 6)
  KPIGATE_NOTIFY_DEDUP_S       same message within this many seconds is sent once (600)
  KPIGATE_NOTIFY_CONSOLE       1: print to stderr as well (default: only without Slack/PD)
  KPIGATE_GRAFANA_URL + KPIGATE_GRAFANA_TOKEN   decisions as dashboard annotations
  KPIGATE_GRAFANA_DASHBOARD_UID  the dashboard to annotate (kpigate/observability/annotations.py)

Each secret may instead come from a file, as Kubernetes mounts them: NAME_FILE=/path.
A misconfigured channel is logged and left out; the rollout goes on with the others.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from kpigate.audit import AuditTrail, default_actor
from kpigate.notify.base import NotifyError, Severity
from kpigate.notify.console import ConsoleNotifier
from kpigate.notify.dispatch import Channel, Dispatcher, RateLimit
from kpigate.notify.pagerduty import EVENTS_URL, PagerDutyNotifier
from kpigate.notify.redact import guarded_logger, redact, register_secret
from kpigate.notify.slack import SLACK_API_URL, SlackBotNotifier, SlackWebhookNotifier
from kpigate.notify.trail import TrailNotifier

log = guarded_logger(__name__)


def read_secret(env: Mapping[str, str], name: str) -> str | None:
    """NAME, else the contents of the file named by NAME_FILE; None when neither is set."""
    value = env.get(name, "").strip()
    path = env.get(f"{name}_FILE", "").strip()
    if value and path:
        log.warning("both %s and %s_FILE are set; using %s", name, name, name)
    if value:
        register_secret(value)
        return value
    if not path:
        return None
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise NotifyError(f"{name}_FILE={path}: cannot read ({exc.strerror})") from None
    if not value:
        raise NotifyError(f"{name}_FILE={path} is empty")
    register_secret(value)
    return value


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        log.warning("%s=%r is not a positive number; using %g", name, raw, default)
        return default
    return value


def _slack(env: Mapping[str, str]) -> SlackWebhookNotifier | SlackBotNotifier | None:
    webhook = read_secret(env, "SLACK_WEBHOOK_URL")
    if webhook:
        return SlackWebhookNotifier(webhook)
    token = read_secret(env, "SLACK_BOT_TOKEN")
    if token:
        base_url = env.get("SLACK_API_URL", "").strip() or SLACK_API_URL
        return SlackBotNotifier(token, env.get("SLACK_CHANNEL", "").strip(), base_url=base_url)
    return None


def _pagerduty(env: Mapping[str, str]) -> PagerDutyNotifier | None:
    key = read_secret(env, "PAGERDUTY_ROUTING_KEY")
    if not key:
        return None
    return PagerDutyNotifier(
        key, base_url=env.get("PAGERDUTY_EVENTS_URL", "").strip() or EVENTS_URL
    )


def dispatcher_from_env(
    env: Mapping[str, str] | None = None,
    *,
    trail: AuditTrail | None = None,
    actor: str | None = None,
    console: bool | None = None,
    stream: TextIO | None = None,
) -> Dispatcher:
    """Slack and PagerDuty when configured, the console otherwise, and `trail` if given.

    Never raises for configuration: a bad channel is logged (secrets masked) and skipped.
    """
    env = os.environ if env is None else env
    per_minute = _number(env, "KPIGATE_NOTIFY_PER_MINUTE", 6.0)
    channels: list[Channel] = []
    for name, build in (("slack", _slack), ("pagerduty", _pagerduty)):
        try:
            notifier = build(env)
        except NotifyError as exc:
            log.error("%s notifications are off: %s", name, redact(str(exc)))
            continue
        if notifier is None:
            continue
        if name == "slack":
            limit = RateLimit(per_minute=per_minute, burst=max(1, round(per_minute)))
            channels.append(Channel(name, notifier, rate_limit=limit))
        else:
            channels.append(Channel(name, notifier, severities={Severity.CRITICAL}))
    if console is None:
        console = env.get("KPIGATE_NOTIFY_CONSOLE", "").strip() in {"1", "true", "yes"}
    if console or not channels:
        channels.append(Channel("console", ConsoleNotifier(stream)))
    # Annotations are not a place people are told things: they do not turn the console off.
    from kpigate.observability.annotations import annotator_from_env

    try:
        annotator = annotator_from_env(env, read_secret)
    except NotifyError as exc:
        log.error("grafana annotations are off: %s", redact(str(exc)))
        annotator = None
    if annotator is not None:
        channels.append(Channel("grafana", annotator))
    if trail is not None:
        to_trail = TrailNotifier(trail, actor or default_actor(env))
        channels.append(Channel("audit", to_trail, dedup=False))
    return Dispatcher(channels, dedup_s=_number(env, "KPIGATE_NOTIFY_DEDUP_S", 600.0))

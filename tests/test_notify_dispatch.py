"""Dispatcher (routing, dedup, rate limit, failures), the environment factory, and the
notifications a gate decision produces."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from kpigate.audit import AuditTrail, read_records
from kpigate.engine import GateDecision
from kpigate.notify import (
    Channel,
    Dispatcher,
    NotifyError,
    RateLimit,
    Severity,
    decision_notifications,
    dispatcher_from_env,
    notify_decision,
)
from kpigate.notify.console import ConsoleNotifier
from kpigate.notify.pagerduty import PagerDutyNotifier
from kpigate.notify.slack import SlackBotNotifier, SlackWebhookNotifier
from kpigate.policy import load_policy
from kpigate.replay import Replayer, parse_line
from tests.trail_helpers import POLICY, WINDOWS

HOOK_PATH = "/services/T0/B0/dIsPaTcHsEcReT99"


class Inbox:
    """A channel that keeps what it is given (the Notifier protocol, in memory)."""

    def __init__(self, fail: bool = False) -> None:
        self.messages: list[tuple[Severity, str, dict[str, str]]] = []
        self.fail = fail

    def post(self, severity: Severity, message: str, fields: Mapping[str, str]) -> None:
        if self.fail:
            raise NotifyError("channel down")
        self.messages.append((severity, message, dict(fields)))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fields(rollout: str = "r1", kind: str = "hold") -> dict[str, str]:
    return {"rollout": rollout, "kind": kind}


def test_channels_get_only_their_severities() -> None:
    chat, pager = Inbox(), Inbox()
    dispatcher = Dispatcher(
        [Channel("chat", chat), Channel("pager", pager, severities={Severity.CRITICAL})]
    )
    dispatcher.post(Severity.INFO, "promoted", _fields(kind="promote"))
    dispatcher.post(Severity.CRITICAL, "rolled back", _fields(kind="rollback"))
    assert [m[1] for m in chat.messages] == ["promoted", "rolled back"]
    assert [m[1] for m in pager.messages] == ["rolled back"]


def test_the_same_message_of_a_rollout_is_sent_once_per_dedup_window() -> None:
    clock, inbox = Clock(), Inbox()
    dispatcher = Dispatcher([Channel("chat", inbox)], dedup_s=600, clock=clock)
    for _ in range(3):
        dispatcher.post(Severity.WARNING, "held at 50%: latency_p95 failing", _fields())
    dispatcher.post(Severity.WARNING, "held at 50%: latency_p95 failing", _fields("r2"))
    dispatcher.post(Severity.WARNING, "held at 50%: latency_p95 failing", _fields(kind="alert"))
    clock.now += 601
    dispatcher.post(Severity.WARNING, "held at 50%: latency_p95 failing", _fields())
    assert len(inbox.messages) == 4
    assert dispatcher.stats["chat"].deduplicated == 2


def test_the_rate_limit_drops_excess_and_summarises_it_in_the_next_message() -> None:
    clock, inbox = Clock(), Inbox()
    limit = RateLimit(per_minute=2, burst=2)
    dispatcher = Dispatcher([Channel("chat", inbox, rate_limit=limit)], clock=clock)
    for i in range(5):
        dispatcher.post(Severity.WARNING, f"alert {i}", _fields(kind="alert"))
    dispatcher.post(Severity.INFO, "promoted", _fields(kind="promote"))
    assert [m[1] for m in inbox.messages] == ["alert 0", "alert 1"]
    assert dispatcher.stats["chat"].rate_limited == 4
    # critical is exempt: a rollback always reaches people, with the tally so far
    dispatcher.post(Severity.CRITICAL, "rolled back", _fields(kind="rollback"))
    assert inbox.messages[-1][1] == "rolled back"
    assert inbox.messages[-1][2]["suppressed"] == (
        "4 earlier message(s) not sent (rate limit): 3 warning, 1 info"
    )
    clock.now += 30  # one token back
    dispatcher.post(Severity.WARNING, "alert 9", _fields(kind="alert"))
    dispatcher.post(Severity.WARNING, "alert 10", _fields(kind="alert"))
    assert inbox.messages[-1][1] == "alert 9" and "suppressed" not in inbox.messages[-1][2]
    dispatcher.flush()
    severity, message, fields = inbox.messages[-1]
    assert (severity, message) == (
        Severity.WARNING,
        "1 notification(s) held back by the rate limit",
    )
    assert fields["suppressed"].endswith(": 1 warning")
    dispatcher.flush()  # nothing pending: nothing sent
    assert inbox.messages[-1][1] == "1 notification(s) held back by the rate limit"


def test_a_failing_channel_is_logged_and_never_stops_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = Inbox()
    dispatcher = Dispatcher([Channel("broken", Inbox(fail=True)), Channel("chat", good)])
    dispatcher.post(Severity.CRITICAL, "rolled back", _fields(kind="rollback"))
    assert len(good.messages) == 1
    assert dispatcher.stats["broken"].failed == 1
    assert "notification to broken failed (the rollout goes on)" in caplog.text


def test_rate_limited_slack_carries_the_summary_in_its_payload(httpserver: HTTPServer) -> None:
    httpserver.expect_request(HOOK_PATH).respond_with_data("ok")
    clock = Clock()
    slack = Channel(
        "slack",
        SlackWebhookNotifier(httpserver.url_for(HOOK_PATH)),
        rate_limit=RateLimit(per_minute=1, burst=1),
    )
    dispatcher = Dispatcher([slack], clock=clock)
    for i in range(4):
        dispatcher.post(Severity.WARNING, f"approval_rate alert {i}", _fields(kind="alert"))
    clock.now += 60
    dispatcher.post(Severity.INFO, "passed the 25% stage", _fields(kind="promote"))
    bodies = [request.get_json() for request, _ in httpserver.log]
    assert [b["text"] for b in bodies] == [
        "[warning] approval_rate alert 0",
        "[info] passed the 25% stage",
    ]
    shown = [f["text"] for f in bodies[1]["attachments"][0]["blocks"][1]["fields"]]
    assert "*suppressed*\n3 earlier message(s) not sent (rate limit): 3 warning" in shown


# --- the factory ---------------------------------------------------------------------------------


def test_without_credentials_messages_go_to_the_console_and_the_trail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trail = AuditTrail(tmp_path / "trail.jsonl")
    dispatcher = dispatcher_from_env({}, trail=trail, actor="argo:wf-1")
    assert [c.name for c in dispatcher.channels] == ["console", "audit"]
    dispatcher.post(Severity.WARNING, "fraud v2 held at 50%", {"rollout": "r1", "kind": "hold"})
    dispatcher.post(Severity.WARNING, "fraud v2 held at 50%", {"rollout": "r1", "kind": "hold"})
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1  # deduplicated on the console
    assert "kpigate WARNING" in err[0] and "fraud v2 held at 50%  rollout=r1  kind=hold" in err[0]
    records = read_records(trail.path)
    assert len(records) == 2  # the trail keeps every message
    assert records[0]["type"] == "notification" and records[0]["actor"] == "argo:wf-1"
    assert records[0]["rollout"] == "r1" and records[0]["severity"] == "warning"


def test_slack_webhook_from_a_mounted_file_and_pagerduty_for_critical_only(
    tmp_path: Path, httpserver: HTTPServer
) -> None:
    secret = tmp_path / "webhook"
    secret.write_text(httpserver.url_for(HOOK_PATH) + "\n")
    env = {"SLACK_WEBHOOK_URL_FILE": str(secret), "PAGERDUTY_ROUTING_KEY": "pdkey-0123456789"}
    dispatcher = dispatcher_from_env(env)
    channels = {c.name: c for c in dispatcher.channels}
    assert list(channels) == ["slack", "pagerduty"]  # no console once a chat is configured
    assert isinstance(channels["slack"].notifier, SlackWebhookNotifier)
    assert channels["slack"].rate_limit == RateLimit(per_minute=6, burst=6)
    assert isinstance(channels["pagerduty"].notifier, PagerDutyNotifier)
    assert set(channels["pagerduty"].severities) == {Severity.CRITICAL}
    httpserver.expect_request(HOOK_PATH).respond_with_data("ok")
    dispatcher.post(Severity.INFO, "passed the 5% stage", {"rollout": "r1", "kind": "promote"})
    assert httpserver.log[0][0].get_json()["text"] == "[info] passed the 5% stage"


def test_bot_token_with_channel_and_forced_console(tmp_path: Path) -> None:
    env = {
        "SLACK_BOT_TOKEN": "xoxb-fActOrYsEcReT",
        "SLACK_CHANNEL": "#rollouts",
        "SLACK_API_URL": "http://127.0.0.1:1/api/",
        "KPIGATE_NOTIFY_CONSOLE": "1",
        "KPIGATE_NOTIFY_PER_MINUTE": "3",
    }
    dispatcher = dispatcher_from_env(env)
    slack = dispatcher.channels[0]
    assert isinstance(slack.notifier, SlackBotNotifier) and slack.notifier.channel == "#rollouts"
    assert slack.rate_limit == RateLimit(per_minute=3, burst=3)
    assert isinstance(dispatcher.channels[-1].notifier, ConsoleNotifier)


def test_misconfiguration_is_logged_without_secrets_and_falls_back_to_the_console(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    env = {
        "SLACK_BOT_TOKEN": "xoxb-mIsCoNfIgSeCrEt",  # no SLACK_CHANNEL
        "PAGERDUTY_ROUTING_KEY_FILE": str(tmp_path / "missing"),
    }
    dispatcher = dispatcher_from_env(env)
    assert [c.name for c in dispatcher.channels] == ["console"]
    assert "slack notifications are off: a Slack bot token needs SLACK_CHANNEL" in caplog.text
    assert "pagerduty notifications are off: PAGERDUTY_ROUTING_KEY_FILE=" in caplog.text
    assert "cannot read (No such file or directory)" in caplog.text
    assert "mIsCoNfIg" not in caplog.text


def test_an_unreachable_slack_never_breaks_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = "http://127.0.0.1:9/services/T0/B0/uNrEaChAbLeSeCrEt"
    dispatcher = dispatcher_from_env({"SLACK_WEBHOOK_URL": url})
    dispatcher.post(Severity.CRITICAL, "rolled back", {"rollout": "r1", "kind": "rollback"})
    assert dispatcher.stats["slack"].failed == 1
    assert "notification to slack failed" in caplog.text
    assert "uNrEaChAbLe" not in caplog.text


# --- decisions into notifications ----------------------------------------------------------------


def _decisions(rollout: str) -> list[GateDecision]:
    replayer = Replayer(load_policy(POLICY))
    lines = [parse_line(t) for t in WINDOWS.read_text().splitlines()]
    return [replayer.feed(raw) for raw in lines if raw.rollout == rollout]


def test_decisions_map_to_severities_and_routine_soaks_stay_quiet() -> None:
    good = _decisions("good")
    assert decision_notifications("good", good[0], "fraud", "2") == []  # soaking
    (promote,) = decision_notifications("good", good[5], "fraud", "2")
    assert (promote.severity, promote.message) == (Severity.INFO, "fraud v2 passed the 5% stage")
    assert promote.fields["kind"] == "promote" and promote.fields["rollout"] == "good"
    (hold,) = decision_notifications("good", good[13], "fraud", "2")
    assert hold.severity is Severity.WARNING
    assert hold.message == "fraud v2 held at 50%: latency_p95 failing"
    assert hold.fields["latency_p95"].startswith("fail, estimate +")
    (again,) = decision_notifications("good", good[14], "fraud", "2")
    assert again.message == hold.message  # worded without numbers, so dedup can fold it
    (final,) = decision_notifications("good", good[-1], "fraud", "2")
    assert final.message == "fraud v2 promoted to 100%, rollout complete"

    (rollback,) = decision_notifications("bad", _decisions("bad")[-1], "fraud", "2")
    assert rollback.severity is Severity.CRITICAL
    assert (
        rollback.message == "fraud v2 rolled back at 25%: harm on recall (worse than the baseline)"
    )
    assert rollback.fields["kind"] == "rollback" and "CI [" in rollback.fields["recall"]


def test_notify_decision_posts_through_the_dispatcher_with_dedup() -> None:
    inbox = Inbox()
    dispatcher = Dispatcher([Channel("chat", inbox)])
    for decision in _decisions("good"):
        notify_decision(dispatcher, "good", decision, "fraud", "2")
    assert [m[1] for m in inbox.messages] == [
        "fraud v2 passed the 5% stage",
        "fraud v2 passed the 25% stage",
        "fraud v2 held at 50%: latency_p95 failing",
        "fraud v2 held at 50%: waiting for evidence",
        "fraud v2 passed the 50% stage",
        "fraud v2 promoted to 100%, rollout complete",
    ]
    # each hold came twice in a row (windows 14-15, 18-19); the repeat is not sent again
    assert dispatcher.stats["chat"].deduplicated == 2

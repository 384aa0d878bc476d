"""Slack notifiers against a local HTTP server standing in for Slack."""

from __future__ import annotations

import logging

import pytest
from pytest_httpserver import HTTPServer

from kpigate.notify import NotifyError, Severity
from kpigate.notify.slack import SlackBotNotifier, SlackWebhookNotifier

HOOK_PATH = "/services/T0KPI/B0GATE/sEcReTwEbHoOkToKeN42"
BOT_TOKEN = "xoxb-1234-5678-sEcReTbOtToKeN"
FIELDS = {
    "rollout": "r-7",
    "kind": "rollback",
    "stage": "25%",
    "recall": "fail, CI [-0.09, -0.008]",
}


def test_webhook_posts_severity_colour_emoji_and_fields(httpserver: HTTPServer) -> None:
    httpserver.expect_oneshot_request(HOOK_PATH, method="POST").respond_with_data("ok")
    notifier = SlackWebhookNotifier(httpserver.url_for(HOOK_PATH))
    notifier.post(Severity.CRITICAL, "fraud v2 rolled back at 25%", FIELDS)
    httpserver.check_assertions()
    ((request, _),) = httpserver.log
    body = request.get_json()
    assert body["text"] == "[critical] fraud v2 rolled back at 25%"
    (attachment,) = body["attachments"]
    assert attachment["color"] == "#d0021b"
    headline, fields = attachment["blocks"]
    assert headline["text"]["text"] == ":rotating_light: *CRITICAL* fraud v2 rolled back at 25%"
    assert [f["text"] for f in fields["fields"]] == [
        "*rollout*\nr-7",
        "*kind*\nrollback",
        "*stage*\n25%",
        "*recall*\nfail, CI [-0.09, -0.008]",
    ]


@pytest.mark.parametrize(
    ("severity", "emoji", "color"),
    [
        (Severity.WARNING, ":warning:", "#f5a623"),
        (Severity.INFO, ":information_source:", "#2eb67d"),
    ],
)
def test_each_severity_has_its_emoji_and_colour(
    httpserver: HTTPServer, severity: Severity, emoji: str, color: str
) -> None:
    httpserver.expect_request(HOOK_PATH).respond_with_data("ok")
    SlackWebhookNotifier(httpserver.url_for(HOOK_PATH)).post(severity, "m", {})
    attachment = httpserver.log[-1][0].get_json()["attachments"][0]
    assert attachment["color"] == color
    assert attachment["blocks"][0]["text"]["text"].startswith(emoji)
    assert len(attachment["blocks"]) == 1  # no fields, no empty section


def test_mrkdwn_control_characters_are_escaped_and_fields_split_by_ten(
    httpserver: HTTPServer,
) -> None:
    httpserver.expect_request(HOOK_PATH).respond_with_data("ok")
    fields = {f"k{i}": f"<!channel> & {i}" for i in range(12)}
    SlackWebhookNotifier(httpserver.url_for(HOOK_PATH)).post(Severity.WARNING, "<@U1> hi", fields)
    blocks = httpserver.log[-1][0].get_json()["attachments"][0]["blocks"]
    assert "&lt;@U1&gt; hi" in blocks[0]["text"]["text"]
    assert [len(b["fields"]) for b in blocks[1:]] == [10, 2]
    assert blocks[1]["fields"][0]["text"] == "*k0*\n&lt;!channel&gt; &amp; 0"


def test_bot_token_posts_to_the_channel_with_bearer_auth(httpserver: HTTPServer) -> None:
    httpserver.expect_oneshot_request("/api/chat.postMessage", method="POST").respond_with_json(
        {"ok": True, "channel": "C0KPI", "ts": "1700000000.000100"}
    )
    notifier = SlackBotNotifier(BOT_TOKEN, "#ml-rollouts", base_url=httpserver.url_for("/api/"))
    notifier.post(Severity.WARNING, "fraud v2 held at 50%: latency_p95 failing", FIELDS)
    httpserver.check_assertions()
    ((request, _),) = httpserver.log
    assert request.headers["Authorization"] == f"Bearer {BOT_TOKEN}"
    body = request.get_json()
    assert body["channel"] == "#ml-rollouts"
    assert body["text"] == "[warning] fraud v2 held at 50%: latency_p95 failing"
    assert body["attachments"][0]["color"] == "#f5a623"


def test_slack_refusals_are_actionable_and_hold_no_secret(
    httpserver: HTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    httpserver.expect_request("/api/chat.postMessage").respond_with_json(
        {"ok": False, "error": "channel_not_found"}
    )
    httpserver.expect_request(HOOK_PATH).respond_with_data("no_service", status=404)
    bot = SlackBotNotifier(BOT_TOKEN, "#gone", base_url=httpserver.url_for("/api/"))
    with pytest.raises(NotifyError, match="channel_not_found \\(check SLACK_CHANNEL\\)") as bot_err:
        bot.post(Severity.INFO, "m", {})
    hook = SlackWebhookNotifier(httpserver.url_for(HOOK_PATH))
    with pytest.raises(NotifyError, match="HTTP 404: no_service") as hook_err:
        hook.post(Severity.INFO, "m", {})
    # werkzeug is the stand-in Slack server logging its own request line: not our process.
    ours = [r for r in caplog.records if r.name != "werkzeug"]
    assert any("Sending a request - url: ***" in r.getMessage() for r in ours)
    texts = [str(bot_err.value), str(hook_err.value), *(r.getMessage() for r in ours)]
    for text in texts:
        assert "sEcReT" not in text


def test_unreachable_webhook_is_a_notify_error_without_the_url() -> None:
    url = "http://127.0.0.1:9" + HOOK_PATH  # discard port: nothing listens
    with pytest.raises(NotifyError, match="Slack webhook unreachable") as err:
        SlackWebhookNotifier(url, timeout_s=2).post(Severity.CRITICAL, "m", {})
    assert "sEcReT" not in str(err.value)


def test_a_webhook_url_that_is_not_a_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(NotifyError, match="must be an http\\(s\\) URL") as err:
        SlackWebhookNotifier("sEcReTwEbHoOkToKeN42")
    assert "sEcReT" not in str(err.value)

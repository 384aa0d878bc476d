"""Gate decisions posted to Grafana as annotations, checked by a local HTTP server against the
documented request: `POST /api/annotations` with a bearer token and the JSON body
{dashboardUID, time (epoch milliseconds), tags, text}; Grafana answers 200
{"message": "Annotation added", "id": N} (Grafana's docs, "Annotations HTTP API",
developer-resources/api-reference/http-api/annotations, the legacy /api form)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from kpigate.notify import dispatcher_from_env, notify_decision
from kpigate.notify.base import NotifyError, Severity
from kpigate.observability.annotations import ANNOTATIONS_PATH, GrafanaAnnotator
from kpigate.observability.dashboard import UID, build
from kpigate.policy import load_policy
from kpigate.replay import Replayer, replay_lines
from tests.trail_helpers import POLICY, WINDOWS

TOKEN = "glsa_test_token"


def _bad_rollback() -> Any:
    lines = [line for line in WINDOWS.read_text().splitlines() if '"rollout":"bad"' in line]
    *_, (_, _, last) = replay_lines(lines, Replayer(load_policy(POLICY)))
    return last


def _grafana(httpserver: HTTPServer, bodies: list[dict[str, Any]]) -> None:
    """Answer like Grafana, only to the documented request."""

    def handler(request: Request) -> Response:
        body = json.loads(request.get_data())
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert request.headers["Content-Type"] == "application/json"
        assert set(body) == {"dashboardUID", "time", "tags", "text"}
        assert isinstance(body["time"], int) and body["time"] > 1_600_000_000_000  # ms
        assert all(isinstance(tag, str) for tag in body["tags"])
        bodies.append(body)
        return Response(json.dumps({"message": "Annotation added", "id": len(bodies)}), 200,
                        content_type="application/json")  # fmt: skip

    httpserver.expect_request(ANNOTATIONS_PATH, method="POST").respond_with_handler(handler)


def test_a_rollback_is_posted_as_a_dashboard_annotation_from_the_environment(
    httpserver: HTTPServer, tmp_path: Path
) -> None:
    bodies: list[dict[str, Any]] = []
    _grafana(httpserver, bodies)
    secret = tmp_path / "grafana-token"
    secret.write_text(TOKEN + "\n")  # a mounted secret, with its newline
    env = {
        "KPIGATE_GRAFANA_URL": httpserver.url_for("/"),
        "KPIGATE_GRAFANA_TOKEN_FILE": str(secret),
    }
    dispatcher = dispatcher_from_env(env, console=False)
    notify_decision(dispatcher, "bad-v3", _bad_rollback(), "fraud", "3")
    httpserver.check_assertions()
    assert len(bodies) == 1
    body = bodies[0]
    assert body["dashboardUID"] == UID == build()["uid"]
    assert body["tags"] == ["kpigate", "critical", "rollback", "rollout:bad-v3"]
    assert body["text"].startswith("fraud v3 rolled back at 25%") and "recall" in body["text"]
    # the dashboard's "Gate decisions" annotation query selects exactly these
    query = {a["name"]: a for a in build()["annotations"]["list"]}["Gate decisions"]
    assert set(query["target"]["tags"]) <= set(body["tags"])


def test_a_refused_annotation_is_a_notify_error_that_names_the_fix(httpserver: HTTPServer) -> None:
    httpserver.expect_request(ANNOTATIONS_PATH, method="POST").respond_with_json(
        {"message": "Permissions needed: annotations:write"}, status=403
    )
    annotator = GrafanaAnnotator(httpserver.url_for("/"), TOKEN)
    with pytest.raises(NotifyError, match=r"HTTP 403.*annotations:write"):
        annotator.post(Severity.INFO, "stage passed", {})


def test_a_url_without_a_token_turns_annotations_off_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR):
        dispatcher = dispatcher_from_env(
            {"KPIGATE_GRAFANA_URL": "http://127.0.0.1:9"}, console=False
        )
    assert "grafana annotations are off" in caplog.text
    assert "KPIGATE_GRAFANA_TOKEN" in caplog.text
    assert "grafana" not in [channel.name for channel in dispatcher.channels]

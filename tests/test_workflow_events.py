"""The Argo Events path: a real MLflow delivery and the relay's forward, through the Sensor.

Upstream files pinned here (argoproj/argo-events at its head, mlflow 3.17):
  mlflow/webhooks/delivery.py                    the envelope {entity, action, timestamp, data}
  pkg/eventsources/sources/webhook/start.go      event data = {"header": ..., "body": <the POST>}
  pkg/eventsources/common/webhook/webhook.go     authSecret: only "Authorization: Bearer <token>"
  pkg/sensors/dependencies/filter.go             a missing filter path drops the event; string
                                                 filters are Go's unanchored regexp.Match
  pkg/sensors/triggers/params.go                 dataKey read with gjson into the dest path
(modelled in tests/argo_events_helpers.py).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from pytest_httpserver import HTTPServer

from kpigate.casestudy import AppThread
from kpigate.relay.app import WEBHOOK_PATH, RelaySettings, create_relay
from kpigate.relay.cli import register_webhook
from kpigate.relay.triggers.base import TriggerError
from kpigate.relay.triggers.events import ArgoEventsTrigger, envelope
from kpigate.workflows.progressive_delivery import TEMPLATE_NAME
from tests.argo_events_helpers import (
    check_bearer,
    sensor_accepts,
    webhook_event_data,
    workflow_from,
)
from tests.manifest_schemas import MANIFESTS, argo_errors, load_yaml_documents

EVENTS = MANIFESTS / "argo-events"
SECRET = "events-relay-secret-51c"
TOKEN = "eventsource-bearer-token-0b7"


def one(path: Path) -> dict[str, Any]:
    (doc,) = load_yaml_documents(path)
    return doc


def sensor_parts() -> tuple[dict[str, Any], dict[str, Any]]:
    sensor = one(EVENTS / "sensor.yaml")
    (dependency,) = sensor["spec"]["dependencies"]
    (trigger,) = sensor["spec"]["triggers"]
    return dependency, trigger["template"]["argoWorkflow"]


def through_the_sensor(headers: dict[str, str], body: bytes) -> dict[str, str]:
    """The arguments of the Workflow the Sensor submits for this POST to the EventSource."""
    dependency, argo = sensor_parts()
    data = webhook_event_data(headers, body)
    accepted, why = sensor_accepts(dependency, data)
    assert accepted, why
    workflow = workflow_from(argo, {dependency["name"]: data})
    assert argo_errors(workflow) == []
    assert workflow["spec"]["workflowTemplateRef"] == {"name": TEMPLATE_NAME}
    return {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}


class EventSourceStandIn:
    """Records POSTs and answers as the webhook EventSource does with an authSecret."""

    def __init__(self, server: HTTPServer) -> None:
        self.received: dict[str, list[tuple[dict[str, str], bytes]]] = {}
        self.server = server
        server.expect_request("/mlflow", method="POST").respond_with_handler(self.handle)
        server.expect_request("/captured", method="POST").respond_with_handler(self.capture)

    def handle(self, request: Any) -> Any:
        from werkzeug import Response

        headers = dict(request.headers)
        status = check_bearer(headers, TOKEN)
        if status == 200:
            self.received.setdefault("/mlflow", []).append((headers, request.get_data()))
        return Response("success" if status == 200 else "Invalid Auth token", status=status)

    def capture(self, request: Any) -> Any:
        from werkzeug import Response

        self.received.setdefault("/captured", []).append(
            (dict(request.headers), request.get_data())
        )
        return Response("success")

    def wait(self, path: str, timeout_s: float = 30.0) -> tuple[dict[str, str], bytes]:
        deadline = time.monotonic() + timeout_s
        while not self.received.get(path) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert self.received.get(path), f"nothing reached {path}"
        return self.received[path][0]


@pytest.mark.slow
def test_a_real_mlflow_delivery_and_the_relay_forward_start_the_rollout_of_that_version(
    mlflow_server: str, httpserver: HTTPServer
) -> None:
    """MLflow sets the alias -> (a) its raw delivery, captured, and (b) the relay's forward to
    the EventSource both pass the Sensor's filters and fill model-name / model-version."""
    stand_in = EventSourceStandIn(httpserver)
    model = f"events-{uuid.uuid4().hex[:6]}"
    trigger = ArgoEventsTrigger(httpserver.url_for("/mlflow"), TOKEN)
    app = create_relay(RelaySettings(secret=SECRET, models=frozenset({model})), trigger)
    with AppThread(app) as relay:
        register_webhook(mlflow_server, relay.url + WEBHOOK_PATH, SECRET, name="events-relay")
        register_webhook(mlflow_server, httpserver.url_for("/captured"), SECRET, "events-raw")
        client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
        try:
            client.create_registered_model(model)
            run = client.create_run(client.create_experiment(model))
            version = client.create_model_version(
                model, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
            ).version
            client.set_registered_model_alias(model, "candidate", version)
            forwarded = stand_in.wait("/mlflow")
            deliveries = stand_in.received["/captured"]
        finally:
            for hook in client.list_webhooks():
                if hook.name in ("events-relay", "events-raw"):
                    client.delete_webhook(hook.webhook_id)
    expected = {"model-name": model, "model-version": str(version)}
    raw = [d for d in deliveries if b'"model_version_alias"' in d[1]]
    assert raw, f"no alias delivery captured among {len(deliveries)}"
    assert through_the_sensor(*raw[0]) == expected
    assert through_the_sensor(*forwarded) == expected
    # What the relay used to post is dropped by the Sensor (the EventSource had answered 200).
    dependency, _ = sensor_parts()
    old = webhook_event_data({}, b'{"model_name": "%s", "model_version": "1"}' % model.encode())
    assert sensor_accepts(dependency, old) == (False, "path 'body.data.name' does not exist")


@pytest.mark.parametrize(
    ("version", "accepted"),
    [("7", True), ("12", True), ("12abc", False), ("v7", False), ("candidate", False), ("", False)],
)
def test_the_sensor_takes_only_a_version_number(version: str, accepted: bool) -> None:
    """filter.go matches with Go's regexp.Match, which finds a match anywhere: ^...$ anchors."""
    dependency, _ = sensor_parts()
    body = envelope("fraud", version)
    assert sensor_accepts(dependency, {"header": {}, "body": body})[0] is accepted


def test_the_eventsource_needs_the_relay_s_bearer_token(httpserver: HTTPServer) -> None:
    stand_in = EventSourceStandIn(httpserver)
    with pytest.raises(TriggerError, match="401"):
        ArgoEventsTrigger(httpserver.url_for("/mlflow"), "wrong").start("fraud", "3")
    with pytest.raises(TriggerError, match="401"):
        ArgoEventsTrigger(httpserver.url_for("/mlflow")).start("fraud", "3")
    ArgoEventsTrigger(httpserver.url_for("/mlflow"), TOKEN).start("fraud", "3")
    headers, body = stand_in.received["/mlflow"][0]
    assert through_the_sensor(headers, body) == {"model-name": "fraud", "model-version": "3"}


def test_the_eventsource_checks_a_token_and_shares_the_sensor_s_bus() -> None:
    source = one(EVENTS / "eventsource.yaml")
    sensor = one(EVENTS / "sensor.yaml")
    bus = one(EVENTS / "eventbus.yaml")
    assert argo_errors(bus) == []
    hook = source["spec"]["webhook"]["mlflow-registry"]
    assert hook["authSecret"] == {"name": "kpigate-events-token", "key": "token"}
    assert source["spec"]["eventBusName"] == sensor["spec"]["eventBusName"]
    assert sensor["spec"]["eventBusName"] == bus["metadata"]["name"]


def test_an_unreachable_eventsource_is_a_trigger_error() -> None:
    with pytest.raises(TriggerError, match="did not take the event"):
        ArgoEventsTrigger("http://127.0.0.1:9/mlflow", TOKEN, timeout_s=2).start("fraud", "3")

"""The relay: signed MLflow webhooks in, one rollout per approved version out."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient
from pytest_httpserver import HTTPServer

from kpigate.casestudy import AppThread
from kpigate.relay.app import MAX_BODY_BYTES, WEBHOOK_PATH, RelaySettings, create_relay
from kpigate.relay.cli import register_webhook
from kpigate.relay.signature import Refused, sign, verify
from kpigate.relay.triggers.argo import ArgoTrigger
from kpigate.relay.triggers.base import TriggerError

SECRET = "relay-secret-7d2"


class RecordingTrigger:
    name = "recording"

    def __init__(self, fail: bool = False) -> None:
        self.started: list[tuple[str, str]] = []
        self.fail = fail

    def start(self, model_name: str, model_version: str) -> str:
        if self.fail:
            raise TriggerError("Argo is down")
        self.started.append((model_name, model_version))
        return f"rollout-{len(self.started)}"


def event(entity: str, action: str, **data: str) -> str:
    return json.dumps({"entity": entity, "action": action, "timestamp": "now", "data": data})


def post(url: str, body: str, secret: str = SECRET, delivery: str | None = None,
         timestamp: float | None = None, sign_it: bool = True) -> httpx.Response:  # fmt: skip
    delivery = delivery or str(uuid.uuid4())
    stamp = str(int(time.time() if timestamp is None else timestamp))
    headers = {"X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": stamp,
               "Content-Type": "application/json"}  # fmt: skip
    if sign_it:
        headers["X-MLflow-Signature"] = sign(secret, delivery, stamp, body)
    return httpx.post(url + WEBHOOK_PATH, content=body, headers=headers, timeout=10)


@pytest.fixture
def relay() -> Iterator[tuple[str, RecordingTrigger]]:
    trigger = RecordingTrigger()
    app = create_relay(RelaySettings(secret=SECRET, models=frozenset({"fraud"})), trigger)
    with AppThread(app) as server:
        yield server.url, trigger


def test_signature_rules() -> None:
    payload = '{"a": 1}'
    good = sign(SECRET, "d1", "1000", payload)
    verify(SECRET, good, "d1", "1000", payload, now=1010)
    cases = [
        (None, "d1", "1000", payload, "missing"),
        (good, "d1", "1000", payload + " ", "does not match"),
        (sign("other", "d1", "1000", payload), "d1", "1000", payload, "does not match"),
        (good, "d2", "1000", payload, "does not match"),
        (good, "d1", "1000", payload, "stale"),
        (good, "d1", "soon", payload, "not a Unix time"),
    ]
    for signature, delivery, stamp, body, why in cases:
        with pytest.raises(Refused, match=why) as refused:
            verify(SECRET, signature, delivery, stamp, body, now=1010 if why != "stale" else 5000)
        assert refused.value.status == 401


def test_the_relay_refuses_what_it_must_and_starts_once(
    relay: tuple[str, RecordingTrigger],
) -> None:
    url, trigger = relay
    approve = event("model_version_alias", "created", name="fraud", version="3", alias="candidate")
    assert post(url, approve, sign_it=False).status_code == 401
    assert post(url, approve, secret="wrong").status_code == 401
    assert post(url, approve, timestamp=time.time() - 3600).status_code == 401
    assert post(url, "not json").status_code == 400
    assert post(url, "x" * (MAX_BODY_BYTES + 1)).status_code == 413
    unknown = event("model_version_alias", "created", name="other", version="1", alias="candidate")
    assert post(url, unknown).status_code == 422
    ignored = event("model_version_alias", "created", name="fraud", version="3", alias="staging")
    assert post(url, ignored).json() == {
        "status": "ignored",
        "reason": "alias 'staging' is not 'candidate'",
    }
    assert trigger.started == []

    first = post(url, approve, delivery="delivery-1")
    assert first.status_code == 202 and first.json()["status"] == "started"
    replay = post(url, approve, delivery="delivery-1")
    assert replay.status_code == 200 and replay.json()["status"] == "duplicate"
    tag = event(
        "model_version_tag", "set", name="fraud", version="3", key="kpigate.approved", value="true"
    )
    again = post(url, tag)
    assert again.json()["status"] == "already started"
    assert trigger.started == [("fraud", "3")]


def test_a_failing_trigger_answers_502_and_can_be_retried() -> None:
    trigger = RecordingTrigger(fail=True)
    with AppThread(create_relay(RelaySettings(secret=SECRET), trigger)) as server:
        body = event("model_version_alias", "created", name="fraud", version="4", alias="candidate")
        failed = post(server.url, body, delivery="d-9")
        assert failed.status_code == 502 and "Argo is down" in failed.json()["error"]
        trigger.fail = False  # MLflow retries the same delivery: it must go through now
        assert post(server.url, body, delivery="d-9").json()["status"] == "started"


@pytest.mark.slow
def test_a_version_registered_in_mlflow_starts_a_rollout_on_argo(
    mlflow_server: str, httpserver: HTTPServer
) -> None:
    """Real MLflow server -> signed webhook -> real relay -> Argo server (stand-in) receives
    the Workflow for that version."""
    created: list[dict[str, Any]] = []

    def argo(request: Any) -> Any:
        from werkzeug import Response

        body = request.get_json()
        created.append(body)
        workflow = {**body["workflow"], "metadata": {"name": "progressive-delivery-abc12"}}
        return Response(json.dumps(workflow), content_type="application/json")

    httpserver.expect_request("/api/v1/workflows/ml", method="POST").respond_with_handler(argo)
    trigger = ArgoTrigger(httpserver.url_for("").rstrip("/"), "argo-token", "ml")
    app = create_relay(RelaySettings(secret=SECRET, models=frozenset({"relay-demo"})), trigger)
    with AppThread(app) as relay:
        register_webhook(mlflow_server, relay.url + WEBHOOK_PATH, SECRET, name="relay-test")
        client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
        client.create_registered_model("relay-demo")
        run = client.create_run(client.create_experiment(f"relay-{uuid.uuid4().hex[:6]}"))
        version = client.create_model_version(
            "relay-demo", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
        )
        client.set_registered_model_alias("relay-demo", "candidate", version.version)
        counts = app.state.relay.counts
        deadline = time.monotonic() + 30
        while not counts.get("started") and time.monotonic() < deadline:
            time.sleep(0.2)
    assert created, f"the Argo stand-in received nothing; relay answered {counts}"
    workflow = created[0]["workflow"]
    assert workflow["spec"]["workflowTemplateRef"]["name"] == "progressive-delivery"
    parameters = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    assert parameters == {"model-name": "relay-demo", "model-version": version.version}
    assert counts.get("started") == 1


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_replay_after_a_restart_is_refused(kind: str, tmp_path: Any) -> None:
    """The delivery ids outlive the relay process (kpigate/relay/deliveries.py); before, a
    captured delivery replayed within the tolerance after a restart started a second rollout."""
    from kpigate.relay.deliveries import DeliveryStore
    from kpigate.serve.predlog import make_engine
    from tests.serve_fixtures import postgres_or_skip

    url = postgres_or_skip() if kind == "postgres" else f"sqlite:///{tmp_path / 'relay.db'}"
    prefix = f"d{uuid.uuid4().hex[:10]}_"
    settings = RelaySettings(secret=SECRET, models=frozenset({"fraud"}))
    approve = event("model_version_alias", "created", name="fraud", version="7", alias="candidate")
    stamp = time.time()
    answers = []
    triggers = []
    stores = []
    try:
        for _ in range(2):  # the relay, then the relay restarted on the same store
            store = DeliveryStore(make_engine(url), settings.keep_deliveries_s, prefix)
            stores.append(store)
            trigger = RecordingTrigger()
            triggers.append(trigger)
            with AppThread(create_relay(settings, trigger, deliveries=store)) as server:
                answers.append(post(server.url, approve, delivery="captured-1", timestamp=stamp))
    finally:
        if kind == "postgres":
            stores[0].metadata.drop_all(stores[0].engine)
    assert [a.json()["status"] for a in answers] == ["started", "duplicate"]
    assert (triggers[0].started, triggers[1].started) == ([("fraud", "7")], [])


def test_a_failed_start_releases_the_delivery_for_the_retry(tmp_path: Any) -> None:
    from kpigate.relay.deliveries import DeliveryStore
    from kpigate.serve.predlog import make_engine

    store = DeliveryStore(make_engine(f"sqlite:///{tmp_path / 'relay.db'}"), 660.0)
    trigger = RecordingTrigger(fail=True)
    approve = event("model_version_alias", "created", name="fraud", version="8", alias="candidate")
    with AppThread(create_relay(RelaySettings(secret=SECRET), trigger, deliveries=store)) as srv:
        assert post(srv.url, approve, delivery="d-8").status_code == 502
        trigger.fail = False
        assert post(srv.url, approve, delivery="d-8").json()["status"] == "started"
        assert post(srv.url, approve, delivery="d-8").json()["status"] == "duplicate"


def test_an_oversized_chunked_body_is_refused_without_reading_it_all(
    relay: tuple[str, RecordingTrigger],
) -> None:
    """A chunked body (no Content-Length) of up to 300 MB: the relay answers 413 and closes
    the connection after its 64 KiB limit; before, it read all of it (622 MB resident)."""
    import select
    import socket

    url, _ = relay
    host, port = url.removeprefix("http://").split(":")
    chunk = b"10000\r\n" + b"x" * 65536 + b"\r\n"
    sent, answer = 0, b""
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: relay\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        try:
            while sent < 300 * 1024 * 1024:
                if select.select([sock], [], [], 0)[0]:
                    break
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the relay closed the connection: it stopped reading
        answer = sock.recv(1000)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"connection: close" in answer.lower()
    assert sent < 50 * 1024 * 1024, f"sent {sent} bytes before the relay refused"


def test_deep_nesting_is_refused_with_400(relay: tuple[str, RecordingTrigger]) -> None:
    url, _ = relay
    assert post(url, "[" * 20_000 + "]" * 20_000).status_code == 400

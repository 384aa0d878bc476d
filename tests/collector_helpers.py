"""A collector (`kpigate collect`) on uvicorn on loopback, and payload-log events built with the
official CloudEvents SDK (cloudevents.core) in the binary HTTP mode the loggers use.

KServe events follow kserve/kserve pkg/logger/worker.go (and handler.go: one ce-id for the
request and its response); Seldon events follow SeldonIO/seldon-core v1.17.1
executor/logger/worker.go (a fresh ce-id per event, the pair joined by ce-requestid).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from dataclasses import replace
from typing import Any

import httpx
import uvicorn
from cloudevents.core.bindings.http import to_binary
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from kpigate.collector.app import create_app
from kpigate.collector.config import ArmRule, CollectorConfig
from kpigate.serve.limits import header_timeout_protocol
from tests.serve_fixtures import free_port

KSERVE_ARMS = (
    ArmRule("baseline", "2", equals=(("endpoint", "default"),)),
    ArmRule("candidate", "3", equals=(("endpoint", "canary"),)),
)
SELDON_ARMS = (
    ArmRule("baseline", "2", equals=(("endpoint", "baseline"),)),
    ArmRule("candidate", "3", equals=(("endpoint", "candidate"),)),
)


class CollectorServer:
    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(config)
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, lifespan="on", log_level="warning",
                http=header_timeout_protocol(config.header_timeout_s),
            )
        )  # fmt: skip
        self.thread = threading.Thread(target=self.server.run, name="collector", daemon=True)

    def start(self) -> CollectorServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"collector did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10)


def collector_config(backend: str, db_url: str, prefix: str, **kw: Any) -> CollectorConfig:
    arms = KSERVE_ARMS if backend == "kserve" else SELDON_ARMS
    return replace(
        CollectorConfig(), backend=backend, arms=arms, db_url=db_url, table_prefix=prefix, **kw
    )


def _stamp(at: float | None) -> dt.datetime:
    return dt.datetime.fromtimestamp(time.time() if at is None else at, dt.UTC)


def kserve_event(
    kind: str, ce_id: str, data: dict[str, Any], endpoint: str = "default",
    at: float | None = None, isvc: str = "fraud",
) -> tuple[dict[str, str], bytes]:  # fmt: skip
    """Headers and body of one KServe logger event (worker.go sendHttpCloudEvent)."""
    attributes = {
        "specversion": "1.0",
        "id": ce_id,
        "type": f"org.kubeflow.serving.inference.{kind}",
        "source": f"http://{isvc}-predictor-00002-deployment-7c9d/",
        "time": _stamp(at),
        "recordedtime": _stamp(None),
        "inferenceservicename": isvc,
        "namespace": "models",
        "component": "predictor",
        "endpoint": endpoint,
        "metadata": "{}",
        "datacontenttype": "application/json",
    }
    message = to_binary(CloudEvent(attributes, data), JSONFormat())
    return dict(message.headers), message.body


def seldon_event(
    kind: str, puid: str, data: dict[str, Any], predictor: str = "baseline",
    at: float | None = None, sdep: str = "fraud",
) -> tuple[dict[str, str], bytes]:  # fmt: skip
    """Headers and body of one Seldon Core v1 executor logger event (worker.go sendCloudEvent)."""
    attributes = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),  # a fresh id per event (predictor_process.go logPayload)
        "type": f"io.seldon.serving.inference.{kind}",
        "source": f"http://0.0.0.0:8000/{predictor}",
        "time": _stamp(at),
        "modelid": "classifier",
        "requestid": puid,
        "inferenceservicename": sdep,
        "namespace": "models",
        "endpoint": predictor,
        "protocol": "v2",
        "datacontenttype": "application/json",
    }
    message = to_binary(CloudEvent(attributes, data), JSONFormat())
    return dict(message.headers), message.body


def post(client: httpx.Client, event: tuple[dict[str, str], bytes]) -> httpx.Response:
    headers, body = event
    return client.post("/", headers=headers, content=body)

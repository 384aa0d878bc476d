"""Receive MLflow registry webhooks, verify them, and start one rollout per approved version.

Events that start a rollout (MLflow >= 3.3 webhooks):
  model_version_alias.created  when the alias is the trigger alias (default `candidate`)
  model_version_tag.set        when the tag is kpigate.approved=true
Every request is checked in this order: size (413), signature and timestamp (401), JSON (400),
replayed delivery id (200, "duplicate", nothing started), known model (422), event kind (202,
"ignored"); then the trigger starts the rollout (202, "started") or fails (502). A version
already started is not started again ("already started").

MLflow refuses http and private-IP webhook targets (such as this relay on loopback or in a
cluster) unless its server runs with MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https and
MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kpigate.registry.base import APPROVAL_TAG, CANDIDATE
from kpigate.relay.signature import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    DeliveryLog,
    Refused,
    verify,
)
from kpigate.relay.triggers.base import Trigger, TriggerError

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 64 * 1024
WEBHOOK_PATH = "/webhooks/mlflow"


@dataclass
class RelaySettings:
    secret: str
    trigger_alias: str = CANDIDATE
    models: frozenset[str] = frozenset()  # empty: any model
    tolerance_s: float = 300.0


@dataclass
class RelayState:
    deliveries: DeliveryLog = field(default_factory=DeliveryLog)
    started: dict[tuple[str, str], str] = field(default_factory=dict)
    # One start at a time, so two deliveries for one version can never start two rollouts.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1


def wanted(event: dict[str, Any], alias: str) -> tuple[str, str] | str:
    """(model, version) when this event should start a rollout, else why it is ignored."""
    kind = f"{event.get('entity')}.{event.get('action')}"
    data = event.get("data")
    if not isinstance(data, dict) or not data.get("name") or not data.get("version"):
        return f"{kind}: no model name and version in data"
    model = (str(data["name"]), str(data["version"]))
    if kind == "model_version_alias.created":
        return (
            model if data.get("alias") == alias else f"alias {data.get('alias')!r} is not {alias!r}"
        )
    if kind == "model_version_tag.set":
        if data.get("key") == APPROVAL_TAG and str(data.get("value")).lower() == "true":
            return model
        return f"tag {data.get('key')!r}={data.get('value')!r} does not approve"
    return f"event {kind} does not start rollouts"


def _answer(state: RelayState, status: int, body: dict[str, Any]) -> JSONResponse:
    state.count(str(body.get("status", status)))
    return JSONResponse(body, status_code=status)


def create_relay(
    settings: RelaySettings, trigger: Trigger, secret: Callable[[], str] | None = None
) -> Starlette:
    """`secret` (optional) re-reads the secret per request, for a rotated mounted file."""
    state = RelayState()

    async def webhook(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return _answer(state, 413, {"status": "refused", "error": "body too large"})
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _answer(state, 413, {"status": "refused", "error": "body too large"})
        payload = body.decode("utf-8", errors="replace")
        delivery = request.headers.get(DELIVERY_HEADER)
        try:
            verify(
                secret() if secret else settings.secret,
                request.headers.get(SIGNATURE_HEADER),
                delivery,
                request.headers.get(TIMESTAMP_HEADER),
                payload,
                settings.tolerance_s,
            )
        except Refused as exc:
            log.warning("refused webhook: %s", exc)
            return _answer(state, exc.status, {"status": "refused", "error": str(exc)})
        try:
            event = json.loads(payload)
        except json.JSONDecodeError:
            return _answer(state, 400, {"status": "refused", "error": "body is not JSON"})
        if not isinstance(event, dict):
            return _answer(state, 400, {"status": "refused", "error": "body is not an object"})
        assert delivery is not None  # verify() refused it otherwise
        if state.deliveries.seen(delivery):
            return _answer(state, 200, {"status": "duplicate", "delivery": delivery})
        response = await _act(event, delivery)
        if response.status_code != 502:
            state.deliveries.remember(delivery)
        return response

    async def _act(event: dict[str, Any], delivery: str) -> JSONResponse:
        target = wanted(event, settings.trigger_alias)
        if isinstance(target, str):
            return _answer(state, 202, {"status": "ignored", "reason": target})
        model, version = target
        if settings.models and model not in settings.models:
            return _answer(state, 422, {"status": "refused", "error": f"unknown model {model!r}"})
        async with state.lock:
            if (model, version) in state.started:
                started = state.started[(model, version)]
                return _answer(state, 200, {"status": "already started", "rollout": started})
            try:
                rollout = await run_in_threadpool(trigger.start, model, version)
            except TriggerError as exc:
                return _answer(state, 502, {"status": "failed", "error": str(exc)})
            except Exception as exc:  # a trigger bug must not look like success, nor crash
                log.exception("trigger %s failed", trigger.name)
                return _answer(state, 502, {"status": "failed", "error": repr(exc)})
            state.started[(model, version)] = rollout
        log.info("started the rollout of %s version %s: %s", model, version, rollout)
        return _answer(
            state,
            202,
            {
                "status": "started",
                "model": model,
                "version": version,
                "rollout": rollout,
                "trigger": trigger.name,
            },
        )

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "requests": state.counts})

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(OPENAPI)

    app = Starlette(
        routes=[
            Route(WEBHOOK_PATH, webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ]
    )
    app.state.relay = state
    return app


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "kpigate relay", "version": "1"},
    "paths": {
        WEBHOOK_PATH: {
            "post": {
                "summary": "An MLflow registry webhook delivery",
                "parameters": [
                    {"name": h, "in": "header", "required": False, "schema": {"type": "string"}}
                    for h in (SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_HEADER)
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "entity": {"type": "string"},
                                    "action": {"type": "string"},
                                    "timestamp": {"type": "string"},
                                    "data": {"type": "object"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    code: {"description": text}
                    for code, text in (
                        ("200", "duplicate delivery or version already started"),
                        ("202", "rollout started, or event ignored"),
                        ("400", "body is not a JSON object"),
                        ("401", "missing or wrong signature, or stale timestamp"),
                        ("413", "body too large"),
                        ("422", "unknown model"),
                        ("502", "the rollout could not be started"),
                    )
                },
            }
        },
        "/healthz": {"get": {"responses": {"200": {"description": "counts of answers"}}}},
    },
}

"""Receive MLflow registry webhooks, verify them, and start one rollout per approved version.

Events that start a rollout (MLflow >= 3.3 webhooks):
  model_version_alias.created  when the alias is the trigger alias (default `candidate`)
  model_version_tag.set        when the tag is kpigate.approved=true
Every request is checked in this order: size (413; the body is read in capped chunks within a
timeout, 408), signature and timestamp (401), JSON and its nesting (400), replayed delivery id
(200, "duplicate", nothing started; the ids are persisted, kpigate/relay/deliveries.py, so a
replay after a restart is refused too), known model (422), event kind (202, "ignored"); then the
trigger starts the rollout (202, "started") or fails (502). A version already started is not
started again ("already started").

MLflow refuses http and private-IP webhook targets (such as this relay on loopback or in a
cluster) unless its server runs with MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https and
MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true.
"""

from __future__ import annotations

import asyncio
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
from kpigate.relay.deliveries import DELIVERY_ID_MAX, DeliveryStore
from kpigate.relay.signature import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Refused,
    verify,
)
from kpigate.relay.triggers.base import Trigger, TriggerError
from kpigate.serve.limits import BodyError, parse_json, read_body

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 64 * 1024
BODY_TIMEOUT_S = 10.0
MAX_JSON_DEPTH = 32
WEBHOOK_PATH = "/webhooks/mlflow"


@dataclass
class RelaySettings:
    secret: str
    trigger_alias: str = CANDIDATE
    models: frozenset[str] = frozenset()  # empty: any model
    tolerance_s: float = 300.0
    max_body_bytes: int = MAX_BODY_BYTES
    body_timeout_s: float = BODY_TIMEOUT_S

    @property
    def keep_deliveries_s(self) -> float:
        """Past the tolerance a replay fails the timestamp check; a margin for clock skew."""
        return 2 * self.tolerance_s + 60.0


@dataclass
class RelayState:
    deliveries: DeliveryStore
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
    settings: RelaySettings,
    trigger: Trigger,
    secret: Callable[[], str] | None = None,
    deliveries: DeliveryStore | None = None,
) -> Starlette:
    """`secret` (optional) re-reads the secret per request, for a rotated mounted file.
    `deliveries` persists the delivery ids (default: in memory, for tests and embedding)."""
    state = RelayState(deliveries or DeliveryStore.in_memory(settings.keep_deliveries_s))

    async def webhook(request: Request) -> JSONResponse:
        try:
            body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
        except BodyError as exc:
            error = "body too large" if exc.status == 413 else exc.message
            refused = _answer(state, exc.status, {"status": "refused", "error": error})
            # Close: the rest of the body is never read (uvicorn would read it to keep alive).
            refused.headers["Connection"] = "close"
            return refused
        payload = body.decode("utf-8", errors="replace")
        delivery = request.headers.get(DELIVERY_HEADER)
        if delivery is not None and len(delivery) > DELIVERY_ID_MAX:
            return _answer(state, 401, {"status": "refused", "error": "delivery id too long"})
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
            event = parse_json(payload.encode("utf-8"), MAX_JSON_DEPTH)
        except BodyError as exc:
            error = "body is not JSON" if "not valid JSON" in exc.message else exc.message
            return _answer(state, 400, {"status": "refused", "error": error})
        if not isinstance(event, dict):
            return _answer(state, 400, {"status": "refused", "error": "body is not an object"})
        assert delivery is not None  # verify() refused it otherwise
        try:
            first = await run_in_threadpool(state.deliveries.claim, delivery)
        except Exception as exc:  # the store is down: refuse, MLflow retries later
            log.error("delivery store unavailable: %s: %s", type(exc).__name__, exc)
            return _answer(state, 503, {"status": "failed", "error": "delivery store unavailable"})
        if not first:
            return _answer(state, 200, {"status": "duplicate", "delivery": delivery})
        response = await _act(event, delivery)
        if response.status_code == 502:  # not started: MLflow's retry must go through
            await run_in_threadpool(state.deliveries.release, delivery)
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
                        ("408", "body not received within the timeout"),
                        ("413", "body too large"),
                        ("422", "unknown model"),
                        ("502", "the rollout could not be started"),
                        ("503", "the delivery store is unavailable"),
                    )
                },
            }
        },
        "/healthz": {"get": {"responses": {"200": {"description": "counts of answers"}}}},
    },
}

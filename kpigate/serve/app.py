"""Builds the router's Starlette app: /predict, /feedback, admin, metrics, health and OpenAPI."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kpigate.serve.admin import admin_routes
from kpigate.serve.config import ServeConfig, late_label_cutoff_s
from kpigate.serve.feedback import FeedbackJoiner, parse_items
from kpigate.serve.instances import InstanceError, parse_instance
from kpigate.serve.loader import MlflowAliasLoader, ModelLoader
from kpigate.serve.maturity import MaturityJob
from kpigate.serve.metrics import RouterMetrics
from kpigate.serve.openapi import build_openapi
from kpigate.serve.predlog import PredictionLog, Tables, make_engine
from kpigate.serve.router import BaselineError, RouterCore

log = logging.getLogger(__name__)


def _maturity_job(
    config: ServeConfig, predlog: PredictionLog, metrics: RouterMetrics
) -> MaturityJob | None:
    if config.label_horizon_s is None:
        return None
    metrics.label_horizon.set(config.label_horizon_s)
    return MaturityJob(
        predlog.engine,
        predlog.tables,
        config.label_horizon_s,
        metrics.count_matured,
        interval_s=config.maturity_interval_s,
    )


def create_app(config: ServeConfig, loader: ModelLoader | None = None) -> Starlette:
    """The router as an ASGI app. Models load at startup (lifespan), through `loader` or, by
    default, from the MLflow registry by the aliases in `config`."""
    metrics = RouterMetrics()
    predlog = PredictionLog(
        make_engine(config.db_url),
        Tables(config.table_prefix),
        batch_rows=config.log_batch_rows,
        flush_interval_s=config.log_flush_interval_s,
        max_buffer_rows=config.log_max_buffer_rows,
        on_written=metrics.log_written.inc,
        on_dropped=metrics.log_dropped.inc,
    )
    core = RouterCore(
        config,
        loader or MlflowAliasLoader(config.model_name, config.tracking_uri),
        metrics,
        predlog,
    )
    joiner = FeedbackJoiner(predlog, late_label_cutoff_s(config))
    maturity = _maturity_job(config, predlog, metrics)
    invalid_predict = metrics.invalid.labels("/predict")
    invalid_feedback = metrics.invalid.labels("/feedback")

    def refuse(status: int, counter: Any, body: dict[str, Any]) -> JSONResponse:
        counter.inc()
        return JSONResponse(body, status_code=status)

    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        try:
            payload = json.loads(await request.body())
        except ValueError:
            return refuse(400, invalid_predict, {"error": "request body is not valid JSON"})
        batch = isinstance(payload, dict) and "instances" in payload
        try:
            if batch:
                raw = payload["instances"]
                if len(payload) != 1 or not isinstance(raw, list) or not raw:
                    raise InstanceError(
                        "instances", 'send {"instances": [obj, ...]} with at least one object'
                    )
                instances = [parse_instance(obj, i) for i, obj in enumerate(raw)]
            else:
                instances = [parse_instance(payload)]
        except InstanceError as exc:
            return refuse(422, invalid_predict, exc.as_dict())
        try:
            if not batch:
                return JSONResponse(await core.predict(instances[0], started))
            answers = await asyncio.gather(*(core.predict(i, started) for i in instances))
        except BaselineError as exc:
            return JSONResponse({"error": str(exc)}, status_code=500)
        return JSONResponse({"predictions": answers})

    async def feedback(request: Request) -> Response:
        try:
            items = parse_items(json.loads(await request.body()))
        except ValueError as exc:
            return refuse(422, invalid_feedback, {"error": f"invalid feedback body: {exc}"})
        try:
            report = await run_in_threadpool(joiner.join, items, time.time())
        except Exception as exc:
            log.exception("feedback join failed")
            return JSONResponse(
                {"error": f"could not join labels (nothing was counted): {exc}"}, status_code=503
            )
        for row, label, lag in report.joined_rows:
            metrics.count_outcome(row, label, lag)
        for result in ("joined", "unknown", "duplicate", "invalid", "late"):
            if n := getattr(report, result):
                metrics.feedback.labels(result).inc(n)
        return JSONResponse(report.as_dict())

    async def metrics_endpoint(request: Request) -> Response:
        metrics.log_pending.set(predlog.pending)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        problems = []
        if core.baseline is None:
            problems.append("baseline model not loaded")
        if not predlog.alive:
            problems.append("prediction log writer not running")
        if predlog.last_error:
            problems.append(f"prediction log cannot write: {predlog.last_error}")
        body: dict[str, Any] = {"ready": not problems, "problems": problems}
        if core.candidate is None and core.candidate_error:
            body["candidate"] = core.candidate_error
        return JSONResponse(body, status_code=200 if not problems else 503)

    openapi = build_openapi()

    async def openapi_endpoint(request: Request) -> Response:
        return JSONResponse(openapi)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(core.start)
        if maturity is not None:
            await run_in_threadpool(maturity.start)
        # Models, MLflow and pandas leave ~10^6 long-lived objects; a full GC pass over them
        # stalls every in-flight request for tens of ms. Freezing moves them out of the GC's way.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if maturity is not None:
                await run_in_threadpool(maturity.stop)
            await core.close()

    routes = [
        Route("/predict", predict, methods=["POST"]),
        Route("/feedback", feedback, methods=["POST"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint, methods=["GET"]),
        *admin_routes(core),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.core = core
    return app

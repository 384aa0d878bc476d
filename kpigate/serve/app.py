"""Builds the router's Starlette app: /predict, /feedback, admin, metrics, health and OpenAPI."""

from __future__ import annotations

import asyncio
import contextlib
import gc
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
from kpigate.serve.feedback import FeedbackJoiner, FeedbackReport, parse_items
from kpigate.serve.health import DatabaseProbe
from kpigate.serve.instances import Instance, InstanceError
from kpigate.serve.limits import BodyError, read_json
from kpigate.serve.loader import MlflowAliasLoader, ModelLoader
from kpigate.serve.maturity import MaturityJob
from kpigate.serve.metrics import FEEDBACK_RESULTS, RouterMetrics
from kpigate.serve.openapi import build_openapi
from kpigate.serve.predlog import (
    DatabaseTimeouts,
    LogUnavailable,
    PredictionLog,
    RowRefused,
    Tables,
    make_engine,
    redacted,
)
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
    timeouts = DatabaseTimeouts(config.db_connect_timeout_s, config.db_statement_timeout_s)
    predlog = PredictionLog(
        make_engine(config.db_url, timeouts),
        Tables(config.table_prefix),
        max_batch_rows=config.log_max_batch_rows,
        max_pending_rows=config.log_max_pending_rows,
        inline_rows=config.log_inline_rows,
        in_flight=lambda: core.in_flight,
        on_written=metrics.committed,
        on_dropped=lambda reason, n: metrics.log_dropped.labels(reason).inc(n),
        on_shadow_labeled=lambda row, label: metrics.count_outcome(row, label, None),
    )
    core = RouterCore(
        config,
        loader or MlflowAliasLoader(config.model_name, config.tracking_uri),
        metrics,
        predlog,
    )
    joiner = FeedbackJoiner(predlog, late_label_cutoff_s(config))
    maturity = _maturity_job(config, predlog, metrics)
    probe = DatabaseProbe(predlog.engine, config.db_statement_timeout_s)
    invalid_predict = metrics.invalid.labels("/predict")
    invalid_feedback = metrics.invalid.labels("/feedback")

    def refuse(status: int, counter: Any, body: dict[str, Any]) -> JSONResponse:
        counter.inc()
        # After a body that was too big or too slow, close: its rest is never read.
        close = {"Connection": "close"} if status in (408, 413) else None
        return JSONResponse(body, status_code=status, headers=close)

    async def body_of(request: Request) -> Any:
        return await read_json(
            request, config.max_body_bytes, config.body_timeout_s, config.max_json_depth
        )

    def parse(obj: Any, index: int | None = None) -> Instance:
        if core.parser is None:
            raise InstanceError("(instance)", "the router has not finished starting")
        return core.parser.parse(obj, index)

    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        try:
            payload = await body_of(request)
        except BodyError as exc:
            return refuse(exc.status, invalid_predict, {"error": exc.message})
        batch = isinstance(payload, dict) and "instances" in payload
        try:
            if batch:
                raw = payload["instances"]
                if len(payload) != 1 or not isinstance(raw, list) or not raw:
                    raise InstanceError(
                        "instances", 'send {"instances": [obj, ...]} with at least one object'
                    )
                if len(raw) > config.max_instances:
                    return refuse(413, invalid_predict, {
                        "error": f"{len(raw)} instances is more than the limit of "
                        f"{config.max_instances} per request: split the batch",
                        "field": "instances",
                    })  # fmt: skip
                instances = [parse(obj, i) for i, obj in enumerate(raw)]
            else:
                instances = [parse(payload)]
        except InstanceError as exc:
            return refuse(422, invalid_predict, exc.as_dict())
        try:
            if not batch:
                return JSONResponse(await core.predict(instances[0], started))
            answers = await asyncio.gather(*(core.predict(i, started) for i in instances))
        except BaselineError as exc:
            return JSONResponse({"error": str(exc)}, status_code=500)
        except LogUnavailable as exc:
            metrics.log_unavailable.inc()
            message = f"not answered: the prediction log is unavailable ({exc}); retry"
            return JSONResponse({"error": message}, status_code=503)
        except RowRefused:
            message = "not answered: the prediction log refused this request's row (logged)"
            return JSONResponse({"error": message}, status_code=500)
        return JSONResponse({"predictions": answers})

    async def feedback(request: Request) -> Response:
        try:
            items = parse_items(await body_of(request))
        except BodyError as exc:
            return refuse(exc.status, invalid_feedback, {"error": exc.message})
        except ValueError as exc:
            return refuse(422, invalid_feedback, {"error": f"invalid feedback body: {exc}"})
        if len(items) > config.max_instances:
            return refuse(413, invalid_feedback, {
                "error": f"{len(items)} labels is more than the limit of {config.max_instances} "
                "per request: split them",
            })  # fmt: skip
        join = asyncio.ensure_future(run_in_threadpool(joiner.join, items, time.time()))
        try:
            report = await asyncio.wait_for(
                asyncio.shield(join), config.db_statement_timeout_s + config.db_connect_timeout_s
            )
        except TimeoutError:
            # The join goes on in its thread and may still commit: its labels are counted
            # when it does (never twice), and a re-sent label then answers "duplicate".
            join.add_done_callback(count_late_join)
            log.error("feedback join slower than the database timeouts; still running")
            return JSONResponse(
                {"error": "could not join labels in time: the prediction log is slow; send "
                 "them again (those that joined meanwhile answer duplicate)"},
                status_code=503,
            )  # fmt: skip
        except Exception as exc:
            # The details (which may hold SQL and values) go to the log, redacted; the answer
            # says only what happened.
            log.error("feedback join failed: %s", redacted(exc))
            return JSONResponse(
                {"error": "could not join labels: the prediction log is unavailable; nothing "
                 "was counted, send them again"},
                status_code=503,
            )  # fmt: skip
        count_joined(report)
        return JSONResponse(report.as_dict())

    def count_joined(report: FeedbackReport) -> None:
        for row, label, lag in report.joined_rows:
            metrics.count_outcome(row, label, lag)
        for result in FEEDBACK_RESULTS:
            if n := getattr(report, result):
                metrics.feedback.labels(result).inc(n)

    def count_late_join(join: asyncio.Future[FeedbackReport]) -> None:
        if join.cancelled() or join.exception() is not None:
            return  # rolled back: nothing was joined
        count_joined(join.result())

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
            problems.append("prediction log cannot write (see the router's log)")
        stuck = predlog.busy_since
        if stuck is not None and time.monotonic() - stuck > config.db_statement_timeout_s:
            problems.append("prediction log commit pending longer than the statement timeout")
        if problem := await probe.check():
            problems.append(problem)
        body: dict[str, Any] = {"ready": not problems, "problems": problems}
        if core.candidate is None and core.candidate_error:
            body["candidate"] = core.candidate_error
        return JSONResponse(body, status_code=200 if not problems else 503)

    documents: dict[Any, dict[str, Any]] = {}

    async def openapi_endpoint(request: Request) -> Response:
        # Derived from the schema being served; rebuilt when a reload changes it.
        schema = core.schema
        if schema not in documents:
            documents.clear()
            documents[schema] = build_openapi(schema)
        return JSONResponse(documents[schema])

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
        *admin_routes(core, body_of),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.core = core
    return app

"""The collector's Starlette app: payload-log events in, the prediction log and its counters out.

POST / takes the binary-mode CloudEvents of one backend's payload logger (kserve.py, seldon.py);
a request and its response, in either order, become one logged prediction per instance, written
through the prediction log's writer (kpigate/serve/predlog.py) and counted in
kpigate_decisions_total. POST /feedback joins labels with the router's joiner
(kpigate/serve/feedback.py) and parks those whose prediction has not landed yet. GET /metrics
exports the router's metric names (kpigate/serve/metrics.py), so every metrics source reads a
KServe or Seldon rollout as it reads the router's. Pairing and parking are serialised in one
process: run one collector per prediction log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kpigate.collector import payloads
from kpigate.collector.config import BACKENDS, CollectorConfig
from kpigate.collector.entities import keyed
from kpigate.collector.events import (
    EventError,
    LoggedEvent,
    attributes_of,
    event_time,
    json_body,
    pair_key,
)
from kpigate.collector.ids import log_id, prediction_names
from kpigate.collector.labels import LabelDesk
from kpigate.collector.store import CollectorTables, PairStore
from kpigate.serve.feedback import FeedbackJoiner, FeedbackReport, parse_items
from kpigate.serve.health import DatabaseProbe
from kpigate.serve.limits import BodyError, read_body, read_json
from kpigate.serve.maturity import MaturityJob
from kpigate.serve.metrics import FEEDBACK_RESULTS, RouterMetrics
from kpigate.serve.predlog import (
    DatabaseTimeouts,
    LogUnavailable,
    PredictionLog,
    RowRefused,
    Tables,
    make_engine,
    redacted,
)

log = logging.getLogger(__name__)

EVENT_RESULTS = ("stored", "logged", "duplicate", "invalid", "skipped", "unavailable")


class CollectorMetrics:
    """The router's metrics plus the collector's own, in one registry."""

    def __init__(self, backend: str) -> None:
        self.router = RouterMetrics()
        r = self.router.registry
        self.events = Counter(
            "kpigate_collector_events_total",
            "Payload-log events received per backend, kind (request|response) and result: "
            "stored (waits for its pair), logged (completed its pair), duplicate, invalid, "
            "skipped, unavailable.",
            ["backend", "kind", "result"], registry=r,
        )  # fmt: skip
        self.waiting_pairs = Gauge(
            "kpigate_collector_waiting_pairs",
            "Logged requests or responses still waiting for their other half.", registry=r,
        )  # fmt: skip
        self.parked_labels = Gauge(
            "kpigate_collector_parked_labels",
            "Labels received before their prediction was logged, waiting for it.", registry=r,
        )  # fmt: skip
        self.labels_dropped = Counter(
            "kpigate_collector_labels_dropped_total",
            "Labels for predictions not logged yet that were not parked: the collector held "
            "--max-parked-labels already (they were answered unknown).", registry=r,
        )  # fmt: skip
        self.pairs_pruned = Counter(
            "kpigate_collector_pairs_pruned_total",
            "Pair rows deleted after --pair-retention: landed (its predictions are logged) or "
            "unpaired (a lone request or response whose other half never came).",
            ["state"], registry=r,
        )  # fmt: skip
        for state in ("landed", "unpaired"):
            self.pairs_pruned.labels(state)
        # The router's routing gauges would claim a weight and a state the collector has no
        # view of: left out. (Labelled series without children export nothing.)
        for gauge in (self.router.weight, self.router.state_version):
            r.unregister(gauge)
        self.backend = backend
        for kind in ("request", "response"):
            for result in EVENT_RESULTS:
                self.events.labels(backend, kind, result)
        self.router.feedback.labels("pending")

    def event(self, kind: str, result: str) -> None:
        self.events.labels(self.backend, kind, result).inc()


def create_app(config: CollectorConfig) -> Starlette:
    backend = BACKENDS[config.backend]
    metrics = CollectorMetrics(config.backend)
    m = metrics.router
    timeouts = DatabaseTimeouts(config.db_connect_timeout_s, config.db_statement_timeout_s)
    predlog = PredictionLog(
        make_engine(config.db_url, timeouts),
        Tables(config.table_prefix),
        on_written=m.committed,
        on_dropped=lambda reason, n: m.log_dropped.labels(reason).inc(n),
        # A shadow copy landing after its served request was labelled is labelled on insert.
        on_shadow_labeled=lambda row, label: m.count_outcome(row, label, None),
    )
    lock = predlog.write_lock if predlog.is_sqlite else contextlib.nullcontext()
    tables = CollectorTables(config.table_prefix)
    store = PairStore(predlog.engine, tables, predlog.tables.predictions, lock)
    cutoff = config.label_window_s if config.label_horizon_s is None else config.label_horizon_s
    desk = LabelDesk(FeedbackJoiner(predlog, cutoff), store, cutoff, config.max_parked_labels)
    maturity = None
    if config.label_horizon_s is not None:
        m.label_horizon.set(config.label_horizon_s)
        maturity = MaturityJob(
            predlog.engine, predlog.tables, config.label_horizon_s, m.count_matured,
            interval_s=config.maturity_interval_s,
        )  # fmt: skip
    for rule in config.arms:
        m.model_info.labels(rule.arm, rule.version).set(1)
    probe = DatabaseProbe(predlog.engine, config.db_statement_timeout_s)
    # Pairing, landing and parking run one at a time, so a label is either joined by
    # /feedback or parked before its prediction lands and joined then: never lost.
    pairing = asyncio.Lock()
    invalid_feedback = m.invalid.labels("/feedback")

    def count_labels(report: FeedbackReport, pending: int = 0) -> None:
        for row, label, lag in report.joined_rows:
            m.count_outcome(row, label, lag)
        for result in FEEDBACK_RESULTS:
            if n := getattr(report, result):
                m.feedback.labels(result).inc(n)
        if pending:
            m.feedback.labels("pending").inc(pending)

    def half_of(request: Request, attributes: dict[str, str], body: bytes) -> LoggedEvent | None:
        kind, pair = backend.kind_and_pair(attributes)
        if kind is None:
            return None
        data = json_body(body, request.headers.get("content-type", ""), config.max_json_depth)
        now = time.time()
        # Check this half on its own now: a bad half is refused, never stored.
        rule = config.arm_of(attributes)
        event = LoggedEvent(
            config.backend, kind, pair_key(pair), attributes,
            event_time(attributes, now, config.future_skew_s), data, rule.shadow,
        )  # fmt: skip
        if kind == "request":
            for i, instance in enumerate(payloads.instances(data)):
                keyed(instance, i, "-")
        else:
            payloads.scores(data, config.score_output)
        return event

    def rows_of(request: LoggedEvent, response: LoggedEvent, now: float) -> list[dict[str, Any]]:
        rule = config.arm_of(request.attributes)
        if config.arm_of(response.attributes) is not rule:
            raise EventError(422, "the request and its response come from different arms")
        instances = payloads.instances(request.body)
        scores = payloads.scores(response.body, config.score_output)
        if len(instances) != len(scores):
            raise EventError(
                422, f"{len(instances)} instances but {len(scores)} scores in the response"
            )
        created = request.time if request.time is not None else (response.time or now)
        latency_ms = 0.0
        if request.time is not None and response.time is not None:
            latency_ms = max(response.time - request.time, 0.0) * 1000.0
        rows = []
        for i, (name, instance, score) in enumerate(
            zip(prediction_names(request.pair_id, len(scores)), instances, scores, strict=True)
        ):
            rid = log_id(name)
            k = keyed(instance, i, rid)
            rows.append({
                "request_id": rid, "entity_key": k.entity_key, "model_version": rule.version,
                "arm": rule.arm, "shadow": rule.shadow, "fallback": False, "score": score,
                "decision": "decline" if score >= rule.threshold else "approve",
                "region": k.region, "payment_method": k.payment_method,
                "amount_band": k.amount_band, "latency_ms": latency_ms, "created_at": created,
            })  # fmt: skip
        return rows

    async def land(request: LoggedEvent, response: LoggedEvent) -> int:
        """Log the pair's predictions (those not logged yet); join labels parked for them."""
        now = time.time()
        rows = rows_of(request, response, now)
        ids = [r["request_id"] for r in rows]
        logged = await run_in_threadpool(store.logged, ids, request.shadow)
        new = [r for r in rows if r["request_id"] not in logged]
        await asyncio.gather(*(predlog.submit(r) for r in new))
        for r in new:
            m.count_decision(r["arm"], r["model_version"], r["decision"], request.shadow)
            if backend.EXACT_TIMES and not request.shadow:
                m.observe_served(r["arm"], r["model_version"], r["latency_ms"] / 1000.0)
        # Labels parked for these ids wait for the served rows: a shadow copy leaves them
        # (joining the served row labels its shadow copies, feedback.py).
        mine = [] if request.shadow else ids
        parked = await run_in_threadpool(store.landed, request.key, len(rows), mine, now)
        if parked:
            count_labels(await run_in_threadpool(desk.joiner.join, parked, time.time()))
        return len(new)

    async def prune() -> None:
        """Delete pair rows past their retention (CollectorConfig.pair_retention_s)."""
        while True:
            await asyncio.sleep(config.prune_interval_s)
            try:
                async with pairing:
                    before = time.time() - config.pair_retention_s
                    landed, unpaired = await run_in_threadpool(store.prune, before)
                metrics.pairs_pruned.labels("landed").inc(landed)
                metrics.pairs_pruned.labels("unpaired").inc(unpaired)
            except Exception as exc:
                log.warning("pruning old pairs failed, will retry: %s", redacted(exc))

    async def reland() -> None:
        """Land the pairs whose landing failed (the log was down): the loggers do not retry."""
        while True:
            await asyncio.sleep(config.reland_interval_s)
            try:
                async with pairing:
                    for request, response in await run_in_threadpool(
                        store.unlanded, config.backend
                    ):
                        try:
                            await land(request, response)
                        except (EventError, RowRefused) as exc:
                            log.error("stored pair %s cannot be logged: %s", request.pair_id, exc)
                            await run_in_threadpool(store.forget, request.key, "response")
            except Exception as exc:
                log.warning("landing stored pairs failed, will retry: %s", redacted(exc))

    async def event_endpoint(request: Request) -> Response:
        kind = "request"
        try:
            attributes = attributes_of(request.headers)
            if "response" in attributes.get("type", ""):
                kind = "response"
            try:
                body = await read_body(request, config.max_body_bytes, config.body_timeout_s)
            except BodyError as exc:
                raise EventError(exc.status, exc.message) from None
            event = half_of(request, attributes, body)
        except EventError as exc:
            metrics.event(kind, "invalid")
            close = {"Connection": "close"} if exc.status in (408, 413) else None
            return JSONResponse({"error": exc.message}, status_code=exc.status, headers=close)
        if event is None:
            metrics.event(kind, "skipped")
            return JSONResponse({"result": "skipped"})
        async with pairing:
            try:
                stored = await run_in_threadpool(store.store, event, time.time())
                if stored.request is None or stored.response is None:
                    result = "duplicate" if stored.duplicate else "stored"
                    metrics.event(kind, result)
                    return JSONResponse({"result": result})
                written = await land(stored.request, stored.response)
            except (EventError, RowRefused) as exc:
                # This half does not fit the stored one: refused, and forgotten.
                await run_in_threadpool(store.forget, event.key, event.kind)
                metrics.event(kind, "invalid")
                message = (
                    exc.message
                    if isinstance(exc, EventError)
                    else "the prediction log refused this prediction's row"
                )
                return JSONResponse({"error": message}, status_code=422)
            except (LogUnavailable, Exception) as exc:
                metrics.event(kind, "unavailable")
                if isinstance(exc, LogUnavailable):
                    m.log_unavailable.inc()
                return JSONResponse(
                    {"error": f"the prediction log is unavailable ({redacted(exc)}): the event "
                     "is kept or not taken; send it again"},
                    status_code=503,
                )  # fmt: skip
        result = "logged" if written or not stored.duplicate else "duplicate"
        metrics.event(kind, result)
        return JSONResponse({"result": result, "predictions": written})

    async def feedback(request: Request) -> Response:
        try:
            payload = await read_json(
                request, config.max_body_bytes, config.body_timeout_s, config.max_json_depth
            )
            items = parse_items(payload)
        except BodyError as exc:
            invalid_feedback.inc()
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        except ValueError as exc:
            invalid_feedback.inc()
            return JSONResponse({"error": f"invalid feedback body: {exc}"}, status_code=422)
        if len(items) > config.max_instances:
            invalid_feedback.inc()
            return JSONResponse(
                {"error": f"{len(items)} labels is more than the limit of "
                 f"{config.max_instances} per request: split them"},
                status_code=413,
            )  # fmt: skip
        async with pairing:
            try:
                report, pending, dropped = await run_in_threadpool(desk.receive, items, time.time())
            except Exception as exc:
                return JSONResponse(
                    {"error": f"could not join labels: the prediction log is unavailable "
                     f"({redacted(exc)}); nothing was counted, send them again"},
                    status_code=503,
                )  # fmt: skip
        count_labels(report, pending)
        metrics.labels_dropped.inc(dropped)
        return JSONResponse({**report.as_dict(), "pending": pending})

    async def metrics_endpoint(request: Request) -> Response:
        m.log_pending.set(predlog.pending)
        with contextlib.suppress(Exception):
            halves, labels = await run_in_threadpool(store.waiting)
            metrics.waiting_pairs.set(halves)
            metrics.parked_labels.set(labels)
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        problems = []
        if not predlog.alive:
            problems.append("prediction log writer not running")
        if predlog.last_error:
            problems.append("prediction log cannot write (see the collector's log)")
        if problem := await probe.check():
            problems.append(problem)
        return JSONResponse(
            {"ready": not problems, "problems": problems}, status_code=503 if problems else 200
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(predlog.start)
        await run_in_threadpool(tables.create, predlog.engine)
        if maturity is not None:
            await run_in_threadpool(maturity.start)
        relander, pruner = asyncio.create_task(reland()), asyncio.create_task(prune())
        try:
            yield
        finally:
            relander.cancel()
            pruner.cancel()
            if maturity is not None:
                await run_in_threadpool(maturity.stop)
            await run_in_threadpool(predlog.close)
            predlog.engine.dispose()

    routes = [
        Route("/", event_endpoint, methods=["POST"]),
        Route("/feedback", feedback, methods=["POST"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)

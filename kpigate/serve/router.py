"""The router's core: two arms, their batchers, the routing state, and the predict path."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from kpigate.serve.config import MODES, ServeConfig
from kpigate.serve.instances import Instance, InstanceParser
from kpigate.serve.loader import AliasNotFoundError, ModelLoader, ModelLoadError, ScoringModel
from kpigate.serve.metrics import RouterMetrics
from kpigate.serve.predlog import SEGMENT_SLOTS, LogUnavailable, PredictionLog, redacted
from kpigate.serve.routing import RoutingState, route
from kpigate.serve.schema import InstanceSchema, SchemaError, parse_segment
from kpigate.serve.scoring import Batcher, ModelStopped
from kpigate.serve.shared import Replica, SavedState, SharedState

log = logging.getLogger(__name__)
T = TypeVar("T")


class BaselineError(RuntimeError):
    """The baseline failed to score: there is nothing to fall back to."""


class StateConflict(RuntimeError):
    """A requested routing change cannot be applied (e.g. no candidate is loaded)."""


@dataclass
class Faults:
    """Injected candidate faults for drills and demos (admin API /admin/faults): extra latency
    before each candidate score, and a share of candidate requests that raise."""

    candidate_delay_ms: float = 0.0
    candidate_error_share: float = 0.0


class RouterCore:
    def __init__(
        self,
        config: ServeConfig,
        loader: ModelLoader,
        metrics: RouterMetrics,
        predlog: PredictionLog,
    ) -> None:
        self.config = config
        self.loader = loader
        self.metrics = metrics
        self.predlog = predlog
        replica_id = config.replica_id or f"{socket.gethostname()}:{os.getpid()}"
        self.shared = SharedState(
            predlog.engine, predlog.tables, replica_id, predlog.write_lock,
            live_after_s=config.replica_live_after_s,
        )  # fmt: skip
        self.state = RoutingState(config.initial_weight, config.initial_mode)
        self.version = 0  # of the shared state, as applied here
        self.reloaded = 0  # the last reload_version applied here
        self.apply_error: str | None = None
        self.baseline: Batcher | None = None
        self.candidate: Batcher | None = None
        # What /predict accepts: the baseline's signature with the configured entity key and
        # segments; the candidate must take the same inputs.
        self.schema: InstanceSchema | None = None
        self.parser: InstanceParser | None = None
        self._segments = tuple(parse_segment(spec) for spec in config.segments)
        self.candidate_error: str | None = None
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._apply_lock = threading.RLock()
        self._stopping = threading.Event()
        self._poller: threading.Thread | None = None
        self.faults = Faults()
        # Predictions being served (the prediction log commits on the loop only when all of
        # them wait for that commit).
        self.in_flight = 0

    # -- lifecycle (blocking; run in a thread) ---------------------------------------------

    def start(self) -> None:
        self.predlog.start()
        saved = self.shared.load()
        if saved is not None:
            self.state = RoutingState(saved.weight, saved.mode, saved.detached)
            self.version, self.reloaded = saved.version, saved.reload_version
            log.info("restored routing state %s (version %d)", self.state, self.version)
        self._load_baseline()
        if not self.state.detached:
            self._load_candidate()
        self._publish()
        self._check_single_replica()
        self.shared.heartbeat(self.version)
        self._poller = threading.Thread(target=self._poll, name="state-poller", daemon=True)
        self._poller.start()

    def _check_single_replica(self) -> None:
        if not self.predlog.is_sqlite:
            return
        others = [r for r in self.shared.live_replicas() if r.replica_id != self.shared.replica_id]
        if others:
            log.error(
                "another router replica (%s) uses this SQLite file: SQLite serves one replica "
                "only; use PostgreSQL (--db-url postgresql+psycopg://...) for several",
                others[0].replica_id,
            )

    def _poll(self) -> None:
        """Apply state changes made through any replica, and keep this replica's heartbeat."""
        while not self._stopping.wait(self.config.state_poll_interval_s):
            try:
                saved = self.shared.load()
                if saved is not None and saved.version > self.version:
                    self._apply(saved)
                self.shared.heartbeat(self.version, self.apply_error)
            except Exception as exc:  # a database blip: try again at the next poll
                log.warning("routing state poll failed: %s", redacted(exc))

    def _apply(self, saved: SavedState) -> None:
        with self._apply_lock:
            if saved.version <= self.version:
                return
            self.apply_error = None
            new = RoutingState(saved.weight, saved.mode, saved.detached)
            if saved.reload_version > self.reloaded:
                self._reload_models(load_candidate=not new.detached)
                self.reloaded = saved.reload_version
            if new.detached:
                self._swap_candidate(None)
            elif new.weight > 0 and self.candidate is None:
                self._load_candidate()
                if self.candidate is None:
                    self.apply_error = f"candidate not loaded: {self.candidate_error}"
            self.state, self.version = new, saved.version
            self._publish()
            log.info("applied routing state %s (version %d)", new, saved.version)

    def refresh(self) -> None:
        """Apply the latest shared state now (before a change, so it builds on the latest)."""
        saved = self.shared.load()
        if saved is not None and saved.version > self.version:
            self._apply(saved)

    def schema_of(self, model: ScoringModel) -> InstanceSchema:
        try:
            return InstanceSchema.build(
                model.inputs, self.config.entity_key, self._segments, self.config.vocabularies
            )
        except SchemaError as exc:
            raise ModelLoadError(f"model version {model.version}: {exc}") from exc

    def _load_baseline(self) -> None:
        """Load the baseline, and with it the schema every request is validated against; a
        candidate that cannot take a changed schema stops being served."""
        model = self._load("baseline")
        schema = self.schema_of(model)
        old, self.baseline = self.baseline, self._batcher(model, "baseline", schema)
        if schema != self.schema:
            self.schema, self.parser = schema, InstanceParser(schema)
            self.metrics.set_segments(schema.segment_names)
            log.info("instance schema: %s", schema.describe())
            if self.candidate is not None and self.candidate.schema != schema:
                self._swap_candidate(None)
        if old is not None:
            old.close()

    def _batcher(self, model: ScoringModel, arm: str, schema: InstanceSchema) -> Batcher:
        observe = self.metrics.child(self.metrics.batch_rows, arm).observe
        return Batcher(
            model, arm, schema, self.config.max_batch, on_batch=observe,
            inline_rows=self.config.inline_rows,
        )  # fmt: skip

    def _load(self, arm: str) -> ScoringModel:
        alias = self.config.baseline_alias if arm == "baseline" else self.config.candidate_alias
        model = self.loader.load(alias)
        log.info("loaded %s: version %s, threshold %s", arm, model.version, model.threshold)
        return model

    def _load_candidate(self) -> None:
        """A missing or broken candidate leaves the baseline serving everything; the reason is
        shown by /readyz and /admin/state."""
        try:
            model = self._load("candidate")
            schema = self.schema_of(model)
            assert self.schema is not None  # the baseline loads first
            if (why := self.schema.difference(schema)) is not None:
                raise ModelLoadError(
                    f"candidate version {model.version} cannot take the baseline's requests: "
                    f"{why}. Register it with the baseline's input signature."
                )
        except AliasNotFoundError as exc:
            self.candidate_error = str(exc)
            log.info("no candidate: %s", exc)
            return
        except ModelLoadError as exc:
            self.candidate_error = str(exc)
            log.error("candidate not loaded, serving the baseline only: %s", exc)
            return
        self._swap_candidate(self._batcher(model, "candidate", self.schema))
        self.candidate_error = None

    def _swap_candidate(self, batcher: Batcher | None) -> None:
        old, self.candidate = self.candidate, batcher
        if old is not None:
            old.close()

    def _reload_models(self, load_candidate: bool) -> None:
        self._load_baseline()
        if load_candidate:
            self._load_candidate()

    async def close(self) -> None:
        self._stopping.set()
        if self._shadow_tasks:
            await asyncio.wait(self._shadow_tasks, timeout=self.config.candidate_timeout_s * 4)
        for batcher in (self.baseline, self.candidate):
            if batcher is not None:
                batcher.close()
        await asyncio.to_thread(self._close_blocking)

    def _close_blocking(self) -> None:
        if self._poller is not None:
            self._poller.join(5)
        self.predlog.close()
        try:
            self.shared.forget()
        except Exception as exc:
            log.warning("could not remove this replica's heartbeat: %s", redacted(exc))

    # -- routing state (blocking: run in a thread) -----------------------------------------
    # Each change is written to the shared row first, applied here, and then waited for on
    # every live replica; the returned laggards are those that did not apply it in time.

    def set_state(self, weight: float | None, mode: str | None) -> list[Replica]:
        with self._apply_lock:
            self.refresh()
            new = RoutingState(
                self.state.weight if weight is None else weight,
                self.state.mode if mode is None else mode,
                detached=self.state.detached and not (weight is not None and weight > 0),
            )
            if new.weight > 0 and not new.detached and self.candidate is None:
                self._load_candidate()
                if self.candidate is None:
                    raise StateConflict(
                        f"cannot route {new.weight}% to the candidate: it is not loaded "
                        f"({self.candidate_error}). Fix the registry alias and POST /admin/reload."
                    )
            version = self.shared.save(new.weight, new.mode, new.detached)
            self.state, self.version, self.apply_error = new, version, None
            self._publish()
        return self._wait_applied(version)

    def detach(self) -> list[Replica]:
        with self._apply_lock:
            self.refresh()
            new = RoutingState(0.0, self.state.mode, detached=True)
            version = self.shared.save(new.weight, new.mode, new.detached, note="detached")
            self.state, self.version, self.apply_error = new, version, None
            self._swap_candidate(None)
            self._publish()
        return self._wait_applied(version)

    def reload(self) -> list[Replica]:
        """Re-resolve both aliases (after a registry change) on every replica, no restart."""
        with self._apply_lock:
            self.refresh()
            self._reload_models(load_candidate=not self.state.detached)
            s = self.state
            version = self.shared.save(s.weight, s.mode, s.detached, note="reload", reload=True)
            self.version = self.reloaded = version
            self.apply_error = None
            self._publish()
        return self._wait_applied(version)

    def _wait_applied(self, version: int) -> list[Replica]:
        self.shared.heartbeat(version)
        return self.shared.laggards(version, self.config.state_apply_timeout_s)

    def replicas(self) -> list[dict[str, Any]]:
        now = time.time()
        return [
            {
                "replica_id": r.replica_id,
                "applied_version": r.applied_version,
                "seen_s_ago": round(now - r.heartbeat_at, 3),
                **({"error": r.error} if r.error else {}),
            }
            for r in self.shared.live_replicas(now)
        ]

    def _publish(self) -> None:
        self.metrics.set_routing(self.state.cutoff / 100.0, self.state.mode, MODES)
        self.metrics.model_info.clear()
        for arm, batcher in (("baseline", self.baseline), ("candidate", self.candidate)):
            if batcher is not None:
                self.metrics.model_info.labels(arm, batcher.model.version).set(1)
        self.metrics.state_version.set(self.version)

    def describe(self) -> dict[str, Any]:
        def arm(batcher: Batcher | None, alias: str) -> dict[str, Any]:
            if batcher is None:
                return {"alias": alias, "loaded": False}
            m = batcher.model
            return {"alias": alias, "loaded": True, "version": m.version, "threshold": m.threshold}

        candidate = arm(self.candidate, self.config.candidate_alias)
        if self.candidate is None and self.candidate_error:
            candidate["error"] = self.candidate_error
        return {
            **asdict(self.state),
            "effective_weight": self.state.cutoff / 100.0 if self.candidate else 0.0,
            "baseline": arm(self.baseline, self.config.baseline_alias),
            "candidate": candidate,
            "state_version": self.version,
            "replica_id": self.shared.replica_id,
        }

    # -- predict path (event loop) ---------------------------------------------------------
    # An answer leaves only after its row is committed (kpigate/serve/predlog.py); a shadow
    # copy is scored and logged after the answer, which the client never waits for.

    async def predict(self, inst: Instance, started: float) -> dict[str, Any]:
        self.in_flight += 1
        try:
            return await self._predict(inst, started)
        finally:
            self.in_flight -= 1

    async def _predict(self, inst: Instance, started: float) -> dict[str, Any]:
        baseline, candidate = self.baseline, self.candidate
        if baseline is None:
            raise BaselineError("the router has not finished starting")
        chosen = route(inst.entity_key, self.state, self.config.hash_salt, candidate is not None)
        # 128 random bits as 32 hex digits, like uuid4().hex without building a UUID object
        # (a few us per request, 3.7% of the loop's time at 64 clients).
        request_id = os.urandom(16).hex()
        fallback = False
        if chosen.served == "candidate" and candidate is not None:
            score = await self._try_candidate(candidate, inst)
            if score is not None:
                answer, row = self._answer(
                    request_id, inst, candidate, score, started, False, False
                )
                await self._commit(row)
                return answer
            fallback = True
            self.metrics.child(self.metrics.fallbacks, candidate.model.version).inc()
        try:
            score = await baseline.score(inst.row)
        except Exception as exc:
            version = baseline.model.version
            self.metrics.child(self.metrics.model_errors, "baseline", version, "exception").inc()
            log.error("baseline %s failed to score: %s", version, redacted(exc))
            raise BaselineError(f"baseline model version {version} failed to score") from exc
        answer, row = self._answer(request_id, inst, baseline, score, started, fallback, False)
        await self._commit(row)
        if chosen.shadow and candidate is not None:
            task = asyncio.ensure_future(self._shadow(request_id, inst, candidate, answer))
            self._shadow_tasks.add(task)
            task.add_done_callback(self._shadow_tasks.discard)
        return answer

    async def _commit(self, row: dict[str, Any]) -> None:
        """Until the row is committed, or LogUnavailable after the statement timeout; a row
        whose wait timed out stays queued and may still be committed (see _within)."""
        started = time.perf_counter()
        timeout = self.config.db_statement_timeout_s
        await _within(
            self.predlog.submit(row),
            timeout,
            lambda: LogUnavailable(f"the prediction log did not commit within {timeout:g}s"),
        )
        self.metrics.commit_wait.observe(time.perf_counter() - started)

    async def _try_candidate(self, candidate: Batcher, inst: Instance) -> float | None:
        version = candidate.model.version
        timeout = self.config.candidate_timeout_s
        try:
            scoring = candidate.score(inst.row)
            faults = self.faults
            if faults.candidate_delay_ms > 0 or faults.candidate_error_share > 0:
                return await asyncio.wait_for(self._faulty(scoring), timeout)  # drills only
            return await _within(scoring, timeout, TimeoutError)
        except TimeoutError:
            kind = "timeout"
        except ModelStopped:
            kind = "stopped"  # detached or replaced while this request waited
        except Exception as exc:
            kind = "exception"
            log.warning("candidate %s failed: %s", version, redacted(exc))
        self.metrics.child(self.metrics.model_errors, "candidate", version, kind).inc()
        return None

    async def _faulty(self, scoring: asyncio.Future[float]) -> float:
        faults = self.faults
        if faults.candidate_delay_ms > 0:
            await asyncio.sleep(faults.candidate_delay_ms / 1000.0)
        if faults.candidate_error_share > 0 and random.random() < faults.candidate_error_share:
            scoring.cancel()
            raise RuntimeError("injected candidate fault (/admin/faults)")
        return await scoring

    async def _shadow(
        self, request_id: str, inst: Instance, candidate: Batcher, answer: dict[str, Any]
    ) -> None:
        started = time.perf_counter()
        score = await self._try_candidate(candidate, inst)
        if score is None:
            return
        shadow, row = self._answer(request_id, inst, candidate, score, started, False, True)
        self.predlog.append(row)
        versions = (answer["model_version"], shadow["model_version"])
        self.metrics.child(self.metrics.shadow_compared, *versions).inc()
        if shadow["decision"] != answer["decision"]:
            self.metrics.child(self.metrics.shadow_disagreed, *versions).inc()

    def _answer(
        self,
        request_id: str,
        inst: Instance,
        batcher: Batcher,
        score: float,
        started: float,
        fallback: bool,
        shadow: bool,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The answer and its log row. Latency counts up to the answer, not the commit."""
        model = batcher.model
        arm = batcher.arm
        decision = "decline" if score >= model.threshold else "approve"
        latency = time.perf_counter() - started
        if not shadow:
            self.metrics.observe_served(arm, model.version, latency)
        self.metrics.count_decision(arm, model.version, decision, shadow)
        row = {
            "request_id": request_id,
            "entity_key": inst.entity_key,
            "model_version": model.version,
            "arm": arm,
            "shadow": shadow,
            "fallback": fallback,
            "score": score,
            "decision": decision,
            **dict.fromkeys(SEGMENT_SLOTS, ""),
            **dict(zip(SEGMENT_SLOTS, inst.segments, strict=False)),
            "latency_ms": latency * 1000.0,
            "created_at": time.time(),
        }
        answer = {
            "request_id": request_id,
            "score": score,
            "decision": decision,
            "model_version": model.version,
            "arm": arm,
            "fallback": fallback,
        }
        return answer, row


async def _within(
    future: asyncio.Future[T], timeout: float, error: Callable[[], BaseException]
) -> T:
    """The future's result, or error() after `timeout` seconds. Only this waiter's future is
    failed: whoever completes it later (the log's writer, a batcher) finds it done and leaves it,
    and the work itself goes on (a row that timed out may still be committed, never lost). One
    timer, where wait_for(shield(...)) cost a task or two more futures and their callbacks."""
    timer = asyncio.get_running_loop().call_later(timeout, _fail, future, error)
    try:
        return await future
    finally:
        timer.cancel()


def _fail(future: asyncio.Future[Any], error: Callable[[], BaseException]) -> None:
    if not future.done():
        future.set_exception(error())

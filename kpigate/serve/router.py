"""The router's core: two arms, their batchers, the routing state, and the predict path."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from kpigate.serve.config import MODES, ServeConfig
from kpigate.serve.instances import Instance
from kpigate.serve.loader import AliasNotFoundError, ModelLoader, ModelLoadError, ScoringModel
from kpigate.serve.metrics import RouterMetrics
from kpigate.serve.predlog import PredictionLog
from kpigate.serve.routing import RoutingState, route
from kpigate.serve.scoring import Batcher, ModelStopped

log = logging.getLogger(__name__)


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
        self.state = RoutingState(config.initial_weight, config.initial_mode)
        self.baseline: Batcher | None = None
        self.candidate: Batcher | None = None
        self.candidate_error: str | None = None
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self.faults = Faults()

    # -- lifecycle (blocking; run in a thread) ---------------------------------------------

    def start(self) -> None:
        self.predlog.start()
        saved = self.predlog.load_state()
        if saved is not None:
            self.state = RoutingState(saved["weight"], saved["mode"], bool(saved["detached"]))
            log.info("restored routing state %s", self.state)
        self.baseline = self._batcher(self._load("baseline"), "baseline")
        if not self.state.detached:
            self._load_candidate()
        self._publish()

    def _batcher(self, model: ScoringModel, arm: str) -> Batcher:
        observe = self.metrics.child(self.metrics.batch_rows, arm).observe
        return Batcher(model, arm, self.config.max_batch, on_batch=observe)

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
        except AliasNotFoundError as exc:
            self.candidate_error = str(exc)
            log.info("no candidate: %s", exc)
            return
        except ModelLoadError as exc:
            self.candidate_error = str(exc)
            log.error("candidate not loaded, serving the baseline only: %s", exc)
            return
        self._swap_candidate(self._batcher(model, "candidate"))
        self.candidate_error = None

    def _swap_candidate(self, batcher: Batcher | None) -> None:
        old, self.candidate = self.candidate, batcher
        if old is not None:
            old.close()

    def reload(self) -> None:
        """Re-resolve both aliases (after a registry change) without a restart."""
        baseline = self._batcher(self._load("baseline"), "baseline")
        old, self.baseline = self.baseline, baseline
        if old is not None:
            old.close()
        if not self.state.detached:
            self._load_candidate()
        self._publish()

    async def close(self) -> None:
        if self._shadow_tasks:
            await asyncio.wait(self._shadow_tasks, timeout=self.config.candidate_timeout_s * 4)
        for batcher in (self.baseline, self.candidate):
            if batcher is not None:
                batcher.close()
        await asyncio.to_thread(self.predlog.close)

    # -- routing state ---------------------------------------------------------------------

    def set_state(self, weight: float | None, mode: str | None) -> RoutingState:
        """Blocking (loads a detached candidate, writes the state): run in a thread."""
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
        self.predlog.save_state(new.weight, new.mode, new.detached)
        self.state = new
        self._publish()
        return new

    def detach(self) -> RoutingState:
        new = RoutingState(0.0, self.state.mode, detached=True)
        self.predlog.save_state(new.weight, new.mode, new.detached, note="detached")
        self.state = new
        self._swap_candidate(None)
        self._publish()
        return new

    def _publish(self) -> None:
        self.metrics.set_routing(self.state.cutoff / 100.0, self.state.mode, MODES)
        self.metrics.model_info.clear()
        for arm, batcher in (("baseline", self.baseline), ("candidate", self.candidate)):
            if batcher is not None:
                self.metrics.model_info.labels(arm, batcher.model.version).set(1)

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
        }

    # -- predict path (event loop) ---------------------------------------------------------

    async def predict(self, inst: Instance, started: float) -> dict[str, Any]:
        baseline, candidate = self.baseline, self.candidate
        if baseline is None:
            raise BaselineError("the router has not finished starting")
        chosen = route(inst.entity_key, self.state, self.config.hash_salt, candidate is not None)
        request_id = uuid.uuid4().hex
        fallback = False
        if chosen.served == "candidate" and candidate is not None:
            score = await self._try_candidate(candidate, inst)
            if score is not None:
                return self._answer(request_id, inst, candidate, score, started, False, False)
            fallback = True
            self.metrics.child(self.metrics.fallbacks, candidate.model.version).inc()
        try:
            score = await baseline.score(inst.row)
        except Exception as exc:
            version = baseline.model.version
            self.metrics.child(self.metrics.model_errors, "baseline", version, "exception").inc()
            raise BaselineError(
                f"baseline model version {version} failed to score: {type(exc).__name__}: {exc}"
            ) from exc
        answer = self._answer(request_id, inst, baseline, score, started, fallback, False)
        if chosen.shadow and candidate is not None:
            task = asyncio.ensure_future(self._shadow(request_id, inst, candidate, answer))
            self._shadow_tasks.add(task)
            task.add_done_callback(self._shadow_tasks.discard)
        return answer

    async def _try_candidate(self, candidate: Batcher, inst: Instance) -> float | None:
        version = candidate.model.version
        try:
            return await asyncio.wait_for(
                self._faulty(candidate.score(inst.row)), self.config.candidate_timeout_s
            )
        except TimeoutError:
            kind = "timeout"
        except ModelStopped:
            kind = "stopped"  # detached or replaced while this request waited
        except Exception as exc:
            kind = "exception"
            log.warning("candidate %s failed: %s: %s", version, type(exc).__name__, exc)
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
        shadow = self._answer(request_id, inst, candidate, score, started, False, True)
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
    ) -> dict[str, Any]:
        model = batcher.model
        arm = batcher.arm
        decision = "decline" if score >= model.threshold else "approve"
        latency = time.perf_counter() - started
        if not shadow:
            self.metrics.observe_served(arm, model.version, latency)
        self.metrics.count_decision(arm, model.version, decision, shadow)
        self.predlog.append(
            {
                "request_id": request_id,
                "entity_key": inst.entity_key,
                "model_version": model.version,
                "arm": arm,
                "shadow": shadow,
                "fallback": fallback,
                "score": score,
                "decision": decision,
                "region": inst.region,
                "payment_method": inst.payment_method,
                "amount_band": inst.amount_band,
                "latency_ms": latency * 1000.0,
                "created_at": time.time(),
            }
        )
        return {
            "request_id": request_id,
            "score": score,
            "decision": decision,
            "model_version": model.version,
            "arm": arm,
            "fallback": fallback,
        }

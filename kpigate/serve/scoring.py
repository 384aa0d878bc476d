"""Micro-batching: concurrent predict calls for one model become one predict in a worker thread.

Requests that arrive while a batch is being scored wait for the next batch, so a lone request is
scored at once (no added window at one client) and under load each predict call covers many
rows. XGBoost scores 64 rows in about the time of one, and the event loop never runs a predict.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from kpigate.fraud.schema import FEATURES
from kpigate.serve.loader import ScoringModel, fraud_probability

_COLUMNS = list(FEATURES)


class ModelStopped(RuntimeError):
    """The model was detached or replaced while the request waited."""


class Batcher:
    """Scores rows for one model. One worker thread per model keeps a slow candidate from
    delaying the baseline."""

    def __init__(
        self,
        model: ScoringModel,
        arm: str,
        max_batch: int = 256,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.model = model
        self._on_batch = on_batch
        self.arm = arm
        self.max_batch = max_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"score-{arm}")
        self._pending: list[tuple[Sequence[float], asyncio.Future[float]]] = []
        self._running = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0
        self.rows = 0

    def score(self, row: Sequence[float]) -> asyncio.Future[float]:
        """A future for P(fraud) of one row; it carries the model's exception if predict fails."""
        loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[float] = loop.create_future()
        if self._closed:
            future.set_exception(ModelStopped(f"the {self.arm} model is no longer served"))
            return future
        self._pending.append((row, future))
        if not self._running:
            self._running = True
            self._task = loop.create_task(self._drain())
        return future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                # Requests that timed out while queued need no scoring.
                batch = [item for item in batch if not item[1].done()]
                if not batch:
                    continue
                rows = [row for row, _ in batch]
                try:
                    scores = await loop.run_in_executor(self._executor, self._predict, rows)
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self.batches += 1
                self.rows += len(rows)
                if self._on_batch is not None:
                    self._on_batch(len(rows))
                for (_, future), value in zip(batch, scores, strict=True):
                    if not future.done():
                        future.set_result(value)
        finally:
            self._running = False

    def _predict(self, rows: list[Sequence[float]]) -> list[float]:
        frame = pd.DataFrame(np.asarray(rows, dtype=np.float64), columns=_COLUMNS)
        result: list[float] = fraud_probability(self.model, frame).tolist()
        return result

    def close(self) -> None:
        """Fail queued requests (they fall back or error) and let the worker thread finish.

        Safe from any thread (the admin API detaches from a worker thread): the queue and its
        futures belong to the event loop, so they are failed there."""
        self._closed = True
        if self._loop is not None:
            # RuntimeError: the loop is closed, so nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._fail_pending)
        self._executor.shutdown(wait=False)

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, []
        for _, future in pending:
            if not future.done():
                future.set_exception(ModelStopped(f"the {self.arm} model is no longer served"))

    def stats(self) -> dict[str, Any]:
        return {"batches": self.batches, "rows": self.rows}

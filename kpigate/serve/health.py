"""The readiness probe's database check: `SELECT 1` answered within the statement timeout.

A database that hangs (a half-open connection, a proxy that stops forwarding) never answers at
all, so the wait is bounded on our side, and at most one probe is in flight: a probe still stuck
from an earlier call makes the next one fail at once instead of piling up threads.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from kpigate.serve.predlog import redacted


class DatabaseProbe:
    def __init__(self, engine: Engine, timeout_s: float) -> None:
        self.engine = engine
        self.timeout_s = timeout_s
        self._running: asyncio.Future[None] | None = None
        self._started = 0.0

    async def check(self) -> str | None:
        """None when the database answered in time, else the problem in words (no secrets)."""
        if self._running is not None and not self._running.done():
            waited = time.monotonic() - self._started
            return f"database has not answered a probe for {waited:.1f}s"
        loop = asyncio.get_running_loop()
        self._started = time.monotonic()
        self._running = loop.run_in_executor(None, self._select_one)
        self._running.add_done_callback(_consume)
        try:
            await asyncio.wait_for(asyncio.shield(self._running), self.timeout_s)
        except TimeoutError:
            return f"database did not answer within {self.timeout_s:g}s"
        except Exception as exc:
            return f"database unreachable: {redacted(exc)}"
        return None

    def _select_one(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))


def _consume(future: Any) -> None:
    """A late outcome is read by the next check; this keeps asyncio from calling it lost."""
    if not future.cancelled():
        future.exception()

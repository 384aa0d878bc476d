"""Counts each logged prediction once, when it matures: its label horizon has passed.

Every replica runs this job. It claims matured rows with one statement,

  UPDATE predictions SET matured_at = :now
  WHERE id IN (SELECT id ... WHERE matured_at IS NULL AND created_at < :now - horizon
               LIMIT n FOR UPDATE SKIP LOCKED)
    AND matured_at IS NULL
  RETURNING ...

so the database decides who counts a row: on PostgreSQL a row locked by one replica is skipped
by the other, and the outer `matured_at IS NULL` is re-checked after a concurrent commit (READ
COMMITTED); SQLite (>= 3.35 for RETURNING) runs one writer at a time. The claimed rows bump
kpigate_matured_predictions_total and the matured score histogram, with the label that counts
at maturity (kpigate/sources/cohorts.py): increase() of these over a window is then the matured
counts of the predictions served one horizon earlier, summed over replicas without double counts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import inspect, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from kpigate.serve.predlog import Tables
from kpigate.sources.cohorts import label_at_maturity

log = logging.getLogger(__name__)

CLAIMED = ("id", "arm", "model_version", "shadow", "decision", "score", "region", "payment_method",
           "amount_band", "created_at", "label", "labeled_at")  # fmt: skip


def ensure_matured_column(engine: Engine, tables: Tables) -> None:
    """Add matured_at (and its index) to a prediction log created before it existed."""
    table = tables.predictions
    columns = {c["name"] for c in inspect(engine).get_columns(table.name)}
    if "matured_at" in columns:
        return
    kind = "DOUBLE PRECISION" if engine.dialect.name == "postgresql" else "REAL"
    try:
        with engine.begin() as conn:
            conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN matured_at {kind}"))
    except SQLAlchemyError:
        # Another replica added it first.
        if "matured_at" not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
            raise
    for index in table.indexes:
        if "unmatured" in (index.name or ""):
            index.create(engine, checkfirst=True)


class MaturityJob:
    """Claims matured predictions every `interval_s` in a thread and hands them to `on_matured`
    as (row, label at maturity or None)."""

    def __init__(
        self,
        engine: Engine,
        tables: Tables,
        horizon_s: float,
        on_matured: Callable[[dict[str, Any], int | None], None],
        interval_s: float = 1.0,
        batch_rows: int = 5000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.table = tables.predictions
        self.tables = tables
        self.horizon_s = horizon_s
        self.on_matured = on_matured
        self.interval_s = interval_s
        self.batch_rows = batch_rows
        self.clock = clock
        self.claimed = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def claim(self) -> int:
        """Claim and count every prediction matured by now; returns how many."""
        t = self.table
        total = 0
        while True:
            now = self.clock()
            ids = (
                select(t.c.id)
                .where(t.c.matured_at.is_(None), t.c.created_at < now - self.horizon_s)
                # In the partial index's order: the scan stops after batch_rows rows.
                .order_by(t.c.created_at)
                .limit(self.batch_rows)
                .with_for_update(skip_locked=True)  # rendered as nothing on SQLite
            )
            statement = (
                update(t)
                .where(t.c.id.in_(ids.scalar_subquery()), t.c.matured_at.is_(None))
                .values(matured_at=now)
                .returning(*(t.c[name] for name in CLAIMED))
            )
            with self.engine.begin() as conn:
                rows = [dict(row._mapping) for row in conn.execute(statement)]
            # Counted after the commit: a row is counted only once it is surely claimed.
            for row in rows:
                label = label_at_maturity(
                    row["label"], row["labeled_at"], row["created_at"], self.horizon_s, "exclude"
                )
                self.on_matured(row, label)
            total += len(rows)
            self.claimed += len(rows)
            if len(rows) < self.batch_rows:
                return total

    def start(self) -> None:
        ensure_matured_column(self.engine, self.tables)
        self._thread = threading.Thread(target=self._run, name="maturity", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        backoff = self.interval_s
        while not self._stop.wait(backoff):
            try:
                self.claim()
                self.last_error, backoff = None, self.interval_s
            except SQLAlchemyError as exc:
                # A database blip: nothing was claimed, so the next pass counts these rows.
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("maturity job failed, will retry: %s", self.last_error)
                backoff = min(backoff * 2, 30.0)

"""The prediction log: one SQL row per scored request, written in batches off the event loop.

The event loop only appends a dict to a buffer; a writer thread inserts buffered rows in one
transaction every few hundred rows or a fraction of a second, keeps them on a database error and
retries, and drains everything on close. SQLite by default; any SQLAlchemy URL (PostgreSQL) works.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)


class Tables:
    """The router's tables under one prefix; created idempotently (CREATE TABLE IF NOT EXISTS)."""

    def __init__(self, prefix: str = "kpigate_") -> None:
        self.metadata = MetaData()
        self.predictions = Table(
            f"{prefix}predictions",
            self.metadata,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("request_id", String(32), nullable=False),
            Column("entity_key", String(128), nullable=False),
            Column("model_version", String(64), nullable=False),
            Column("arm", String(16), nullable=False),
            # The served answer, or a shadow copy the client never saw.
            Column("shadow", Boolean, nullable=False, default=False),
            Column("fallback", Boolean, nullable=False, default=False),
            Column("score", Float, nullable=False),
            Column("decision", String(16), nullable=False),
            Column("region", String(32), nullable=False),
            Column("payment_method", String(32), nullable=False),
            Column("amount_band", String(16), nullable=False),
            Column("latency_ms", Float, nullable=False),
            # Unix seconds: portable across SQLite and PostgreSQL and cheap to compare.
            Column("created_at", Float, nullable=False),
            Column("label", Integer, nullable=True),
            Column("labeled_at", Float, nullable=True),
            # When a replica counted the prediction as matured (kpigate/serve/maturity.py).
            Column("matured_at", Float, nullable=True),
            UniqueConstraint("request_id", "shadow", name=f"{prefix}pred_req_shadow"),
            Index(f"{prefix}pred_created", "created_at"),
            # Only the rows still to mature: the maturity job's claim stays small at any size.
            Index(
                f"{prefix}pred_unmatured",
                "created_at",
                postgresql_where=text("matured_at IS NULL"),
                sqlite_where=text("matured_at IS NULL"),
            ),
        )
        self.state = Table(
            f"{prefix}router_state",
            self.metadata,
            Column("id", Integer, primary_key=True),
            Column("weight", Float, nullable=False),
            Column("mode", String(16), nullable=False),
            Column("detached", Boolean, nullable=False),
            Column("updated_at", Float, nullable=False),
            Column("note", Text, nullable=True),
        )

    def create(self, engine: Engine) -> None:
        self.metadata.create_all(engine, checkfirst=True)

    def drop(self, engine: Engine) -> None:
        self.metadata.drop_all(engine, checkfirst=True)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _wal(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets /feedback read while the writer inserts; NORMAL sync is safe with WAL.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class PredictionLog:
    def __init__(
        self,
        engine: Engine,
        tables: Tables,
        batch_rows: int = 500,
        flush_interval_s: float = 0.25,
        max_buffer_rows: int = 1_000_000,
        on_written: Callable[[int], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.tables = tables
        self.batch_rows = batch_rows
        self.flush_interval_s = flush_interval_s
        self.max_buffer_rows = max_buffer_rows
        self._on_written = on_written or (lambda n: None)
        self._on_dropped = on_dropped or (lambda n: None)
        self._buffer: deque[dict[str, Any]] = deque()
        self._wake = threading.Event()
        self._stop = False
        self._lock = threading.Lock()  # one writer at a time (thread or explicit flush)
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.written = 0
        self.dropped = 0

    def start(self) -> None:
        self.tables.create(self.engine)
        self._thread = threading.Thread(target=self._run, name="predlog-writer", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def append(self, row: dict[str, Any]) -> None:
        """Called on the event loop: O(1), never touches the database."""
        if len(self._buffer) >= self.max_buffer_rows:
            self.dropped += 1
            self._on_dropped(1)
            return
        self._buffer.append(row)
        if len(self._buffer) >= self.batch_rows:
            self._wake.set()

    def flush(self) -> None:
        """Write everything buffered so far (blocking; call from a thread). Raises if the
        database refuses, leaving the rows buffered for the writer to retry."""
        self._write_all(raise_errors=True)

    def close(self, timeout_s: float = 30.0) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._write_all(raise_errors=False)
        if self._buffer:
            log.error(
                "prediction log: %d rows could not be written at shutdown: %s",
                len(self._buffer),
                self.last_error,
            )

    def _run(self) -> None:
        backoff = self.flush_interval_s
        while not self._stop:
            self._wake.wait(backoff)
            self._wake.clear()
            ok = self._write_all(raise_errors=False)
            backoff = self.flush_interval_s if ok else min(backoff * 2, 5.0)

    def _write_all(self, raise_errors: bool) -> bool:
        with self._lock:
            while self._buffer:
                n = min(len(self._buffer), 5000)
                rows = [self._buffer[i] for i in range(n)]
                try:
                    with self.engine.begin() as conn:
                        conn.execute(insert(self.tables.predictions), rows)
                except Exception as exc:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("prediction log write failed, will retry: %s", self.last_error)
                    if raise_errors:
                        raise
                    return False
                for _ in range(n):
                    self._buffer.popleft()
                self.written += n
                self._on_written(n)
                self.last_error = None
            return True

    # -- persisted router state (weight, mode, detached) ------------------------------------

    def load_state(self) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(self.tables.state).where(self.tables.state.c.id == 1)).first()
        return None if row is None else dict(row._mapping)

    def save_state(self, weight: float, mode: str, detached: bool, note: str | None = None) -> None:
        values = {
            "weight": weight,
            "mode": mode,
            "detached": detached,
            "updated_at": time.time(),
            "note": note,
        }
        table = self.tables.state
        with self.engine.begin() as conn:
            done = conn.execute(update(table).where(table.c.id == 1).values(**values)).rowcount
            if not done:
                conn.execute(insert(table).values(id=1, **values))

"""The prediction log: one SQL row per scored request, committed before its answer leaves.

Group commit: the event loop appends a row and awaits a future; one writer thread inserts every
row queued so far in one transaction and then resolves their futures, so under load one commit
covers a whole micro-batch and a SIGKILL can lose only predictions nobody has been answered
for. A batch the database refuses for its data (a poison row) is retried row by row: the good
rows are committed, the refused ones are dead-lettered (counted, logged without their values)
and never block the others. A database that is down or too slow fails the waiting rows with
LogUnavailable, which the router answers with 503. SQLite by default; PostgreSQL at scale.

The inline commit (SQLite): when the writer is idle, one turn of the event loop queued only a
few rows and no other request is being served (a lone client), the loop commits them itself on a
connection of its own, then resolves their futures: the same transaction on the same file,
without waking the writer thread and waking the loop back (two thread wake-ups, about 0.1-0.2 ms
of a 1 ms answer at one client) and without SQLAlchemy's per-statement work. Anything unusual
(the file lock taken, an error, more rows, a shadow copy) leaves the rows to the writer thread,
which handles it as before; a slow inline commit sends every batch to the writer for a while.
That connection never checkpoints the WAL (a checkpoint writes and syncs the database file,
too long to hold the loop for): the writer thread does, every CHECKPOINT_ROWS inline rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import operator
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
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
    and_,
    create_engine,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

# Limits of the columns, used by the request validation too (kpigate/serve/instances.py), so a
# value the router accepts always fits the table.
ENTITY_KEY_MAX = 128
SEGMENT_MAX = 32
# The segment slots: the columns a row's configured segments are written to, in order, and their
# widths (kpigate/serve/schema.py; docs/prediction-log.md). The names are the fraud demo's.
SEGMENT_SLOTS = ("region", "payment_method", "amount_band")
SEGMENT_WIDTHS = {"region": SEGMENT_MAX, "payment_method": SEGMENT_MAX, "amount_band": 16}
# The columns of a logged row, as the router fills them (kpigate/serve/router.py).
ROW_COLUMNS = ("request_id", "entity_key", "model_version", "arm", "shadow", "fallback", "score",
               "decision", *SEGMENT_SLOTS, "latency_ms", "created_at")  # fmt: skip
# Every column a look's queries read besides created_at (kpigate/sources/predlog.py): on
# PostgreSQL the cohort index carries them, so a day-long cohort is read from the index alone.
COHORT_COLUMNS = ("arm", "model_version", "shadow", "fallback", "decision", "score", "region",
                  "payment_method", "amount_band", "latency_ms", "label", "labeled_at")  # fmt: skip


class Tables:
    """The router's tables under one prefix; created idempotently (CREATE TABLE IF NOT EXISTS).

    New columns go at the end of a table (and into `_ADDED_COLUMNS`), so older databases are
    upgraded in place by `create`."""

    def __init__(self, prefix: str = "kpigate_") -> None:
        self.prefix = prefix
        self.metadata = MetaData()
        self.predictions = Table(
            f"{prefix}predictions",
            self.metadata,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("request_id", String(32), nullable=False),
            Column("entity_key", String(ENTITY_KEY_MAX), nullable=False),
            Column("model_version", String(64), nullable=False),
            Column("arm", String(16), nullable=False),
            # The served answer, or a shadow copy the client never saw.
            Column("shadow", Boolean, nullable=False, default=False),
            Column("fallback", Boolean, nullable=False, default=False),
            Column("score", Float, nullable=False),
            Column("decision", String(16), nullable=False),
            *(Column(s, String(SEGMENT_WIDTHS[s]), nullable=False) for s in SEGMENT_SLOTS),
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
        # PostgreSQL only (INCLUDE): on SQLite it would be a second index on created_at.
        self.cohort_index = Index(
            f"{prefix}pred_cohort", self.predictions.c.created_at,
            postgresql_include=list(COHORT_COLUMNS),
        ).ddl_if(dialect="postgresql")  # fmt: skip
        self.state = Table(
            f"{prefix}router_state",
            self.metadata,
            Column("id", Integer, primary_key=True),
            Column("weight", Float, nullable=False),
            Column("mode", String(16), nullable=False),
            Column("detached", Boolean, nullable=False),
            Column("updated_at", Float, nullable=False),
            Column("note", Text, nullable=True),
            # Bumped by every change; replicas apply it and report it (kpigate/serve/shared.py).
            Column("version", Integer, nullable=False, server_default="0"),
            Column("reload_version", Integer, nullable=False, server_default="0"),
        )
        # One row per live router replica: what it has applied, and when it was last seen.
        self.replicas = Table(
            f"{prefix}router_replicas",
            self.metadata,
            Column("replica_id", String(128), primary_key=True),
            Column("applied_version", Integer, nullable=False),
            Column("heartbeat_at", Float, nullable=False),
            Column("error", Text, nullable=True),
        )

    # (table attribute, column name, DDL type and default) added after the first release.
    _ADDED_COLUMNS = (
        ("state", "version", "INTEGER NOT NULL DEFAULT 0"),
        ("state", "reload_version", "INTEGER NOT NULL DEFAULT 0"),
    )

    def create(self, engine: Engine) -> None:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                # Replicas starting together would race on CREATE TABLE: one at a time.
                key = int.from_bytes(hashlib.blake2b(self.prefix.encode(), digest_size=7).digest())
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
            self.metadata.create_all(conn, checkfirst=True)
            if engine.dialect.name == "postgresql":
                # Also on a table created before the index existed (a no-op when it is there;
                # on a big live table create it first with CREATE INDEX CONCURRENTLY, see
                # docs/prediction-log.md, or this builds it while holding writes).
                self.cohort_index.create(conn, checkfirst=True)
            inspector = inspect(conn)
            for attr, name, ddl in self._ADDED_COLUMNS:
                table: Table = getattr(self, attr)
                if name not in {c["name"] for c in inspector.get_columns(table.name)}:
                    conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {name} {ddl}"))

    def drop(self, engine: Engine) -> None:
        self.metadata.drop_all(engine, checkfirst=True)


@dataclass(frozen=True)
class DatabaseTimeouts:
    """How long the router waits for its database; documented in docs/reliability.md."""

    connect_s: float = 3.0
    statement_s: float = 5.0


def make_engine(url: str, timeouts: DatabaseTimeouts | None = None) -> Engine:
    t = timeouts or DatabaseTimeouts()
    if url.startswith("sqlite"):
        # SQLite's timeout is how long a writer waits for the file lock.
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": t.statement_s}
        )

        @event.listens_for(engine, "connect")
        def _wal(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets /feedback read while the writer inserts. NORMAL sync keeps a committed
            # row through a process kill (the WAL is in the OS's page cache), not a power cut.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        ms = max(1, round(t.statement_s * 1000))
        connect_args = {
            "connect_timeout": max(1, math.ceil(t.connect_s)),
            # Server-side limits: a statement or a lock wait longer than this is cancelled.
            "options": f"-c statement_timeout={ms} -c lock_timeout={ms}",
        }
    return create_engine(
        url, pool_pre_ping=True, pool_timeout=t.statement_s, connect_args=connect_args
    )


class LogUnavailable(RuntimeError):
    """The row could not be committed (database down, too slow, or the log closed)."""


class RowRefused(RuntimeError):
    """The database refused this row for its content; it was dead-lettered."""


# Errors that say the database (not the row) is the problem: the whole batch waits or fails.
_UNAVAILABLE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)


def redacted(exc: BaseException) -> str:
    """An error for the log without SQL or parameters (they carry customers' data)."""
    orig = getattr(exc, "orig", None)
    inner = orig if isinstance(orig, BaseException) else exc
    first = str(inner).splitlines()[0] if str(inner) else ""
    return f"{type(inner).__name__}: {first[:200]}"


Pending = tuple[dict[str, Any], "asyncio.Future[None] | None", "asyncio.AbstractEventLoop | None"]

# SLOW_STREAK inline commits in a row slower than INLINE_COMMIT_MAX_S (wall time: the event loop
# was held; a slow disk, not one preempted commit on a busy machine) send every batch to the
# writer thread for INLINE_COOLDOWN_S; so does a failed one. The WAL is checkpointed by the
# writer thread after every CHECKPOINT_ROWS rows committed inline (single-row commits write about
# four pages each, so this is about SQLite's own 1000-page auto-checkpoint).
INLINE_COMMIT_MAX_S = 0.002
SLOW_STREAK = 3
INLINE_COOLDOWN_S = 1.0
CHECKPOINT_ROWS = 250


class PredictionLog:
    def __init__(
        self,
        engine: Engine,
        tables: Tables,
        max_batch_rows: int = 2000,
        max_pending_rows: int = 50_000,
        on_written: Callable[[int], None] | None = None,
        on_dropped: Callable[[str, int], None] | None = None,
        on_shadow_labeled: Callable[[dict[str, Any], int], None] | None = None,
        inline_rows: int = 1,
        in_flight: Callable[[], int] | None = None,
    ) -> None:
        self.engine = engine
        self.tables = tables
        self.max_batch_rows = max_batch_rows
        self.max_pending_rows = max_pending_rows
        self._on_written = on_written or (lambda n: None)
        # (reason, rows): dead_letter (refused by the database) or queue_full (shadow copies).
        self._on_dropped = on_dropped or (lambda reason, n: None)
        # A shadow copy that landed after its request was labelled: counted by the caller.
        self._on_shadow_labeled = on_shadow_labeled or (lambda row, label: None)
        self._queue: deque[Pending] = deque()
        self._wake = threading.Event()
        self._stop = False
        # One writer at a time on SQLite (the writer thread and /feedback share one file lock).
        self.write_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.busy_since: float | None = None  # a commit in progress since (for /readyz)
        self.written = 0
        self.dead_lettered = 0
        # The inline commit (SQLite only): batches of at most inline_rows rows, 0 for never.
        self.inline_rows = inline_rows if self.is_sqlite else 0
        # The requests being served: the loop commits only when all of them wait for this
        # commit (nobody else needs the loop); under load the writer thread commits in
        # parallel with the loop, and that is faster (measured: docs/bench-scoring.md).
        self._in_flight = in_flight
        self._flush_scheduled = False
        self._inline_conn: Any = None  # a DBAPI connection, used on the event loop only
        self._inline_after = 0.0  # monotonic time before which batches go to the writer
        self._slow_streak = 0  # consecutive inline commits slower than INLINE_COMMIT_MAX_S
        self._uncheckpointed = 0  # rows committed inline since the last checkpoint request
        self._checkpoint_due = False
        self.inline_commits = 0
        self.checkpoints = 0
        compiled = insert(tables.predictions).compile(
            dialect=engine.dialect, column_keys=list(ROW_COLUMNS), for_executemany=True
        )
        # One INSERT of a row's ROW_COLUMNS in the driver's own parameter style, used by the
        # writer thread and by the inline commit alike.
        self._insert_sql = compiled.string
        self._positional = compiled.positional
        self._params = operator.itemgetter(*(compiled.positiontup or ROW_COLUMNS))

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def start(self) -> None:
        self.tables.create(self.engine)
        self._thread = threading.Thread(target=self._run, name="predlog-writer", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def submit(self, row: dict[str, Any]) -> asyncio.Future[None]:
        """On the event loop: queue a row; the future completes when it is committed, or fails
        with LogUnavailable or RowRefused."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if self._stop or len(self._queue) >= self.max_pending_rows:
            future.set_exception(LogUnavailable("the prediction log is not accepting rows"))
            return future
        self._queue.append((row, future, loop))
        if self.inline_rows <= 0:
            self._wake.set()
        elif not self._flush_scheduled:
            # Once per turn of the loop: every row this turn queues commits together.
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        """On the event loop, after the turn that queued rows: commit them here when that is
        cheap and safe, else wake the writer thread."""
        self._flush_scheduled = False
        if self._commit_inline():
            return
        self._wake.set()

    def _commit_inline(self) -> bool:
        queued = len(self._queue)
        if not 0 < queued <= self.inline_rows or time.monotonic() < self._inline_after:
            return False
        if self._in_flight is not None and self._in_flight() > queued:
            return False  # other requests are being served: the loop is theirs
        if self.last_error is not None or self._stop:
            return False  # the writer thread retries until the database is back, or drains
        if any(row.get("shadow") for row, _, _ in self._queue):
            return False  # a shadow copy: the writer labels it if needed (see _insert)
        if self.busy_since is not None or not self.write_lock.acquire(blocking=False):
            return False  # the writer is committing (or /feedback writing): join its next batch
        batch: list[Pending] = []
        try:
            while self._queue and len(batch) < queued:
                batch.append(self._queue.popleft())
            if not batch:
                return True  # the writer took them meanwhile
            started = time.perf_counter()
            try:
                conn = self._inline_connection()
                conn.cursor().executemany(self._insert_sql, self._bind([r for r, _, _ in batch]))
                conn.commit()
            except Exception as exc:
                # The writer thread retries them and classifies the error (unavailable or
                # poison): one place decides what a failed row gets.
                self._drop_inline_connection()
                self._inline_after = time.monotonic() + INLINE_COOLDOWN_S
                log.info("inline commit failed (%s): the writer thread takes over", redacted(exc))
                self._queue.extendleft(reversed(batch))
                return False
            slow = time.perf_counter() - started > INLINE_COMMIT_MAX_S
            self._slow_streak = self._slow_streak + 1 if slow else 0
            if self._slow_streak >= SLOW_STREAK:
                self._slow_streak = 0
                self._inline_after = time.monotonic() + INLINE_COOLDOWN_S
        finally:
            self.write_lock.release()
        self.inline_commits += 1
        self.written += len(batch)
        self._on_written(len(batch))
        self._uncheckpointed += len(batch)
        if self._uncheckpointed >= CHECKPOINT_ROWS:
            self._uncheckpointed = 0
            self._checkpoint_due = True
            self._wake.set()
        _settle([(future, None) for _, future, _ in batch if future is not None])
        return True

    def _bind(self, rows: list[dict[str, Any]]) -> list[Any]:
        if self._positional:
            return [self._params(row) for row in rows]
        return [{k: row[k] for k in ROW_COLUMNS} for row in rows]

    def _inline_connection(self) -> Any:
        if self._inline_conn is None:
            conn = self.engine.raw_connection()  # WAL and synchronous=NORMAL, as every one
            cursor = conn.cursor()
            # Never wait for the file lock on the event loop, never checkpoint there.
            cursor.execute("PRAGMA busy_timeout=0")
            cursor.execute("PRAGMA wal_autocheckpoint=0")
            cursor.close()
            self._inline_conn = conn
        return self._inline_conn

    def _drop_inline_connection(self) -> None:
        conn, self._inline_conn = self._inline_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.rollback()
            with contextlib.suppress(Exception):
                conn.invalidate()

    def append(self, row: dict[str, Any]) -> None:
        """Queue a row nobody waits for (a shadow copy: its answer has already left)."""
        if len(self._queue) >= self.max_pending_rows:
            self._on_dropped("queue_full", 1)
            log.error("prediction log queue full: a shadow row was dropped")
            return
        self._queue.append((row, None, None))
        self._wake.set()

    def close(self, timeout_s: float = 30.0) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._drain()
        with self.write_lock:  # not while the loop commits on it
            conn, self._inline_conn = self._inline_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _run(self) -> None:
        while not self._stop:
            woken = self._wake.wait(0.5)
            self._wake.clear()
            if not woken and self.last_error is not None:
                self._recheck()
            self._drain()
            if self._checkpoint_due:
                self._checkpoint()

    def _checkpoint(self) -> None:
        """Copy the WAL back into the database file for the inline commits, whose connection
        never does. PASSIVE: it neither waits for nor blocks a writer."""
        self._checkpoint_due = False
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").all()
        except Exception as exc:
            log.warning("prediction log checkpoint failed: %s", redacted(exc))
            return
        self.checkpoints += 1

    def _recheck(self) -> None:
        """With no traffic nothing would clear an old error, and a replica kept out of the
        load balancer by /readyz gets no traffic: read the table to see whether it is back."""
        try:
            with self.engine.connect() as conn:
                conn.execute(select(self.tables.predictions.c.id).limit(1)).all()
        except Exception as exc:
            self.last_error = redacted(exc)
            return
        self.last_error = None

    def _drain(self) -> None:
        while self._queue:
            n = min(len(self._queue), self.max_batch_rows)
            batch = [self._queue.popleft() for _ in range(n)]
            if not self._write_batch(batch):
                time.sleep(0.05)  # the database is down: do not spin on it

    def _write_batch(self, batch: list[Pending]) -> bool:
        outcomes: list[BaseException | None] = [None] * len(batch)
        self.busy_since = time.monotonic()
        try:
            try:
                with self.write_lock, self.engine.begin() as conn:
                    labeled = self._insert(conn, [row for row, _, _ in batch])
            except _UNAVAILABLE as exc:
                self.last_error = redacted(exc)
                log.warning("prediction log unavailable: %s", self.last_error)
                outcomes = [LogUnavailable("the prediction log is unavailable")] * len(batch)
                return False
            except Exception as exc:
                log.warning("prediction log batch refused (%s); retrying row by row", redacted(exc))
                labeled = []
                for i, (row, _, _) in enumerate(batch):
                    outcome, row_labeled = self._write_one(row)
                    outcomes[i] = outcome
                    labeled += row_labeled
            self.last_error = None
            ok = sum(1 for o in outcomes if o is None)
            self.written += ok
            self._on_written(ok)
            for row, label in labeled:
                self._on_shadow_labeled(row, label)
            return True
        finally:
            self.busy_since = None
            self._resolve(batch, outcomes)

    def _write_one(self, row: dict[str, Any]) -> tuple[BaseException | None, list[Any]]:
        try:
            with self.write_lock, self.engine.begin() as conn:
                return None, self._insert(conn, [row])
        except _UNAVAILABLE as exc:
            self.last_error = redacted(exc)
            return LogUnavailable("the prediction log is unavailable"), []
        except Exception as exc:
            self.dead_lettered += 1
            self._on_dropped("dead_letter", 1)
            log.error("prediction log refused a row (dead-lettered): %s", redacted(exc))
            return RowRefused("the prediction log refused this row"), []

    def _insert(
        self, conn: Connection, rows: list[dict[str, Any]]
    ) -> list[tuple[dict[str, Any], int]]:
        """Insert rows; label shadow copies whose request was labelled before they landed.

        The served rows of those shadow copies are locked first (FOR UPDATE on PostgreSQL),
        and /feedback labels the served row before its shadow copies (feedback.py), so either
        this transaction sees the label or /feedback sees the copy: never neither, never both.
        """
        table = self.tables.predictions
        shadow_ids = [r["request_id"] for r in rows if r.get("shadow")]
        if shadow_ids:
            served = and_(table.c.request_id.in_(shadow_ids), table.c.shadow.is_(False))
            conn.execute(select(table.c.id).where(served).with_for_update()).all()
        # The precompiled INSERT (see __init__): SQLAlchemy's errors, none of its per-statement
        # compile and cache-key work, which cost about 40 us of GIL per commit.
        conn.exec_driver_sql(self._insert_sql, self._bind(rows))
        if not shadow_ids:
            return []
        found = conn.execute(
            select(table.c.request_id, table.c.label, table.c.labeled_at).where(
                served, table.c.label.is_not(None)
            )
        ).all()
        labeled = []
        by_id = {r["request_id"]: r for r in rows if r.get("shadow")}
        for rid, label, labeled_at in found:
            done = conn.execute(
                update(table)
                .where(table.c.request_id == rid, table.c.shadow.is_(True), table.c.label.is_(None))
                .values(label=label, labeled_at=labeled_at)
            ).rowcount
            if done:
                labeled.append((by_id[rid], int(label)))
        return labeled

    @staticmethod
    def _resolve(batch: list[Pending], outcomes: list[BaseException | None]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, BaseException | None]]] = {}
        for (_, future, loop), outcome in zip(batch, outcomes, strict=True):
            if future is not None and loop is not None:
                by_loop.setdefault(loop, []).append((future, outcome))
        for loop, items in by_loop.items():
            # RuntimeError: the loop is closed, so nobody waits any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, items)


def _settle(items: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for future, outcome in items:
        if future.done():
            continue
        if outcome is None:
            future.set_result(None)
        else:
            future.set_exception(outcome)

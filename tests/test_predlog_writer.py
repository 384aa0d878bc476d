"""The prediction log commits each row before its future completes, fails rows when the database
is down instead of pretending, dead-letters a poison row without blocking the others, and
labels a shadow copy that lands after its label. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from kpigate.serve import predlog
from kpigate.serve.predlog import (
    CHECKPOINT_ROWS,
    SLOW_STREAK,
    LogUnavailable,
    PredictionLog,
    RowRefused,
    Tables,
    make_engine,
)
from kpigate.serve.shared import SharedState
from tests.serve_fixtures import Database


def _row(i: int, **changes: Any) -> dict[str, Any]:
    row = {
        "request_id": f"r{i}",
        "entity_key": f"c{i}",
        "model_version": "1",
        "arm": "baseline",
        "shadow": False,
        "fallback": False,
        "score": 0.1,
        "decision": "approve",
        "region": "eu",
        "payment_method": "card",
        "amount_band": "low",
        "latency_ms": 1.0,
        "created_at": time.time(),
    }
    row.update(changes)
    return row


def _count(log: PredictionLog) -> int:
    with log.engine.connect() as conn:
        return int(
            conn.execute(select(func.count()).select_from(log.tables.predictions)).scalar_one()
        )


def _log(db: Database, tmp_path: Path, **kw: Any) -> PredictionLog:
    url = db.url or f"sqlite:///{tmp_path / 'p.db'}"
    log = PredictionLog(make_engine(url), Tables(db.prefix), **kw)
    log.start()
    return log


async def _submit_all(log: PredictionLog, rows: list[dict[str, Any]]) -> list[Any]:
    futures = [log.submit(row) for row in rows]
    return list(await asyncio.gather(*futures, return_exceptions=True))


def test_a_completed_row_is_committed(tmp_path: Path, database: Database) -> None:
    log = _log(database, tmp_path)
    try:
        outcomes = asyncio.run(_submit_all(log, [_row(i) for i in range(50)]))
        assert outcomes == [None] * 50
        # No flush and no close: completion means committed.
        assert _count(log) == 50
    finally:
        log.close()


def test_a_database_that_is_down_fails_the_rows_and_recovers(tmp_path: Path) -> None:
    log = _log(Database(None, "w_"), tmp_path)
    try:
        log.tables.predictions.drop(log.engine)  # the database "loses" the table
        outcomes = asyncio.run(_submit_all(log, [_row(i) for i in range(10)]))
        assert all(isinstance(o, LogUnavailable) for o in outcomes), outcomes
        assert log.last_error is not None and "r1" not in log.last_error
        log.tables.create(log.engine)  # the database is back
        # With no traffic at all, the writer finds out by itself (so /readyz turns ready again
        # for a replica the load balancer took out).
        deadline = time.monotonic() + 20
        while log.last_error is not None:
            assert time.monotonic() < deadline, "the error never cleared without traffic"
            time.sleep(0.05)
        assert asyncio.run(_submit_all(log, [_row(i) for i in range(10, 15)])) == [None] * 5
        assert _count(log) == 5 and log.last_error is None
    finally:
        log.close()


def test_a_poison_row_is_dead_lettered_and_the_others_commit(
    tmp_path: Path, database: Database
) -> None:
    dead: list[int] = []
    log = _log(database, tmp_path, on_dropped=lambda reason, n: dead.append(n))
    try:
        rows = [_row(i) for i in range(20)]
        rows[7] = _row(7, score=None)  # NOT NULL: the database refuses this one row
        if database.url:  # PostgreSQL refuses NUL in text, where SQLite stores it
            rows[12] = _row(12, entity_key="nul\x00inside")
        outcomes = asyncio.run(_submit_all(log, rows))
        refused = [i for i, o in enumerate(outcomes) if isinstance(o, RowRefused)]
        assert refused == ([7, 12] if database.url else [7])
        assert all(o is None for i, o in enumerate(outcomes) if i not in refused)
        assert _count(log) == 20 - len(refused) and sum(dead) == len(refused)
        # The writer is not stuck on the poison row: the next rows commit at once.
        assert asyncio.run(_submit_all(log, [_row(100)])) == [None]
    finally:
        log.close()


def test_a_shadow_copy_landing_after_its_label_is_labelled(
    tmp_path: Path, database: Database
) -> None:
    labelled: list[tuple[str, int]] = []
    log = _log(
        database, tmp_path, on_shadow_labeled=lambda r, lab: labelled.append((r["request_id"], lab))
    )
    try:
        assert asyncio.run(_submit_all(log, [_row(1), _row(2)])) == [None, None]
        t = log.tables.predictions
        with log.engine.begin() as conn:  # /feedback labels the served row r1 only
            conn.execute(update(t).where(t.c.request_id == "r1").values(label=1, labeled_at=5.0))
        shadows = [_row(1, shadow=True, arm="candidate"), _row(2, shadow=True, arm="candidate")]
        assert asyncio.run(_submit_all(log, shadows)) == [None, None]
        with log.engine.connect() as conn:
            got = conn.execute(select(t.c.request_id, t.c.label).where(t.c.shadow.is_(True)))
            labels = dict(got.all())
        assert labels == {"r1": 1, "r2": None}
        assert labelled == [("r1", 1)]
    finally:
        log.close()


def _committed_ids(log: PredictionLog) -> set[str]:
    """The request ids another connection sees: committed rows only."""
    other = sqlite3.connect(log.engine.url.database or "")
    try:
        table = log.tables.predictions.name
        return {rid for (rid,) in other.execute(f"SELECT request_id FROM {table}")}
    finally:
        other.close()


async def _one_at_a_time(log: PredictionLog, rows: list[dict[str, Any]]) -> list[set[str]]:
    """Submit each row alone, as a lone client does; what another connection sees as each
    future completes."""
    seen = []
    for row in rows:
        await log.submit(row)
        seen.append(_committed_ids(log))
    return seen


@pytest.fixture
def never_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    """No inline commit counts as slow: on a busy shared machine a preempted one can, and the
    tests that count inline commits must not depend on the machine's load."""
    monkeypatch.setattr(predlog, "INLINE_COMMIT_MAX_S", 3600.0)


@pytest.mark.usefixtures("never_slow")
def test_a_lone_row_is_committed_on_the_loop_before_its_future_completes(
    tmp_path: Path, database: Database
) -> None:
    log = _log(database, tmp_path)
    try:
        if database.url:  # PostgreSQL: a commit is a network round trip, never on the loop
            assert log.inline_rows == 0
            assert asyncio.run(_submit_all(log, [_row(1)])) == [None] and _count(log) == 1
            return
        seen = asyncio.run(_one_at_a_time(log, [_row(i) for i in range(5)]))
        # Each row was visible to another connection (committed) when its future completed.
        assert seen == [{f"r{j}" for j in range(i + 1)} for i in range(5)]
        assert log.inline_commits == 5 and log.written == 5
    finally:
        log.close()


@pytest.mark.usefixtures("never_slow")
def test_many_rows_in_one_turn_go_to_the_writer_in_one_transaction(tmp_path: Path) -> None:
    log = _log(Database(None, "w_"), tmp_path, inline_rows=8)
    try:
        assert asyncio.run(_submit_all(log, [_row(i) for i in range(8)])) == [None] * 8
        assert log.inline_commits == 1  # 8 rows, one turn: one inline transaction
        assert asyncio.run(_submit_all(log, [_row(i) for i in range(8, 20)])) == [None] * 12
        assert log.inline_commits == 1 and _count(log) == 20  # 12 rows: the writer's
    finally:
        log.close()


@pytest.mark.usefixtures("never_slow")
def test_with_other_requests_in_flight_the_writer_thread_commits(tmp_path: Path) -> None:
    """Under load the loop is the other requests': the writer thread commits in parallel."""
    serving = [1]
    log = _log(Database(None, "w_"), tmp_path, in_flight=lambda: serving[0])
    try:
        assert asyncio.run(_submit_all(log, [_row(1)])) == [None]
        assert log.inline_commits == 1  # the only request in flight waits for this commit
        serving[0] = 5  # four more are being parsed or scored
        assert asyncio.run(_submit_all(log, [_row(2), _row(3)])) == [None, None]
        assert log.inline_commits == 1 and _count(log) == 3
    finally:
        log.close()


def test_a_locked_file_sends_the_row_to_the_writer_which_waits_for_the_lock(
    tmp_path: Path,
) -> None:
    log = _log(Database(None, "w_"), tmp_path)
    holder = sqlite3.connect(tmp_path / "p.db", check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process's write transaction holds the file

    async def scenario() -> list[Any]:
        asyncio.get_running_loop().call_later(0.3, holder.commit)
        return await _submit_all(log, [_row(1)])

    try:
        # The loop does not wait for the lock: the writer thread does (busy timeout), and the
        # row commits once the other transaction ends.
        assert asyncio.run(scenario()) == [None]
        assert log.inline_commits == 0 and _count(log) == 1
    finally:
        holder.close()
        log.close()


def test_a_lone_poison_row_is_dead_lettered_by_the_writer(tmp_path: Path) -> None:
    log = _log(Database(None, "w_"), tmp_path)
    try:
        assert asyncio.run(_submit_all(log, [_row(1)])) == [None]
        outcomes = asyncio.run(_submit_all(log, [_row(2, score=None)]))  # NOT NULL
        assert isinstance(outcomes[0], RowRefused) and log.dead_lettered == 1
        assert asyncio.run(_submit_all(log, [_row(3)])) == [None]
        assert _committed_ids(log) == {"r1", "r3"}
    finally:
        log.close()


def test_slow_inline_commits_send_the_rows_to_the_writer_for_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(predlog, "INLINE_COMMIT_MAX_S", 0.0)  # every inline commit is slow
    monkeypatch.setattr(predlog, "INLINE_COOLDOWN_S", 3600.0)
    log = _log(Database(None, "w_"), tmp_path)
    try:
        rows = [_row(i) for i in range(SLOW_STREAK + 3)]
        asyncio.run(_one_at_a_time(log, rows))
        # SLOW_STREAK slow ones in a row, then the writer thread commits the rest.
        assert log.inline_commits == SLOW_STREAK and _count(log) == len(rows)
    finally:
        log.close()


@pytest.mark.usefixtures("never_slow")
def test_the_writer_checkpoints_the_wal_of_inline_commits(tmp_path: Path) -> None:
    log = _log(Database(None, "w_"), tmp_path)
    try:
        asyncio.run(_one_at_a_time(log, [_row(i) for i in range(CHECKPOINT_ROWS)]))
        assert log.inline_commits == CHECKPOINT_ROWS
        # The loop's own connection never checkpoints; the writer thread does, when asked.
        assert log._inline_conn.cursor().execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        deadline = time.monotonic() + 30
        while log.checkpoints == 0:
            assert time.monotonic() < deadline, "the writer never checkpointed"
            time.sleep(0.05)
        assert _count(log) == CHECKPOINT_ROWS
    finally:
        log.close()


def test_schema_creation_is_idempotent_and_state_versions_grow(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    Tables("w_").create(engine)
    Tables("w_").create(engine)
    state = SharedState(engine, Tables("w_"), "r1")
    assert state.save(25.0, "shadow", False) == 1
    assert state.save(50.0, "canary", False) == 2
    saved = state.load()
    assert saved is not None
    assert (saved.weight, saved.mode, saved.version, saved.reload_version) == (50.0, "canary", 2, 0)
    assert state.save(50.0, "canary", False, reload=True) == 3
    assert state.load() is not None and state.load().reload_version == 3  # type: ignore[union-attr]


def test_an_older_state_table_is_upgraded_in_place(tmp_path: Path) -> None:
    from sqlalchemy import text

    engine = make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    with engine.begin() as conn:  # the table as the first release created it
        conn.execute(
            text(
                "CREATE TABLE w_router_state (id INTEGER PRIMARY KEY, weight FLOAT NOT NULL, "
                "mode VARCHAR(16) NOT NULL, detached BOOLEAN NOT NULL, updated_at FLOAT NOT NULL, "
                "note TEXT)"
            )
        )
        conn.execute(text("INSERT INTO w_router_state VALUES (1, 25.0, 'canary', 0, 1.0, NULL)"))
    Tables("w_").create(engine)
    saved = SharedState(engine, Tables("w_"), "r1").load()
    assert saved is not None and (saved.weight, saved.version) == (25.0, 0)


class _NoModels:
    def load(self, alias: str) -> Any:
        raise AssertionError("no model is loaded in this test")


def test_a_commit_wait_past_the_timeout_fails_the_request_and_the_row_still_commits(
    tmp_path: Path,
) -> None:
    from kpigate.serve.config import ServeConfig
    from kpigate.serve.metrics import RouterMetrics
    from kpigate.serve.router import RouterCore

    log = _log(Database(None, "w_"), tmp_path)
    core = RouterCore(ServeConfig(db_statement_timeout_s=0.2), _NoModels(), RouterMetrics(), log)
    try:
        with log.write_lock:  # /feedback's transaction, say: neither the loop nor the writer
            try:
                asyncio.run(core._commit(_row(1)))
                raise AssertionError("the commit wait did not time out")
            except LogUnavailable as exc:
                assert "did not commit within 0.2s" in str(exc)
        # The timed-out row was not dropped: the writer commits it once the lock is free.
        deadline = time.monotonic() + 30
        while _count(log) < 1:
            assert time.monotonic() < deadline, "the timed-out row was never committed"
            time.sleep(0.05)
        assert asyncio.run(_submit_all(log, [_row(2)])) == [None] and _count(log) == 2
    finally:
        log.close()

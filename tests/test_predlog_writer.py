"""The prediction log writer keeps rows through a database error, bounds its buffer, and
drains on close."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from kpigate.serve.predlog import PredictionLog, Tables, make_engine


def _row(i: int) -> dict[str, Any]:
    return {
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


def _count(log: PredictionLog) -> int:
    with log.engine.connect() as conn:
        return int(
            conn.execute(select(func.count()).select_from(log.tables.predictions)).scalar_one()
        )


def test_rows_survive_a_database_error_and_are_retried(tmp_path: Path) -> None:
    tables = Tables("w_")
    log = PredictionLog(make_engine(f"sqlite:///{tmp_path / 'p.db'}"), tables,
                        flush_interval_s=0.05)  # fmt: skip
    log.start()
    tables.predictions.drop(log.engine)  # the database "loses" the table
    for i in range(10):
        log.append(_row(i))
    deadline = time.monotonic() + 5
    while log.last_error is None:
        assert time.monotonic() < deadline, "the writer never tried"
        time.sleep(0.02)
    assert log.pending == 10
    tables.create(log.engine)  # the database is back
    deadline = time.monotonic() + 10
    while log.pending:
        assert time.monotonic() < deadline, f"rows not retried: {log.last_error}"
        time.sleep(0.05)
    log.close()
    assert (_count(log), log.written) == (10, 10)
    assert log.last_error is None


def test_a_full_buffer_drops_and_counts(tmp_path: Path) -> None:
    dropped: list[int] = []
    log = PredictionLog(make_engine(f"sqlite:///{tmp_path / 'p.db'}"), Tables("w_"),
                        max_buffer_rows=3, on_dropped=dropped.append)  # fmt: skip
    for i in range(5):  # not started: nothing drains the buffer
        log.append(_row(i))
    assert (log.pending, log.dropped, sum(dropped)) == (3, 2, 2)
    log.start()
    log.close()
    assert _count(log) == 3


def test_schema_creation_is_idempotent(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    Tables("w_").create(engine)
    Tables("w_").create(engine)
    log = PredictionLog(engine, Tables("w_"))
    log.start()
    log.save_state(25.0, "shadow", False)
    log.save_state(50.0, "canary", False)
    log.close()
    state = log.load_state()
    assert state is not None and (state["weight"], state["mode"]) == (50.0, "canary")

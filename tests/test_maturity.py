"""Predictions counted once at maturity, by every router replica together (kpigate/serve/maturity.py).

PostgreSQL semantics relied on: a sub-SELECT ... FOR UPDATE SKIP LOCKED skips rows another
transaction has locked, and UPDATE re-checks its WHERE on a row updated concurrently under READ
COMMITTED (postgres/postgres: src/backend/executor/nodeLockRows.c, README of
src/backend/access/heap for EvalPlanQual).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from kpigate.policy import Labels
from kpigate.serve.maturity import MaturityJob, ensure_matured_column
from kpigate.serve.predlog import Tables, make_engine
from kpigate.sources.base import SourceError
from kpigate.sources.cohorts import NextCohort, ServedWindow, label_at_maturity
from kpigate.sources.prometheus import PrometheusSource
from kpigate.sources.router import RouterScrapeSource
from tests.cohort_helpers import engine_for, random_rows
from tests.prometheus_fixtures import PrometheusServer
from tests.serve_fixtures import (
    Database,
    FixedModel,
    RouterServer,
    constant,
    metric_value,
    transactions,
)

HORIZON = 2.0


def _start(start_router: Callable[..., RouterServer], db: Database, **kw: Any) -> RouterServer:
    models = {
        "champion": FixedModel("1", score=constant(0.2)),
        "candidate": FixedModel("2", score=constant(0.7)),
    }
    if db.url:
        kw["db_url"] = db.url
    kw.setdefault("label_horizon_s", HORIZON)
    kw.setdefault("maturity_interval_s", 0.05)
    return start_router(models, table_prefix=db.prefix, **kw)


def _rows(router: RouterServer) -> list[dict[str, Any]]:
    engine = make_engine(router.config.db_url)
    table = Tables(router.config.table_prefix).predictions
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(select(table))]
    engine.dispose()
    return rows


def _wait_matured(router: RouterServer, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        rows = _rows(router)
        if len(rows) >= n and all(r["matured_at"] is not None for r in rows):
            return rows
        assert time.monotonic() < deadline, "predictions never matured"
        time.sleep(0.1)


def test_two_replicas_count_each_matured_prediction_exactly_once(
    start_router: Callable[..., RouterServer], database: Database
) -> None:
    replicas = [
        _start(start_router, database, initial_weight=50.0, label_horizon_s=2.0) for _ in range(2)
    ]
    bodies = transactions(240, seed=31)
    answers = []
    for i, replica in enumerate(replicas):
        with replica.client() as client:
            batch = {"instances": bodies[i::2]}
            answers += client.post("/predict", json=batch).json()["predictions"]
    # Labels for a third of them, sent to the other replica than the one that served.
    with replicas[1].client() as client:
        labels = [
            {"request_id": a["request_id"], "label": i % 2} for i, a in enumerate(answers[::3])
        ]
        assert client.post("/feedback", json={"labels": labels}).json()["joined"] == len(labels)
    rows = _wait_matured(replicas[0], len(bodies))
    texts = []
    for replica in replicas:
        with replica.client() as client:
            texts.append(client.get("/metrics").text)
    total = sum(metric_value(t, "kpigate_matured_predictions_total", segment="all") for t in texts)
    assert total == len(rows) == len(bodies)
    for label in ("0", "1", "none"):
        want = sum(
            1
            for r in rows
            if str(
                label_at_maturity(r["label"], r["labeled_at"], r["created_at"], 2.0, "exclude")
            ).replace("None", "none")
            == label
        )
        got = sum(
            metric_value(t, "kpigate_matured_predictions_total", segment="all", label=label)
            for t in texts
        )
        assert got == want, label
    assert all(metric_value(t, "kpigate_label_horizon_seconds") == HORIZON for t in texts)


def test_concurrent_claims_on_one_database_never_overlap(
    database: Database, tmp_path: Path
) -> None:
    engine, _ = engine_for(database, tmp_path)
    tables = Tables(database.prefix)
    tables.create(engine)
    rows = random_rows(12_000, 0.0, 1000.0, 10.0, seed=4)
    with engine.begin() as conn:
        conn.execute(insert(tables.predictions), rows)
    claimed: list[int] = []
    lock = threading.Lock()

    def count(row: dict[str, Any], label: int | None) -> None:
        with lock:
            claimed.append(row["id"])

    jobs = [
        MaturityJob(engine, tables, 10.0, count, batch_rows=300, clock=lambda: 5000.0)
        for _ in range(4)
    ]
    threads = [threading.Thread(target=job.claim) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(claimed) == len(rows) == len(set(claimed))
    assert sum(job.claimed for job in jobs) == len(rows)
    assert jobs[0].claim() == 0  # nothing is counted twice
    engine.dispose()


def test_only_predictions_past_the_horizon_mature(database: Database, tmp_path: Path) -> None:
    engine, _ = engine_for(database, tmp_path)
    tables = Tables(database.prefix)
    tables.create(engine)
    rows = random_rows(500, 0.0, 100.0, 10.0, seed=8)
    with engine.begin() as conn:
        conn.execute(insert(tables.predictions), rows)
    seen: list[dict[str, Any]] = []
    job = MaturityJob(engine, tables, 10.0, lambda row, label: seen.append(row), clock=lambda: 60.0)
    job.claim()
    assert len(seen) == sum(1 for r in rows if r["created_at"] < 50.0)
    assert all(r["created_at"] < 50.0 for r in seen)
    engine.dispose()


def test_a_log_created_before_maturity_gets_the_column(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    tables = Tables("old_")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE old_predictions (id INTEGER PRIMARY KEY, created_at REAL NOT NULL)"
        )
    ensure_matured_column(engine, tables)
    ensure_matured_column(engine, tables)  # idempotent
    with engine.connect() as conn:
        names = [r[1] for r in conn.exec_driver_sql("PRAGMA table_info(old_predictions)")]
    assert "matured_at" in names
    engine.dispose()


def test_the_router_source_reads_label_kpis_from_matured_counters_at_the_right_horizon(
    start_router: Callable[..., RouterServer], database: Database
) -> None:
    router = _start(start_router, database, initial_weight=100.0, initial_mode="shadow")
    source = RouterScrapeSource(router.url)
    source.mark()
    with router.client() as client:
        batch = {"instances": transactions(40, seed=2)}
        answers = client.post("/predict", json=batch).json()["predictions"]
        feedback = [{"request_id": a["request_id"], "label": 1} for a in answers[:10]]
        time.sleep(HORIZON / 3)  # labels arrive late, but within the horizon
        assert client.post("/feedback", json={"labels": feedback}).json()["joined"] == 10
    rows = _wait_matured(router, 80)  # the served answers and their shadow copies
    assert sum(1 for r in rows if r["shadow"]) == 40
    source.collect()
    cohort = NextCohort(ServedWindow(1, 100.0, 0.0, 1.0), 100.0, 1.0 + HORIZON, True)
    matured = source.matured(cohort, Labels(horizon=HORIZON, unlabeled="negative")).counts
    # Shadow mode: the candidate scored every request as a shadow copy, and matured with it.
    for arm, decision in (("baseline", "approve"), ("candidate", "decline")):
        positive = "fn" if decision == "approve" else "tp"
        negative = "tn" if decision == "approve" else "fp"
        assert matured.total("outcomes", arm=arm, segment="all", outcome=positive) == 10
        assert matured.total("outcomes", arm=arm, segment="all", outcome=negative) == 30
    excluded = source.matured(cohort, Labels(horizon=HORIZON, unlabeled="exclude")).counts
    assert excluded.total("outcomes", segment="all") == 20
    with pytest.raises(SourceError, match=r"differs from the policy's labels\.horizon"):
        source.matured(cohort, Labels(horizon=60.0))


def test_a_router_without_a_horizon_cannot_give_matured_cohorts(
    start_router: Callable[..., RouterServer], database: Database
) -> None:
    router = _start(start_router, database, label_horizon_s=None)
    source = RouterScrapeSource(router.url)
    source.mark()
    source.collect()
    cohort = NextCohort(ServedWindow(1, 5.0, 0.0, 1.0), 5.0, 2.0, True)
    with pytest.raises(SourceError, match="--label-horizon"):
        source.matured(cohort, Labels(horizon=60.0))


def test_prometheus_sums_the_matured_counters_of_two_replicas(
    prometheus: PrometheusServer, start_router: Callable[..., RouterServer]
) -> None:
    db = Database(None, "kpigate_")
    replicas = [_start(start_router, db, initial_weight=50.0) for _ in range(2)]
    targets = [r.url.removeprefix("http://") for r in replicas]
    prometheus.scrape(*targets)
    matchers = 'instance=~"' + "|".join(targets) + '"'
    prometheus.wait_for(
        f"count(up{{{matchers}}} == 1)", lambda r: bool(r) and r[0]["value"][1] == "2"
    )
    source = PrometheusSource(prometheus.url, matchers=matchers, mode="delta")
    source.mark()
    answers = []
    for i, replica in enumerate(replicas):
        with replica.client() as client:
            batch = {"instances": transactions(60, seed=40 + i)}
            answers += client.post("/predict", json=batch).json()["predictions"]
        with replica.client() as client:
            labels = [{"request_id": a["request_id"], "label": 1} for a in answers[-60:][:15]]
            assert client.post("/feedback", json={"labels": labels}).json()["joined"] == 15
    _wait_matured(replicas[0], 120)
    prometheus.wait_for(
        f'sum(kpigate_matured_predictions_total{{segment="all",{matchers}}})',
        lambda r: bool(r) and float(r[0]["value"][1]) == 120,
    )
    source.collect()
    cohort = NextCohort(ServedWindow(1, 50.0, 0.0, 1.0), 50.0, 1.0 + HORIZON, True)
    matured = source.matured(cohort, Labels(horizon=HORIZON, unlabeled="negative")).counts
    assert matured.total("outcomes", segment="all") == 120
    assert (
        matured.total("outcomes", segment="all", outcome="tp")
        + matured.total("outcomes", segment="all", outcome="fn")
        == 30
    )
    with pytest.raises(SourceError, match="differs"):
        source.matured(cohort, Labels(horizon=HORIZON * 2))

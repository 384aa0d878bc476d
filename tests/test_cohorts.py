"""The cohort rule and the prediction-log source: which cohort matures when, and its counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kpigate.evidence_record import WindowRecord
from kpigate.policy import Kpi, Labels, Policy, Stage
from kpigate.serve.predlog import Tables
from kpigate.sources.base import Collected
from kpigate.sources.cohorts import (
    ServedWindow,
    judged_cohorts,
    label_at_maturity,
    next_cohort,
)
from kpigate.sources.counts import WindowCounts
from kpigate.sources.predlog import PredlogReader, PredlogSource, db_url_from_env
from kpigate.sources.records import build_record
from tests.cohort_helpers import brute_force, engine_for, random_rows, write_rows
from tests.serve_fixtures import Database

pytest_plugins = ["tests.serve_fixtures"]


def _windows(n: int, length: float = 60.0, stage: float = 5.0) -> list[ServedWindow]:
    return [
        ServedWindow(i + 1, stage, 1000.0 + i * length, 1000.0 + (i + 1) * length) for i in range(n)
    ]


def test_the_oldest_unjudged_cohort_is_next_and_due_one_horizon_after_its_window() -> None:
    windows = _windows(4)
    found = next_cohort(windows, judged=[], horizon=120.0, now=1240.0)
    assert found is not None and found.window.index == 1
    assert found.matures_at == 1180.0 and found.due
    later = next_cohort(windows, judged=[1, 2], horizon=120.0, now=1240.0)
    assert later is not None and later.window.index == 3 and not later.due
    assert later.pending_json() == {"window": 3, "matures_at": 1300.0}


def test_no_cohort_before_a_window_has_finished_serving() -> None:
    assert next_cohort(_windows(2), judged=[], horizon=10.0, now=1000.0) is None
    assert next_cohort(_windows(2), judged=[1, 2], horizon=10.0, now=9999.0) is None


def test_a_window_overlapping_another_stage_has_no_stage() -> None:
    windows = [ServedWindow(1, 5.0, 0.0, 70.0), ServedWindow(2, 25.0, 60.0, 120.0)]
    found = next_cohort(windows, judged=[], horizon=0.0, now=500.0)
    assert found is not None and found.stage is None
    assert found.cohort_json() == {"window": 1, "stage": None, "matured_at": 70.0}


def test_a_negative_horizon_is_refused() -> None:
    with pytest.raises(ValueError, match="horizon"):
        next_cohort(_windows(1), judged=[], horizon=-1.0, now=0.0)


@pytest.mark.parametrize(
    ("label", "labeled_at", "negative", "exclude"),
    [
        (1, 105.0, 1, 1),  # on time
        (0, 110.0, 0, 0),  # on time, at the horizon
        (1, 110.5, 0, None),  # late: no label
        (1, 99.0, 0, None),  # before the prediction: no label
        (None, None, 0, None),  # never labeled
    ],
)
def test_a_label_counts_only_within_the_horizon_of_its_prediction(
    label: int | None, labeled_at: float | None, negative: int, exclude: int | None
) -> None:
    assert label_at_maturity(label, labeled_at, 100.0, 10.0, "negative") == negative
    assert label_at_maturity(label, labeled_at, 100.0, 10.0, "exclude") == exclude


@pytest.mark.parametrize("unlabeled", ["negative", "exclude"])
def test_cohort_counts_equal_a_brute_force_count_over_the_rows(
    database: Database, tmp_path: Path, unlabeled: str
) -> None:
    engine, _ = engine_for(database, tmp_path)
    tables = Tables(database.prefix)
    horizon = 50.0
    rows = random_rows(3000, 0.0, 300.0, horizon, seed=11)
    write_rows(engine, tables, rows)
    for versions in ({"baseline": None, "candidate": None}, {"baseline": "1", "candidate": "3"}):
        reader = PredlogReader(engine, tables, versions["baseline"], versions["candidate"])
        for start, end in ((0.0, 100.0), (100.0, 200.0), (37.5, 251.0)):
            got = reader.labeled(start, end, horizon, unlabeled)  # type: ignore[arg-type]
            want = brute_force(rows, start, end, horizon, unlabeled, versions)  # type: ignore[arg-type]
            assert got.tables == want.tables
            assert got.total("outcomes", segment="all") > 100
    engine.dispose()


def test_negative_counts_silence_as_legitimate_and_exclude_leaves_it_out(
    database: Database, tmp_path: Path
) -> None:
    engine, _ = engine_for(database, tmp_path)
    tables = Tables(database.prefix)
    rows = random_rows(800, 0.0, 100.0, 20.0, seed=3)
    write_rows(engine, tables, rows)
    reader = PredlogReader(engine, tables)
    negative = reader.labeled(0.0, 100.0, 20.0, "negative")
    exclude = reader.labeled(0.0, 100.0, 20.0, "exclude")
    served = sum(1 for r in rows if r["created_at"] < 100.0)
    on_time = sum(
        1
        for r in rows
        if r["label"] is not None and r["created_at"] <= r["labeled_at"] <= r["created_at"] + 20.0
    )
    assert negative.total("outcomes", segment="all") == served
    assert exclude.total("outcomes", segment="all") == on_time
    # Only label-0 cells grow under `negative`: tp and fn are the same.
    for outcome in ("tp", "fn"):
        assert negative.total("outcomes", segment="all", outcome=outcome) == exclude.total(
            "outcomes", segment="all", outcome=outcome
        )
    engine.dispose()


def test_late_labels_are_never_joined_into_a_matured_cohort(
    database: Database, tmp_path: Path
) -> None:
    engine, _ = engine_for(database, tmp_path)
    tables = Tables(database.prefix)
    base = random_rows(1, 0.0, 1.0, 10.0, seed=5)[0]
    rows = []
    for i, (label, delay) in enumerate([(1, 5.0), (1, 10.5), (1, 400.0), (1, -3.0)]):
        rows.append({**base, "request_id": f"late-{i}", "arm": "candidate", "model_version": "2",
                     "decision": "approve", "created_at": 10.0, "label": label,
                     "labeled_at": 10.0 + delay})  # fmt: skip
    write_rows(engine, tables, rows)
    reader = PredlogReader(engine, tables)
    counts = reader.labeled(0.0, 60.0, 10.0, "exclude")
    assert counts.total("outcomes", segment="all") == 1  # only the on-time label
    assert counts.total("outcomes", segment="all", outcome="fn") == 1
    assert reader.label_problems(0.0, 60.0, 10.0) == {"late": 2, "before_prediction": 1}
    engine.dispose()


def test_immediate_counts_of_a_serving_window(database: Database, tmp_path: Path) -> None:
    engine, _ = engine_for(database, tmp_path)
    tables = Tables(database.prefix)
    rows = random_rows(1000, 0.0, 100.0, 10.0, seed=9)
    write_rows(engine, tables, rows)
    counts = PredlogReader(engine, tables).immediate(0.0, 50.0)
    inside = [r for r in rows if r["created_at"] < 50.0]
    for arm in ("baseline", "candidate"):
        declined = sum(1 for r in inside if r["arm"] == arm and r["decision"] == "decline")
        assert counts.total("decisions", arm=arm, decision="decline") == declined
        answered = [r for r in inside if r["arm"] == arm and not r["shadow"]]
        assert counts.buckets("latency", arm=arm)[float("inf")] == len(answered)
        fast = sum(1 for r in answered if r["latency_ms"] <= 10.0)
        assert counts.buckets("latency", arm=arm)[0.01] == fast
    fallbacks = sum(1 for r in inside if r["fallback"] and not r["shadow"])
    assert counts.total("errors", arm="candidate") == fallbacks
    engine.dispose()


def _labels_policy() -> Policy:
    return Policy(
        stages=(Stage(traffic=5, soak=600, interval=60), Stage(traffic=100, soak=600, interval=60)),
        labels=Labels(horizon=120),
        kpis=(
            Kpi(name="recall", min_samples=1),
            Kpi(name="error_rate", direction="lower", min_samples=1),
        ),
    )


class _Matured:
    name = "fake"

    def __init__(self) -> None:
        self.asked: list[int] = []

    def matured(self, cohort: object, labels: Labels) -> Collected:
        self.asked.append(cohort.window.index)  # type: ignore[attr-defined]
        counts = WindowCounts()
        counts.add("outcomes", (("arm", "baseline"), ("outcome", "tp"), ("segment", "all")), 9)
        counts.add("outcomes", (("arm", "candidate"), ("outcome", "tp"), ("segment", "all")), 4)
        return Collected(counts)


def test_a_record_holds_label_kpis_of_its_matured_cohort_only() -> None:
    policy = _labels_policy()
    reader = _Matured()
    records: list[WindowRecord] = []
    for i in range(1, 6):
        base = {"rollout": "r", "window": i, "stage": 5.0, "served_from": 60.0 * (i - 1),
                "served_to": 60.0 * i}  # fmt: skip
        records.append(build_record(policy, reader, Collected(WindowCounts()), records, base))
    history = [r.as_json() for r in records]
    assert "recall" not in history[0]["kpis"] and "error_rate" in history[0]["kpis"]
    assert history[0]["pending"] == {"window": 1, "matures_at": 180.0}
    assert "waiting for labels: the cohort of window 1" in str(history[0]["note"])
    # Window 3 ends at 180 s: the cohort of window 1 has matured.
    assert history[2]["cohort"] == {"window": 1, "stage": 5.0, "matured_at": 180.0}
    assert history[2]["kpis"]["recall"]["candidate"] == {"successes": 4, "trials": 4}
    assert reader.asked == [1, 2, 3]
    assert judged_cohorts(records) == {1, 2, 3}


def test_db_url_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "url"
    secret.write_text("postgresql+psycopg://u:pw@db/kpigate\n")
    assert db_url_from_env({"KPIGATE_DB_URL": "sqlite:///x.db"}) == "sqlite:///x.db"
    assert db_url_from_env({"KPIGATE_DB_URL_FILE": str(secret)}).endswith("db/kpigate")  # type: ignore[union-attr]
    assert db_url_from_env({}) is None


def test_the_source_reads_immediate_counts_per_window_and_cohorts_on_request(
    tmp_path: Path,
) -> None:
    from kpigate.sources.cohorts import NextCohort

    engine, _ = engine_for(Database(None, "s_"), tmp_path)
    tables = Tables("s_")
    rows = random_rows(500, 0.0, 100.0, 30.0, seed=1)
    write_rows(engine, tables, rows)
    now = iter([0.0, 100.0])
    source = PredlogSource(
        PredlogReader(engine, tables), Labels(horizon=30), clock=lambda: next(now)
    )
    source.mark()
    collected = source.collect()
    assert collected.counts.total("decisions") == len(rows)
    assert "outcomes" not in collected.counts.tables  # labels come from cohorts only
    window = ServedWindow(1, 5.0, 0.0, 100.0)
    matured = source.matured(NextCohort(window, 5.0, 130.0, True), Labels(horizon=30))
    assert matured.counts.total("outcomes", segment="all") == len(rows)
    assert "late" in matured.note
    engine.dispose()


def test_postgres_reads_a_cohort_from_the_cohort_index_alone_also_on_an_older_table() -> None:
    """A log created before the cohort index existed gets it from Tables.create (the router's
    start), and every query of a look (label and immediate tables) can be answered by an
    index-only scan of it, so the index carries every column the queries read. Upstream:
    PostgreSQL's src/backend/optimizer/path/indxpath.c (check_index_only: each column the
    query needs must be a key or INCLUDE column of the index)."""
    import uuid

    from sqlalchemy import event, inspect, text

    from kpigate.serve.predlog import make_engine
    from tests.serve_fixtures import postgres_or_skip

    engine = make_engine(postgres_or_skip())
    tables = Tables(f"c{uuid.uuid4().hex[:10]}_")
    older = Tables(tables.prefix)
    older.predictions.indexes.discard(older.cohort_index)
    name = tables.predictions.name
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, sql: str, params: Any, *rest: Any) -> None:
        statements.append((sql, params))

    try:
        older.metadata.create_all(engine)
        assert f"{tables.prefix}pred_cohort" not in {
            i["name"] for i in inspect(engine).get_indexes(name)
        }
        write_rows(engine, tables, random_rows(2000, 0.0, 300.0, 50.0, seed=5))  # create()
        assert f"{tables.prefix}pred_cohort" in {
            i["name"] for i in inspect(engine).get_indexes(name)
        }
        tables.create(engine)  # idempotent
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"VACUUM ANALYZE {name}"))  # sets the visibility map
        event.listen(engine, "before_cursor_execute", seen)
        reader = PredlogReader(engine, tables, "1", "2")
        reader.labeled(0.0, 100.0, 50.0, "negative")
        reader.immediate(0.0, 100.0)
        event.remove(engine, "before_cursor_execute", seen)
        assert len(statements) == 5
        with engine.connect() as conn:
            # A 2,000-row table is cheaper to scan whole: leave the planner only index paths.
            conn.execute(text("SET enable_seqscan = off"))
            conn.execute(text("SET enable_bitmapscan = off"))
            for sql, params in statements:
                plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {sql}", params))
                assert f"Index Only Scan using {tables.prefix}pred_cohort" in plan, (sql, plan)
    finally:
        tables.drop(engine)
        engine.dispose()

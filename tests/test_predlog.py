"""Every prediction is logged; labels join exactly once and drive the outcome metrics.

Runs on a SQLite file and on PostgreSQL (skipped when PostgreSQL is unreachable, unless
KPIGATE_REQUIRE_POSTGRES=1).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import select

from kpigate.fraud.schema import amount_band
from kpigate.serve.predlog import Tables, make_engine
from tests.serve_fixtures import (
    Database,
    FixedModel,
    RouterServer,
    constant,
    metric_value,
    transactions,
)


def _start(start_router: Callable[..., RouterServer], db: Database, **kw: Any) -> RouterServer:
    models = {
        "champion": FixedModel("1", score=constant(0.1)),
        "candidate": FixedModel("2", score=constant(0.9)),
    }
    if db.url:
        kw["db_url"] = db.url
    return start_router(models, table_prefix=db.prefix, **kw)


def _rows(router: RouterServer) -> list[dict[str, Any]]:
    engine = make_engine(router.config.db_url)
    table = Tables(router.config.table_prefix).predictions
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(select(table).order_by(table.c.id))]
    engine.dispose()
    return rows


def test_every_prediction_is_logged_and_flushed_on_shutdown(
    start_router: Callable[..., RouterServer], database: Database
) -> None:
    router = _start(start_router, database, initial_weight=50.0)
    bodies = transactions(60, seed=21)
    before = time.time()
    with router.client() as client:
        answers = [client.post("/predict", json=b).json() for b in bodies[:10]]
        answers += client.post("/predict", json={"instances": bodies[10:]}).json()["predictions"]
    rows = _rows(router)  # committed before each answer: no flush, no stop needed
    assert len(rows) == 60
    by_id = {r["request_id"]: r for r in rows}
    for body, answer in zip(bodies, answers, strict=True):
        row = by_id[answer["request_id"]]
        assert row["entity_key"] == body["card_id"]
        assert (row["arm"], row["model_version"], row["decision"]) == (
            answer["arm"],
            answer["model_version"],
            answer["decision"],
        )
        assert row["score"] == answer["score"]
        assert (row["region"], row["payment_method"]) == (body["region"], body["payment_method"])
        assert row["amount_band"] == amount_band(body["amount"])
        assert row["latency_ms"] > 0 and before <= row["created_at"] <= time.time()
        assert row["shadow"] is False and row["label"] is None
    assert {r["arm"] for r in rows} == {"baseline", "candidate"}


def test_feedback_joins_exactly_once_and_counts_the_rest(
    start_router: Callable[..., RouterServer], database: Database
) -> None:
    router = _start(start_router, database, initial_weight=50.0)
    with router.client() as client:
        answers = client.post("/predict", json={"instances": transactions(40, seed=22)}).json()
        answers = answers["predictions"]
        labels = [{"request_id": a["request_id"], "label": i % 2} for i, a in enumerate(answers)]
        # Posted right away: rows still in the write buffer must be found.
        first = client.post("/feedback", json={"labels": labels[:20]}).json()
        assert (first["joined"], first["duplicate"], first["unknown"]) == (20, 0, 0)
        second = client.post(
            "/feedback",
            json=[
                *labels[:5],  # already joined
                labels[20],
                labels[20],  # repeated within the batch
                {"request_id": "no-such-id", "label": 1},
                {"request_id": answers[21]["request_id"], "label": 2},
                {"request_id": answers[22]["request_id"], "label": True},
                {"label": 1},
            ],
        ).json()
        single = client.post("/feedback", json=labels[23]).json()
        # The rest, posted twice concurrently: each joins once.
        with ThreadPoolExecutor(4) as pool:
            reports = list(
                pool.map(
                    lambda _: router.client().post("/feedback", json=labels[24:]).json(), range(4)
                )
            )
        text = client.get("/metrics").text
    assert {k: second[k] for k in ("joined", "duplicate", "unknown", "invalid", "late")} == {
        "joined": 1,
        "duplicate": 6,
        "unknown": 1,
        "invalid": 3,
        "late": 0,
    }
    assert {p["result"] for p in second["problems"]} == {"duplicate", "unknown", "invalid"}
    assert single["joined"] == 1
    assert sum(r["joined"] for r in reports) == 16
    assert sum(r["duplicate"] for r in reports) == 48

    joined = [labels[i] for i in range(40) if i not in (21, 22)]
    rows = {r["request_id"]: r for r in _rows(router)}
    assert sum(r["label"] is not None for r in rows.values()) == len(joined)
    expected: dict[tuple[str, str], int] = {}
    for item in joined:
        row = rows[item["request_id"]]
        assert row["label"] == item["label"] and row["labeled_at"] >= row["created_at"]
        predicted = row["decision"] == "decline"
        outcome = (
            ("tp" if item["label"] else "fp") if predicted else ("fn" if item["label"] else "tn")
        )
        expected[(row["arm"], outcome)] = expected.get((row["arm"], outcome), 0) + 1
    for (arm, outcome), n in expected.items():
        assert (
            metric_value(text, "kpigate_outcomes_total", arm=arm, outcome=outcome, segment="all")
            == n
        )
    assert metric_value(text, "kpigate_outcomes_total", segment="all") == len(joined)
    # Each label also counts once per segment dimension.
    assert metric_value(text, "kpigate_outcomes_total") == 4 * len(joined)
    assert metric_value(text, "kpigate_labeled_score_count") == len(joined)
    assert metric_value(text, "kpigate_label_lag_seconds_count") == len(joined)
    assert metric_value(text, "kpigate_feedback_labels_total", result="joined") == len(joined)
    assert metric_value(text, "kpigate_feedback_labels_total", result="unknown") == 1


def test_labels_past_the_window_are_late_and_not_counted(
    start_router: Callable[..., RouterServer], database: Database
) -> None:
    # A 2 s window: the fresh prediction's label must land inside it even when a busy machine
    # (a parallel test worker, a slow PostgreSQL commit) takes a second to answer and post.
    router = _start(start_router, database, label_window_s=2.0)
    with router.client() as client:
        old = client.post("/predict", json=transactions(1, seed=23)[0]).json()
        time.sleep(2.5)
        fresh = client.post("/predict", json=transactions(1, seed=24)[0]).json()
        report = client.post(
            "/feedback",
            json=[{"request_id": old["request_id"], "label": 1},
                  {"request_id": fresh["request_id"], "label": 0}],
        ).json()  # fmt: skip
        text = client.get("/metrics").text
    assert (report["late"], report["joined"]) == (1, 1)
    assert metric_value(text, "kpigate_outcomes_total", segment="all") == 1


def test_shadow_copies_are_logged_and_labeled(
    start_router: Callable[..., RouterServer], database: Database
) -> None:
    router = _start(start_router, database, initial_weight=100.0, initial_mode="shadow")
    with router.client() as client:
        answer = client.post("/predict", json=transactions(1, seed=25)[0]).json()
        deadline = time.monotonic() + 5
        while metric_value(client.get("/metrics").text, "kpigate_shadow_comparisons_total") < 1:
            assert time.monotonic() < deadline, "shadow copy never scored"
            time.sleep(0.02)
        report = client.post("/feedback", json={"request_id": answer["request_id"], "label": 1})
        text = client.get("/metrics").text
    assert report.json()["joined"] == 1
    rows = _rows(router)
    assert sorted((r["arm"], r["shadow"], r["label"]) for r in rows) == [
        ("baseline", False, 1),
        ("candidate", True, 1),
    ]
    assert metric_value(text, "kpigate_outcomes_total", arm="baseline", shadow="false",
                        segment="all", outcome="fn") == 1  # fmt: skip
    assert metric_value(text, "kpigate_outcomes_total", arm="candidate", shadow="true",
                        segment="all", outcome="tp") == 1  # fmt: skip

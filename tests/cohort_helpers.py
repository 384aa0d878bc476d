"""Prediction-log rows for cohort tests: written straight into the router's table, and counted
by brute force in Python with the cohort rule, to check the SQL of kpigate/sources/predlog.py."""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import Engine

from kpigate.serve.metrics import SCORE_BUCKETS
from kpigate.serve.predlog import Tables, make_engine
from kpigate.sources.cohorts import Unlabeled, label_at_maturity, outcome_of
from kpigate.sources.counts import WindowCounts, labels_of
from tests.serve_fixtures import Database

REGIONS = ("eu", "us", "apac")
METHODS = ("card", "wallet")
BANDS = ("low", "high")


def engine_for(database: Database, tmp_path: Path) -> tuple[Engine, str]:
    url = database.url or f"sqlite:///{tmp_path / 'predlog.db'}"
    return make_engine(url), url


def random_rows(
    n: int, start: float, end: float, horizon: float, seed: int
) -> list[dict[str, Any]]:
    """Rows of both arms (two candidate versions, shadow copies), labels on time, late, before
    the prediction, or missing."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        created = rng.uniform(start, end)
        arm = rng.choice(("baseline", "candidate"))
        version = "1" if arm == "baseline" else rng.choice(("2", "3"))
        score = rng.random()
        kind = rng.random()
        label: int | None = rng.choice((0, 1))
        labeled_at: float | None
        if kind < 0.5:
            labeled_at = created + rng.uniform(0, horizon)
        elif kind < 0.6:
            labeled_at = created + horizon + rng.uniform(0.001, horizon)  # late
        elif kind < 0.65:
            labeled_at = created - rng.uniform(0.001, 10)  # before the prediction
        else:
            label, labeled_at = None, None
        rows.append(
            {
                "request_id": f"r{seed}-{i}",
                "entity_key": f"card-{rng.randrange(50)}",
                "model_version": version,
                "arm": arm,
                "shadow": rng.random() < 0.1,
                "fallback": arm == "baseline" and rng.random() < 0.05,
                "score": score,
                "decision": "decline" if score >= 0.5 else "approve",
                "region": rng.choice(REGIONS),
                "payment_method": rng.choice(METHODS),
                "amount_band": rng.choice(BANDS),
                "latency_ms": rng.uniform(0.2, 40),
                "created_at": created,
                "label": label,
                "labeled_at": labeled_at,
            }
        )
    return rows


def write_rows(engine: Engine, tables: Tables, rows: list[dict[str, Any]]) -> None:
    tables.create(engine)
    with engine.begin() as conn:
        conn.execute(insert(tables.predictions), rows)


def brute_force(
    rows: Iterable[dict[str, Any]],
    start: float,
    end: float,
    horizon: float,
    unlabeled: Unlabeled,
    versions: dict[str, str | None],
) -> WindowCounts:
    """The label tables of the cohort served in [start, end), one row at a time."""
    counts = WindowCounts()
    for row in rows:
        if not start <= row["created_at"] < end:
            continue
        wanted = versions[row["arm"]]
        if wanted is not None and row["model_version"] != wanted:
            continue
        label = label_at_maturity(
            row["label"], row["labeled_at"], row["created_at"], horizon, unlabeled
        )
        if label is None:
            continue
        outcome = outcome_of(row["decision"] == "decline", label)
        for segment in (
            "all",
            f"region={row['region']}",
            f"payment_method={row['payment_method']}",
            f"amount_band={row['amount_band']}",
        ):
            keys = {"arm": row["arm"], "segment": segment, "outcome": outcome}
            counts.add("outcomes", labels_of(keys, ("arm", "segment", "outcome")), 1.0)
        for bound in (*SCORE_BUCKETS, float("inf")):
            le = "+Inf" if bound == float("inf") else repr(float(bound))
            keys = {"arm": row["arm"], "label": str(label), "le": le}
            hit = 1.0 if row["score"] <= bound else 0.0
            counts.add("scores", labels_of(keys, ("arm", "label", "le")), hit)
    return counts

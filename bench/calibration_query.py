"""How long the prediction-log source takes to read the A/A calibration windows of a rollout.

Fills a fresh PostgreSQL table with bench/cohort_query.py's rows (100,000 entity keys, 30 days,
the router's schema and indexes), then times PredlogSource.calibration for one calibration
window (the baseline's rows of the window split by md5 of the user, immediate tables, plus
the label tables of its cohort one horizon earlier: four queries) for windows of 10 minutes and
1 hour, and records.calibration_records for all 24 windows a rollout reads at its start. Prints
the plan PostgreSQL chooses for the split query. The table is dropped at the end.

Run: python bench/calibration_query.py --rows 1000000   (PostgreSQL from KPIGATE_DB_URL,
default the test database on 127.0.0.1).
"""

from __future__ import annotations

import sys
from functools import partial

import cohort_query as cq  # bench/cohort_query.py (the script's folder is on sys.path)
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql

from kpigate.policy import Kpi, Labels, Policy, Stage
from kpigate.sources.cohorts import ServedWindow
from kpigate.sources.predlog import PredlogReader, PredlogSource
from kpigate.sources.records import calibration_records

WINDOWS = (("10 minutes", 600.0), ("1 hour", 3600.0))
HORIZON = 86400.0  # cohorts a day before the window: their labels final by the start


def _policy(interval: float) -> Policy:
    return Policy(
        stages=(
            Stage(traffic=5, soak=HORIZON + interval, interval=interval),
            Stage(traffic=100, soak=HORIZON + interval, interval=interval),
        ),
        labels=Labels(horizon=HORIZON),
        kpis=(
            Kpi(name="recall"),
            Kpi(name="precision"),
            Kpi(name="approval_rate"),
            Kpi(name="auc", type="auc"),
            Kpi(name="latency_p95", type="quantile", quantile=0.95, direction="lower", margin=5),
        ),
    )


def _explain(engine: object, reader: PredlogReader, start: float, end: float) -> str:
    arm, rows = reader._split(calibration=True)
    t = reader.table
    col = arm.label("arm_of")
    query = (
        select(col, t.c.decision, func.count())
        .where(t.c.created_at >= start, t.c.created_at < end, rows)
        .group_by(col, t.c.decision)
    )
    sql = str(query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:  # type: ignore[attr-defined]
        plan = [row[0] for row in conn.exec_driver_sql("EXPLAIN " + sql)]
    return next((line.strip() for line in plan if "Index" in line), plan[-1].strip())


def main(argv: list[str] | None = None) -> int:
    args = cq.size_arguments(__doc__, argv, repeats=5)
    with cq.filled_log("c", args.rows) as (engine, tables):
        reader = PredlogReader(engine, tables, "1", "2")
        start = cq.T0 + cq.SPAN / 2  # the rollout starts mid-log
        print(
            "| calibration window | baseline rows in it (and in its cohort) | one window "
            "(median / max s) | 24 windows at the start (median / max s) |\n|---|---:|---:|---:|"
        )
        for name, length in WINDOWS:
            policy = _policy(length)
            source = PredlogSource(reader, policy.labels)
            window = ServedWindow(-1, 5.0, start - length, start)
            cohort = ServedWindow(-1, 5.0, start - length - HORIZON, start - HORIZON)
            one = cq.timed(partial(source.calibration, window, cohort), args.repeats)
            repeats = max(1, args.repeats // 2)
            all_24 = cq.timed(partial(calibration_records, policy, source, "r", start), repeats)
            rows = round(args.rows * length / cq.SPAN * 0.9)  # 90% of rows are the baseline's
            print(
                f"| {name} | {rows:,} | {one[0]:.3f} / {one[1]:.3f} | "
                f"{all_24[0]:.3f} / {all_24[1]:.3f} |"
            )
        print(
            f"\nPlan of the split query (1 hour): {_explain(engine, reader, start - 3600, start)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

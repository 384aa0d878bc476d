"""How long the prediction-log source takes to compute the rollout-to-date design effects.

Fills a fresh PostgreSQL table with bench/cohort_query.py's rows (100,000 entity keys, 30 days),
then times PredlogSource.design_effects (two queries: per user, then per arm, over every row of
the rollout so far) for rollouts that have run 1 hour, 1 day and 7 days. The table is dropped at
the end. Its cost grows with the rollout's rows, not the log's.

Run: python bench/deff_query.py --rows 1000000   (PostgreSQL from KPIGATE_DB_URL, default the
test database on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from functools import partial

import cohort_query as cq  # bench/cohort_query.py (the script's folder is on sys.path)

from kpigate.serve.predlog import Tables, make_engine
from kpigate.sources.cohorts import ServedWindow
from kpigate.sources.predlog import PredlogReader, PredlogSource

ROLLOUTS = (("1 hour", 3600.0), ("1 day", 86400.0), ("7 days", 7 * 86400.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the log (1M)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.rows < 1 or args.repeats < 1:
        parser.error("--rows and --repeats must be at least 1")
    engine = make_engine(os.environ.get("KPIGATE_DB_URL", cq.DEFAULT_PG))
    tables = Tables(f"d{uuid.uuid4().hex[:8]}_")
    try:
        cq.fill(engine, tables, args.rows, chunk=50_000)
        source = PredlogSource(PredlogReader(engine, tables, "1", "2"), labels=None)
        start = cq.T0 + cq.SPAN / 2
        print("| rollout so far | its rows | design effects (median / max s) |\n|---|---:|---:|")
        for name, length in ROLLOUTS:
            window = ServedWindow(2, 5.0, start + length - 600.0, start + length)
            call = partial(source.design_effects, start, window, None)
            median, worst = cq.timed(call, args.repeats)
            rows = round(args.rows * length / cq.SPAN)
            print(f"| {name} | {rows:,} | {median:.3f} / {worst:.3f} |")
    finally:
        tables.drop(engine)
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())

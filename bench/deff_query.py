"""How long the prediction-log source takes to compute the rollout-to-date design effects.

Fills a fresh PostgreSQL table with bench/cohort_query.py's rows (100,000 entity keys, 30 days),
then times PredlogSource.design_effects (two queries: per user, then per arm, over every row of
the rollout so far) for rollouts that have run 1 hour, 1 day and 7 days. The table is dropped at
the end. Its cost grows with the rollout's rows, not the log's.

Run: python bench/deff_query.py --rows 1000000   (PostgreSQL from KPIGATE_DB_URL, default the
test database on 127.0.0.1).
"""

from __future__ import annotations

import sys
from functools import partial

import cohort_query as cq  # bench/cohort_query.py (the script's folder is on sys.path)

from kpigate.sources.cohorts import ServedWindow
from kpigate.sources.predlog import PredlogReader, PredlogSource

ROLLOUTS = (("1 hour", 3600.0), ("1 day", 86400.0), ("7 days", 7 * 86400.0))


def main(argv: list[str] | None = None) -> int:
    args = cq.size_arguments(__doc__, argv, repeats=3)
    with cq.filled_log("d", args.rows) as (engine, tables):
        source = PredlogSource(PredlogReader(engine, tables, "1", "2"), labels=None)
        start = cq.T0 + cq.SPAN / 2
        print("| rollout so far | its rows | design effects (median / max s) |\n|---|---:|---:|")
        for name, length in ROLLOUTS:
            window = ServedWindow(2, 5.0, start + length - 600.0, start + length)
            call = partial(source.design_effects, start, window, None)
            median, worst = cq.timed(call, args.repeats)
            rows = round(args.rows * length / cq.SPAN)
            print(f"| {name} | {rows:,} | {median:.3f} / {worst:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

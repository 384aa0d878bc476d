"""How fast the prediction-log source reads a matured cohort from a big prediction log.

Fills a fresh `<prefix>predictions` table (the router's own schema and indexes, from
kpigate/serve/predlog.py Tables) with N rows spread over 30 days, generated inside the
database (generate_series on PostgreSQL, a recursive CTE on SQLite), then times what
soak-and-collect and `kpigate windows` run per look: the matured cohort's label tables
(PredlogReader.labeled, two queries) and the serving window's immediate tables
(PredlogReader.immediate, three queries), for cohorts of 10 minutes, 1 hour and 1 day, plus the
maturity job's claim of one window's rows. The tables are dropped at the end.

Run: make bench-cohorts   (or: python bench/cohort_query.py --rows 10000000 --write
docs/prediction-log.md). PostgreSQL from KPIGATE_DB_URL (default: the test database on
127.0.0.1). Exits 1 when a cohort of 10 minutes, 1 hour or 1 day, or the maturity claim,
takes a second or more on PostgreSQL.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine

from kpigate.serve.maturity import MaturityJob
from kpigate.serve.predlog import DatabaseTimeouts, Tables, make_engine
from kpigate.sources.predlog import PredlogReader

BEGIN = "<!-- cohort query benchmark: written by bench/cohort_query.py -->"
END = "<!-- end of cohort query benchmark -->"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
T0 = 1_764_547_200.0  # 2025-12-01T00:00Z
SPAN = 30 * 86400.0
HORIZON = 7 * 86400.0
COHORTS = (("10 minutes", 600.0), ("1 hour", 3600.0), ("1 day", 86400.0))

# One row per i: 10% candidate, 3% fraud, 60% of labels sent (late ones too), segments cycling.
ROW = """
    md5(({i})::text || '{salt}'), 'card-' || (({i}) % 100000),
    CASE WHEN ({i}) % 10 = 0 THEN '2' ELSE '1' END,
    CASE WHEN ({i}) % 10 = 0 THEN 'candidate' ELSE 'baseline' END,
    {false}, {false}, {score}, CASE WHEN {score_again} > 0.9 THEN 'decline' ELSE 'approve' END,
    CASE ({i}) % 3 WHEN 0 THEN 'eu' WHEN 1 THEN 'us' ELSE 'apac' END,
    CASE ({i}) % 2 WHEN 0 THEN 'card' ELSE 'wallet' END,
    CASE ({i}) % 3 WHEN 0 THEN 'low' WHEN 1 THEN 'mid' ELSE 'high' END,
    5 + ({i}) % 20, {t0} + ({i}) * {step},
    CASE WHEN ({i}) % 5 < 3 THEN CASE WHEN ({i}) % 33 = 0 THEN 1 ELSE 0 END END,
    CASE WHEN ({i}) % 5 < 3 THEN {t0} + ({i}) * {step} + (({i}) % 40) * 21600 END,
    CASE WHEN ({i}) * {step} < {half} THEN {t0} + ({i}) * {step} + {horizon} END
"""
COLUMNS = (
    "request_id, entity_key, model_version, arm, shadow, fallback, score, decision, region, "
    "payment_method, amount_band, latency_ms, created_at, label, labeled_at, matured_at"
)


def fill(engine: Engine, tables: Tables, rows: int, chunk: int = 1_000_000) -> float:
    """Insert `rows` rows in the database itself; returns seconds."""
    tables.create(engine)
    name = tables.predictions.name
    step = SPAN / rows
    # Rows of the first half have matured already, as in a log the router has run on for weeks.
    shape = {"t0": T0, "step": step, "half": SPAN / 2, "horizon": HORIZON}
    started = time.perf_counter()
    postgres = engine.dialect.name == "postgresql"
    for lo in range(0, rows, chunk):
        hi = min(rows, lo + chunk)
        if postgres:
            values = ROW.format(i="g", salt="k", false="false", score="random()",
                                score_again="random()", **shape)  # fmt: skip
            sql = (
                f"INSERT INTO {name} ({COLUMNS}) SELECT {values} "
                f"FROM generate_series({lo}, {hi - 1}) AS g"
            )
        else:
            score = "(abs(random()) % 1000000) / 1000000.0"
            values = ROW.format(i="g", salt="k", false="0", score=score, score_again=score,
                                **shape)  # fmt: skip
            values = values.replace("md5(", "hex(").replace("::text", "")
            sql = (
                f"WITH RECURSIVE s(g) AS (SELECT {lo} UNION ALL SELECT g + 1 FROM s WHERE g < "
                f"{hi - 1}) INSERT INTO {name} ({COLUMNS}) SELECT {values} FROM s"
            )
        with engine.begin() as conn:
            conn.execute(text(sql))
        print(f"  {hi:>10,} rows ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"VACUUM ANALYZE {name}" if postgres else "ANALYZE"))
    return time.perf_counter() - started


def size_arguments(doc: str | None, argv: list[str] | None, repeats: int) -> argparse.Namespace:
    """--rows and --repeats, the arguments of the smaller one-query benchmarks beside this one."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the log (1M)")
    parser.add_argument("--repeats", type=int, default=repeats)
    args = parser.parse_args(argv)
    if args.rows < 1 or args.repeats < 1:
        parser.error("--rows and --repeats must be at least 1")
    return args


@contextmanager
def filled_log(letter: str, rows: int) -> Iterator[tuple[Engine, Tables]]:
    """A fresh `<letter><random>_predictions` table of `rows` rows in the PostgreSQL log
    (KPIGATE_DB_URL, default the test database), dropped afterwards."""
    engine = make_engine(os.environ.get("KPIGATE_DB_URL", DEFAULT_PG))
    tables = Tables(f"{letter}{uuid.uuid4().hex[:8]}_")
    try:
        fill(engine, tables, rows, chunk=50_000)
        yield engine, tables
    finally:
        tables.drop(engine)
        engine.dispose()


def timed(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, max) seconds over `repeats` calls after one warm-up."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times), max(times)


def measure(engine: Engine, tables: Tables, rows: int, repeats: int) -> list[dict[str, object]]:
    reader = PredlogReader(engine, tables, "1", "2")
    out: list[dict[str, object]] = []
    for label, length in COHORTS:
        start = T0 + SPAN / 2
        end = start + length
        in_cohort = round(rows * length / SPAN)
        labeled = timed(partial(reader.labeled, start, end, HORIZON, "negative"), repeats)
        immediate = timed(partial(reader.immediate, start, end), repeats)
        out.append({"backend": engine.dialect.name, "rows": rows, "cohort": label,
                    "cohort_rows": in_cohort, "labeled": labeled,
                    "immediate": immediate})  # fmt: skip
    # The maturity job claiming one 10-minute window's rows (first claim after a restart).
    now = T0 + SPAN / 2 + 600.0 + HORIZON
    job = MaturityJob(engine, tables, HORIZON, lambda row, label: None, clock=lambda: now)
    started = time.perf_counter()
    claimed = job.claim()
    out.append({"backend": engine.dialect.name, "rows": rows, "cohort": "maturity claim",
                "cohort_rows": claimed, "labeled": (time.perf_counter() - started, 0.0),
                "immediate": (0.0, 0.0)})  # fmt: skip
    return out


def explain(engine: Engine, tables: Tables) -> str:
    if engine.dialect.name != "postgresql":
        return ""
    name = tables.predictions.name
    sql = (
        f"EXPLAIN SELECT arm, decision, count(*) FROM {name} WHERE created_at >= :a AND "
        "created_at < :b GROUP BY arm, decision"
    )
    with engine.connect() as conn:
        plan = [row[0] for row in conn.execute(text(sql), {"a": T0, "b": T0 + 600})]
    return str(next((line.strip() for line in plan if "Index" in line), plan[-1].strip()))


def _table(results: list[dict[str, object]]) -> str:
    lines = [
        "| backend | rows in the log | cohort | its rows | label tables (median / max s) | "
        "immediate tables (median / max s) |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in results:
        lab, imm = r["labeled"], r["immediate"]
        assert isinstance(lab, tuple) and isinstance(imm, tuple)
        immediate = "-" if r["cohort"] == "maturity claim" else f"{imm[0]:.3f} / {imm[1]:.3f}"
        labeled = (
            f"{lab[0]:.3f}" if r["cohort"] == "maturity claim" else f"{lab[0]:.3f} / {lab[1]:.3f}"
        )
        lines.append(f"| {r['backend']} | {r['rows']:,} | {r['cohort']} | {r['cohort_rows']:,} | "
                     f"{labeled} | {immediate} |")  # fmt: skip
    return "\n".join(lines)


def write_section(path: Path, body: str) -> None:
    old = path.read_text() if path.exists() else ""
    section = f"{BEGIN}\n\n{body}\n\n{END}\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        path.write_text(head + section + rest.split(END, 1)[1].lstrip("\n"))
    else:
        path.write_text(old.rstrip("\n") + "\n\n" + section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000, help="PostgreSQL rows (10M)")
    parser.add_argument("--sqlite-rows", type=int, default=1_000_000, help="SQLite rows (1M)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", help="also write the section into this markdown file")
    args = parser.parse_args(argv)
    prefix = f"bench{uuid.uuid4().hex[:8]}_"
    results: list[dict[str, object]] = []
    plan = ""
    fills = []
    targets = [(os.environ.get("KPIGATE_DB_URL") or DEFAULT_PG, args.rows)]
    if args.sqlite_rows:
        sqlite_file = Path(tempfile.gettempdir()) / f"{prefix}predlog.db"
        targets.append((f"sqlite:///{sqlite_file}", args.sqlite_rows))
    for url, rows in targets:
        # Filling a million rows per statement outlasts the readers' 5 s statement timeout; the
        # queries are then timed through an engine with the readers' own timeouts.
        loader = make_engine(url, DatabaseTimeouts(statement_s=3600.0))
        engine = make_engine(url)
        tables = Tables(prefix)
        try:
            print(f"{engine.dialect.name}: filling {rows:,} rows", file=sys.stderr)
            fills.append(
                f"{engine.dialect.name} {rows:,} rows in {fill(loader, tables, rows):.0f} s"
            )
            results += measure(engine, tables, rows, args.repeats)
            plan = plan or explain(engine, tables)
        finally:
            tables.drop(loader)
            engine.dispose()
            loader.dispose()
            if url.startswith("sqlite"):
                Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
    slow = [
        r
        for r in results
        if r["backend"] == "postgresql"
        and r["cohort"] in ("10 minutes", "1 hour", "1 day", "maturity claim")
        and max(r["labeled"][0], r["immediate"][0]) >= 1.0  # type: ignore[index]
    ]
    body = "\n".join([
        "## Measured: cohort queries on a big prediction log",
        "",
        _table(results),
        "",
        f"PostgreSQL plan for a serving window: `{plan}`." if plan else "",
        "",
        f"Filled in the database ({'; '.join(fills)}); rows spread over 30 days, 10% on the "
        "candidate, the first half already matured. Machine: "
        f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs), Python "
        f"{platform.python_version()}.",
        "",
        f"Command: `python bench/cohort_query.py --rows {args.rows} --sqlite-rows "
        f"{args.sqlite_rows}` (`make bench-cohorts`).",
    ])  # fmt: skip
    print(body)
    if args.write:
        write_section(Path(args.write), body)
    if slow:
        print("a 10-minute or 1-hour cohort took >= 1 s on PostgreSQL", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

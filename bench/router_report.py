"""The router benchmark's arithmetic and its report: pair ratios, spreads, targets, Markdown.

A pair is two servers measured at the same concurrency in the same repetition (minutes apart,
interleaved with the others), so drift of a busy machine hits both sides of a ratio alike. Every
ratio is given as median (min-max) over the pairs, and the targets are judged on the median.
Nothing here times anything: it reads measurements the harness made (and the tests make up).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from wrk_load import Measurement

CLIENTS = (1, 16, 64)
KPIGATE = "kpigate"  # weight 0, SQLite log, metrics on: the configuration the targets are about
CANARY = "kpigate-canary50"
KPIGATE_PG = "kpigate-pg"
CANARY_PG = "kpigate-pg-canary50"
KSERVE = "kserve-v1"
MLSERVER = "mlserver"
CEILING = "http-ceiling"
PEERS = (KSERVE, MLSERVER, CEILING)

Metric = Callable[[Measurement], float]


def connections(clients: int) -> str:
    return "1 client" if clients == 1 else f"{clients} clients"


def throughput(m: Measurement) -> float:
    return m.rps


def p50(m: Measurement) -> float:
    return m.p50_ms


def p99(m: Measurement) -> float:
    return m.p99_ms


@dataclass(frozen=True)
class LogCost:
    """How long kpigate's answers waited for their log commit, and rows per commit."""

    wait_p50_ms: float
    wait_p99_ms: float
    rows_per_commit: float


@dataclass(frozen=True)
class Run:
    rep: int
    position: int  # order in the whole run, from 1
    server: str
    clients: int
    measurement: Measurement
    load1: float  # one-minute load average when the run started
    log_cost: LogCost | None = None


@dataclass(frozen=True)
class Spread:
    low: float
    median: float
    high: float
    count: int

    def text(self, digits: int = 2, unit: str = "") -> str:
        mid = f"{self.median:.{digits}f}{unit}"
        if self.count == 1:
            return f"{mid} (1 pair)"
        return f"{mid} ({self.low:.{digits}f}–{self.high:.{digits}f}, {self.count} pairs)"


def spread(values: Iterable[float]) -> Spread | None:
    items = sorted(values)
    if not items:
        return None
    return Spread(items[0], statistics.median(items), items[-1], len(items))


def measurements(runs: Iterable[Run], server: str, clients: int) -> dict[int, Measurement]:
    """The server's measurement at that concurrency, by repetition."""
    return {r.rep: r.measurement for r in runs if r.server == server and r.clients == clients}


def pair_ratios(
    runs: list[Run], top: str, bottom: str, clients: int, metric: Metric
) -> list[float]:
    """metric(top) / metric(bottom) for every repetition that measured both."""
    a, b = measurements(runs, top, clients), measurements(runs, bottom, clients)
    return [
        metric(a[rep]) / metric(b[rep]) for rep in sorted(a.keys() & b.keys()) if metric(b[rep]) > 0
    ]


@dataclass(frozen=True)
class Check:
    target: str
    measured: str
    met: bool


def _absent(runs: list[Run], missing: dict[str, str], servers: tuple[str, ...]) -> str | None:
    """Why a check cannot be judged: a server missing, or no measurement of it."""
    for server in servers:
        if server in missing:
            return f"{server} missing: {missing[server]}"
        if not any(r.server == server for r in runs):
            return f"{server} not measured"
    return None


def ratio_check(
    runs: list[Run],
    missing: dict[str, str],
    target: str,
    pair: tuple[str, str],
    clients: int,
    metric: Metric,
    bound: tuple[str, float],
) -> Check:
    """Judges the median pair ratio against `bound`: (">=", x) or ("<=", x)."""
    absent = _absent(runs, missing, pair)
    found = spread(pair_ratios(runs, pair[0], pair[1], clients, metric))
    if absent or found is None:
        return Check(target, absent or f"no pair at {connections(clients)}", False)
    sense, limit = bound
    met = found.median >= limit if sense == ">=" else found.median <= limit
    return Check(target, found.text(unit="x"), met)


def p99_check(runs: list[Run], missing: dict[str, str], clients: int, limit_ms: float) -> Check:
    target = f"{connections(clients)}: kpigate p99 <= {limit_ms:g} ms"
    absent = _absent(runs, missing, (KPIGATE,))
    found = spread(p99(m) for m in measurements(runs, KPIGATE, clients).values())
    if absent or found is None:
        return Check(target, absent or f"not measured at {connections(clients)}", False)
    text = found.text(1, " ms").replace("pairs", "runs").replace("pair", "run")
    return Check(target, text, found.median <= limit_ms)


def error_text(non_2xx: int, socket_errors: int) -> str:
    """The two kinds of wrk error, apart: answers the server gave with a non-2xx status, and
    socket errors (connect, read, write, and requests with no answer within wrk's --timeout),
    which say nothing about the status the server would have given."""
    return f"{non_2xx:,} non-2xx answers, {socket_errors:,} socket errors"


def error_check(runs: list[Run], missing: dict[str, str]) -> Check:
    mine = [r for r in runs if r.server.startswith(KPIGATE)]
    non_2xx = sum(r.measurement.non_2xx for r in mine)
    socket_errors = sum(r.measurement.socket_errors for r in mine)
    requests = sum(r.measurement.requests for r in mine)
    absent = _absent(runs, missing, (KPIGATE,))
    measured = absent or f"{error_text(non_2xx, socket_errors)} in {requests:,} requests"
    met = absent is None and non_2xx + socket_errors == 0
    return Check("every kpigate request answered 2xx", measured, met)


def checks(runs: list[Run], missing: dict[str, str]) -> list[Check]:
    """Issue 12's targets, in the same run, on kpigate at weight 0 with the SQLite log."""
    out = [
        ratio_check(
            runs,
            missing,
            "1 client: throughput >= 1.0x KServe V1",
            (KPIGATE, KSERVE),
            1,
            throughput,
            (">=", 1.0),
        ),
        ratio_check(
            runs,
            missing,
            "1 client: p50 <= 1.1x KServe V1's",
            (KPIGATE, KSERVE),
            1,
            p50,
            ("<=", 1.1),
        ),
        ratio_check(
            runs,
            missing,
            "64 clients: throughput >= 1.5x KServe V1",
            (KPIGATE, KSERVE),
            64,
            throughput,
            (">=", 1.5),
        ),
        p99_check(runs, missing, 64, 50.0),
        ratio_check(
            runs,
            missing,
            "64 clients: throughput >= 0.4x the HTTP ceiling",
            (KPIGATE, CEILING),
            64,
            throughput,
            (">=", 0.4),
        ),
    ]
    for clients in CLIENTS:
        out.append(
            ratio_check(
                runs,
                missing,
                f"{connections(clients)}: throughput >= 3x MLServer",
                (KPIGATE, MLSERVER),
                clients,
                throughput,
                (">=", 3.0),
            )
        )
    for clients in CLIENTS:
        out.append(
            ratio_check(
                runs,
                missing,
                f"{connections(clients)}: 50% canary throughput >= 0.9x weight 0",
                (CANARY, KPIGATE),
                clients,
                throughput,
                (">=", 0.9),
            )
        )
    out.append(error_check(runs, missing))
    return out


# -- Markdown ---------------------------------------------------------------------------------


def _ratio_cell(runs: list[Run], top: str, bottom: str, clients: int, metric: Metric) -> str:
    found = spread(pair_ratios(runs, top, bottom, clients, metric))
    if found is None:
        return "-"
    if found.count == 1:
        return f"{found.median:.2f}"
    return f"{found.median:.2f} ({found.low:.2f}–{found.high:.2f})"


RATIO_ROWS = (
    ("kpigate ÷ KServe V1, throughput", KPIGATE, KSERVE, throughput),
    ("kpigate ÷ KServe V1, p50 latency", KPIGATE, KSERVE, p50),
    ("kpigate ÷ MLServer, throughput", KPIGATE, MLSERVER, throughput),
    ("kpigate ÷ HTTP ceiling, throughput", KPIGATE, CEILING, throughput),
    ("50% canary ÷ weight 0 (SQLite), throughput", CANARY, KPIGATE, throughput),
    ("PostgreSQL log ÷ SQLite log (weight 0), throughput", KPIGATE_PG, KPIGATE, throughput),
    ("50% canary ÷ weight 0 (PostgreSQL), throughput", CANARY_PG, KPIGATE_PG, throughput),
)


def ratio_table(runs: list[Run], missing: dict[str, str]) -> list[str]:
    lines = [
        "| ratio, median (min–max) over the pairs | "
        + " | ".join(connections(c) for c in CLIENTS)
        + " |",
        "|---|" + "---:|" * len(CLIENTS),
    ]
    for label, top, bottom, metric in RATIO_ROWS:
        gone = [s for s in (top, bottom) if s in missing]
        cells = (
            [f"missing ({gone[0]})"] * len(CLIENTS)
            if gone
            else [_ratio_cell(runs, top, bottom, c, metric) for c in CLIENTS]
        )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _median_of(values: list[float], digits: int) -> str:
    return f"{statistics.median(values):,.{digits}f}" if values else "-"


def configuration_table(runs: list[Run], servers: list[str], missing: dict[str, str]) -> list[str]:
    lines = [
        "| server | clients | requests/s | p50 ms | p99 ms | non-2xx | socket errors | runs "
        "| commit wait p50 / p99 ms | rows per commit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for server in servers:
        if server in missing:
            lines.append(f"| {server} | - | missing: {missing[server]} | | | | | | | |")
            continue
        for clients in CLIENTS:
            mine = [r for r in runs if r.server == server and r.clients == clients]
            if not mine:
                continue
            ms = [r.measurement for r in mine]
            costs = [r.log_cost for r in mine if r.log_cost is not None]
            cost = "- | -"
            if costs:
                wait50 = _median_of([c.wait_p50_ms for c in costs], 1)
                wait99 = _median_of([c.wait_p99_ms for c in costs], 1)
                rows = _median_of([c.rows_per_commit for c in costs], 1)
                cost = f"{wait50} / {wait99} | {rows}"
            lines.append(
                f"| {server} | {clients} | {_median_of([m.rps for m in ms], 0)} | "
                f"{_median_of([m.p50_ms for m in ms], 2)} | "
                f"{_median_of([m.p99_ms for m in ms], 2)} | {sum(m.non_2xx for m in ms)} | "
                f"{sum(m.socket_errors for m in ms)} | {len(ms)} | {cost} |"
            )
    return lines


def runs_table(runs: list[Run]) -> list[str]:
    lines = [
        "| # | rep | server | clients | requests/s | p50 ms | p99 ms | non-2xx | socket errors "
        "| load 1 min |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(runs, key=lambda r: r.position):
        m = r.measurement
        lines.append(
            f"| {r.position} | {r.rep} | {r.server} | {r.clients} | {m.rps:,.0f} | "
            f"{m.p50_ms:.2f} | {m.p99_ms:.2f} | {m.non_2xx} | {m.socket_errors} | {r.load1:.2f} |"
        )
    return lines


def target_table(results: list[Check]) -> list[str]:
    lines = ["| target (median over the pairs) | measured | met |", "|---|---:|:---:|"]
    lines += [f"| {c.target} | {c.measured} | {'yes' if c.met else 'NO'} |" for c in results]
    return lines


def load_range(runs: list[Run]) -> str:
    loads = [r.load1 for r in runs]
    return f"{min(loads):.2f}–{max(loads):.2f}" if loads else "-"


def load_note(runs: list[Run], cores: int) -> str | None:
    """A warning when other work competed for the cores during the run."""
    peak = max((r.load1 for r in runs), default=0.0)
    if peak <= cores:
        return None
    return (
        f"- **the machine was busy**: the one-minute load reached {peak:.1f} on {cores} cores "
        "during the run: more runnable threads than cores, from wrk and the server under test "
        "(its scoring and log threads, MLServer's worker) and any other jobs, so every server "
        "got a fraction of the machine and the numbers measure contention as much as the "
        "servers; with other jobs running, rerun on a quiet machine (`make bench-router`) "
        "before quoting them."
    )

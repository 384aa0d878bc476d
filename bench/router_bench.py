"""kpigate's router beside KServe V1, MLServer and the bare-HTTP ceiling, in one interleaved run.

Every server scores the same XGBoost-100 model file (trained here, registered in a local MLflow
store for kpigate) on single-row POST requests from wrk, at 1, 16 and 64 connections. kpigate
runs at weight 0 and at a 50% canary (the LightGBM-100 candidate), with the SQLite and the
PostgreSQL prediction log, metrics on. The peers run from virtual environments this script builds
from the package index under .bench-venvs/ (reused while their pins stay the same). Each
repetition measures every server at each concurrency back to back, in an order rotated from one
block to the next, so a ratio kpigate ÷ peer compares runs minutes apart; ratios are given as
median (min-max) over the repetitions and the targets (issue 12) judged on the median. Exits 1
when a target is missed or a peer is missing, printing which.

usage: python bench/router_bench.py [--quick] [--reps 3] [--seconds 10] [--write FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import bench_venvs
import peer_servers as ps
import router_report as rr
from bench_venvs import VenvSpec
from machine import describe  # bench/machine.py (the script's folder is on sys.path)
from wrk_load import CARD, ensure_wrk, lua_script, run_wrk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kpigate.fraud.schema import LABEL  # noqa: E402
from kpigate.traffic import generate_transactions  # noqa: E402

VENVS = ROOT / ".bench-venvs"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
KSERVE_VERSION = "0.21.0"
MLSERVER_VERSION = "1.7.1"
# uvloop 0.22 breaks MLServer 1.7.1's inference workers ("RuntimeError: There is no current
# event loop in thread 'MainThread'" in mlserver/parallel/worker.py); 0.21 works.
MLSERVER_UVLOOP = "0.21.0"
# The rotation keeps every peer next to a kpigate configuration.
ORDER = (rr.KPIGATE, rr.KSERVE, rr.CANARY, rr.MLSERVER, rr.KPIGATE_PG, rr.CEILING, rr.CANARY_PG)
PEER_VERSIONS = {
    rr.KSERVE: ("kserve", "fastapi", "uvicorn", "uvloop", "xgboost-cpu", "numpy"),
    rr.MLSERVER: (
        "mlserver",
        "mlserver-xgboost",
        "fastapi",
        "uvicorn",
        "uvloop",
        "xgboost-cpu",
        "scikit-learn",
        "numpy",
    ),
    rr.CEILING: ("starlette", "uvicorn", "uvloop", "httptools"),
}


def peer_venvs() -> dict[str, VenvSpec]:
    """Pinned environments. XGBoost, scikit-learn, starlette and uvicorn are pinned to the
    versions in kpigate's own environment, so every server runs the same booster and the
    ceiling the same HTTP stack. mlserver-xgboost declares `xgboost` (the CUDA build, with
    NCCL); it is installed without dependencies on xgboost-cpu, the same module."""
    xgb = f"xgboost-cpu=={version('xgboost-cpu')}"
    return {
        rr.KSERVE: VenvSpec("kserve", (f"kserve=={KSERVE_VERSION}", xgb)),
        rr.MLSERVER: VenvSpec(
            "mlserver",
            (
                f"mlserver=={MLSERVER_VERSION}",
                f"uvloop=={MLSERVER_UVLOOP}",
                xgb,
                f"scikit-learn=={version('scikit-learn')}",
            ),
            (f"mlserver-xgboost=={MLSERVER_VERSION}",),
        ),
        rr.CEILING: VenvSpec(
            "http-ceiling",
            (f"starlette=={version('starlette')}", f"uvicorn[standard]=={version('uvicorn')}"),
        ),
    }


@dataclass
class Plan:
    reps: int
    seconds: float
    warmup: float
    only: tuple[str, ...]
    postgres_url: str
    mode: str


@dataclass
class Bench:
    """What one run collects."""

    runs: list[rr.Run] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    versions: dict[str, dict[str, str]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)


# -- models ---------------------------------------------------------------------------------


def train_and_register(work: Path) -> tuple[str, Path]:
    """XGBoost-100 baseline (champion) and LightGBM-100 candidate in a SQLite MLflow store;
    returns the tracking URI and the baseline's native model file, which the peers load."""
    import lightgbm
    import mlflow
    import pandas as pd
    import xgboost

    from kpigate.fraud.models import MODEL_INPUTS, instance_schema
    from kpigate.fraud.schema import FEATURES
    from kpigate.serve.instances import InstanceParser
    from kpigate.serve.schema import VOCABULARIES_KEY

    parse_instance = InstanceParser(instance_schema()).parse
    rows, labels = [], []
    for tx in generate_transactions(20_000, seed=42):
        labels.append(tx.pop(LABEL))
        rows.append(parse_instance(tx).row)
    x = pd.DataFrame(rows, columns=list(FEATURES))
    xgb = xgboost.XGBClassifier(n_estimators=100, max_depth=6, n_jobs=1).fit(x, labels)
    lgb = lightgbm.LGBMClassifier(n_estimators=100, n_jobs=1, verbose=-1).fit(x, labels)
    native = work / "xgb100.json"
    xgb.save_model(native)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("bench", artifact_location=(work / "artifacts").as_uri())
    # The router serves a version by its input signature, with the categoricals' vocabularies.
    signed: dict[str, Any] = {
        "signature": mlflow.models.infer_signature(x.head(100)),
        "metadata": {VOCABULARIES_KEY: {k: list(v) for k, v in MODEL_INPUTS.vocabularies.items()}},
    }
    with mlflow.start_run(experiment_id=exp):
        mlflow.xgboost.log_model(xgb, name="model", registered_model_name=ps.MODEL_NAME, **signed)
    with mlflow.start_run(experiment_id=exp):
        mlflow.lightgbm.log_model(lgb, name="model", registered_model_name=ps.MODEL_NAME, **signed)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(ps.MODEL_NAME, "champion", "1")
    client.set_registered_model_alias(ps.MODEL_NAME, "candidate", "2")
    return uri, native


def request_body() -> tuple[dict[str, Any], list[float]]:
    """One transaction as kpigate takes it (card id CARD) and as a feature row for the peers."""
    from kpigate.fraud.models import instance_schema
    from kpigate.serve.instances import InstanceParser

    body = next(generate_transactions(1, seed=1))
    body.pop(LABEL)
    body["card_id"] = CARD
    return body, list(InstanceParser(instance_schema()).parse(body).row)


# -- the servers ----------------------------------------------------------------------------


def postgres_problem(url: str) -> str | None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:
        return f"PostgreSQL not reachable at {url} ({type(exc).__name__})"
    finally:
        engine.dispose()
    return None


def kpigate_servers(
    work: Path, uri: str, plan: Plan, body: dict[str, Any], bench: Bench
) -> list[ps.Server]:
    tag = uuid.uuid4().hex[:8]
    sqlite = {rr.KPIGATE: 0.0, rr.CANARY: 50.0}
    pg = {rr.KPIGATE_PG: 0.0, rr.CANARY_PG: 50.0}
    servers = [
        ps.kpigate(name, work, uri, f"sqlite:///{work / f'{name}.db'}", "kpigate_", weight, body)
        for name, weight in sqlite.items()
    ]
    wanted = [name for name in pg if name in plan.only]
    problem = postgres_problem(plan.postgres_url) if wanted else None
    for name, weight in pg.items():
        if problem:
            bench.missing[name] = problem
            continue
        prefix = f"bench{tag}{'c' if weight else 'w'}_"
        servers.append(ps.kpigate(name, work, uri, plan.postgres_url, prefix, weight, body))
    return servers


def peer_server(name: str, work: Path, venv: Path, model: Path, row: list[float]) -> ps.Server:
    if name == rr.KSERVE:
        return ps.kserve_v1(name, work, venv, model, row)
    if name == rr.MLSERVER:
        return ps.mlserver(name, work, venv, model, row)
    return ps.http_ceiling(name, work, venv)


def peer_servers(
    work: Path, model: Path, row: list[float], plan: Plan, bench: Bench
) -> list[ps.Server]:
    servers = []
    for name, spec in peer_venvs().items():
        if name not in plan.only:
            continue
        try:
            venv = bench_venvs.ensure_venv(VENVS, spec)
        except bench_venvs.VenvError as exc:
            bench.missing[name] = f"environment ({spec.pins()}) not built: {exc}"
            continue
        bench.versions[name] = bench_venvs.versions(venv, PEER_VERSIONS[name])
        servers.append(peer_server(name, work, venv, model, row))
    return servers


def start_all(servers: list[ps.Server], bench: Bench) -> list[ps.Server]:
    """Starts every server, then waits for each; returns those that answer."""
    for server in servers:
        ps.start(server)
    up = []
    for server in servers:
        try:
            ps.wait_ready(server, timeout_s=180)
        except RuntimeError as exc:
            bench.missing[server.name] = f"did not start: {exc}"
            continue
        if server.score is not None:
            bench.scores[server.name] = server.score(ps.one_request(server))
        up.append(server)
    return up


@contextlib.contextmanager
def running(servers: list[ps.Server]) -> Iterator[None]:
    try:
        yield
    finally:
        for server in servers:
            ps.stop(server)


def drop_postgres_tables(servers: list[ps.Server], url: str) -> None:
    from kpigate.serve.predlog import Tables, make_engine

    prefixes = [
        s.cmd[s.cmd.index("--table-prefix") + 1]
        for s in servers
        if s.name in (rr.KPIGATE_PG, rr.CANARY_PG)
    ]
    if not prefixes:
        return
    engine = make_engine(url)
    try:
        for prefix in prefixes:
            Tables(prefix).drop(engine)
    except Exception as exc:
        print(f"could not drop the benchmark's tables {prefixes}: {exc}", file=sys.stderr)
    finally:
        engine.dispose()


# -- measuring ------------------------------------------------------------------------------


def histogram(url: str, name: str) -> tuple[dict[float, float], float, float] | None:
    """Cumulative bucket counts, sum and count of a router histogram from /metrics, or None
    when the router does not export it."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    buckets: dict[float, float] = {}
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                buckets[float(sample.labels["le"])] = (
                    buckets.get(float(sample.labels["le"]), 0.0) + sample.value
                )
            elif sample.name == f"{name}_sum":
                total += sample.value
            elif sample.name == f"{name}_count":
                count += sample.value
    return (buckets, total, count) if buckets else None


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding quantile q of the observations in between."""
    edges = sorted(after)
    n = after[edges[-1]] - before.get(edges[-1], 0.0)
    for edge in edges:
        if after[edge] - before.get(edge, 0.0) >= q * n:
            return edge
    return edges[-1]


WAIT = "kpigate_predlog_commit_seconds"
ROWS = "kpigate_predlog_commit_rows"


def log_snapshot(url: str) -> tuple[Any, Any] | None:
    wait, rows = histogram(url, WAIT), histogram(url, ROWS)
    return (wait, rows) if wait and rows else None


def log_cost(before: tuple[Any, Any] | None, after: tuple[Any, Any] | None) -> rr.LogCost | None:
    if before is None or after is None:
        return None
    (wait0, _, _), (_, rows0, commits0) = before
    (wait1, _, _), (_, rows1, commits1) = after
    return rr.LogCost(
        bucket_quantile(wait0, wait1, 0.5) * 1000,
        bucket_quantile(wait0, wait1, 0.99) * 1000,
        (rows1 - rows0) / max(commits1 - commits0, 1.0),
    )


def measure(
    wrk: str, server: ps.Server, script: Path, clients: int, plan: Plan, rep: int, position: int
) -> rr.Run:
    if plan.warmup > 0:
        run_wrk(wrk, server.url, script, clients, plan.warmup)
    is_kpigate = server.name.startswith(rr.KPIGATE)
    before = log_snapshot(server.url) if is_kpigate else None
    load1 = os.getloadavg()[0]
    result = run_wrk(wrk, server.url, script, clients, plan.seconds)
    after = log_snapshot(server.url) if is_kpigate else None
    return rr.Run(rep, position, server.name, clients, result, load1, log_cost(before, after))


def rotated(servers: list[ps.Server], shift: int) -> list[ps.Server]:
    shift %= max(len(servers), 1)
    return servers[shift:] + servers[:shift]


def measure_all(
    wrk: str, servers: list[ps.Server], scripts: dict[str, Path], plan: Plan, bench: Bench
) -> None:
    block = 0
    for rep in range(1, plan.reps + 1):
        for clients in rr.CLIENTS:
            for server in rotated(servers, block):
                if server.name in bench.missing:
                    continue
                if not ps.alive(server):
                    bench.missing[server.name] = f"exited during the run: {ps.log_tail(server)}"
                    continue
                print(
                    f"rep {rep}/{plan.reps}: {server.name} at {clients} client(s) ...",
                    file=sys.stderr,
                )
                try:
                    run = measure(
                        wrk, server, scripts[server.name], clients, plan, rep, len(bench.runs) + 1
                    )
                except Exception as exc:
                    bench.missing[server.name] = f"measurement failed: {exc}"
                    continue
                m = run.measurement
                print(
                    f"  {m.rps:,.0f} req/s, p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms, "
                    f"{rr.error_text(m.non_2xx, m.socket_errors)}, load {run.load1:.2f}",
                    file=sys.stderr,
                )
                bench.runs.append(run)
            block += 1


# -- the report -----------------------------------------------------------------------------


def versions_lines(bench: Bench) -> list[str]:
    lines = [f"- kpigate's environment: {describe('uvicorn', 'starlette', 'xgboost', 'numpy')}"]
    specs = peer_venvs()
    for name, spec in specs.items():
        found = bench.versions.get(name)
        installed = ", ".join(f"{k} {v}" for k, v in found.items()) if found else "not installed"
        lines.append(f"- {name}: pinned `{spec.pins()}`; installed {installed}")
    return lines


def score_line(bench: Bench) -> str:
    if not bench.scores:
        return "- P(fraud) of the warm-up request: no server answered"
    # A canary may send the warm-up card to the LightGBM candidate: only weight 0 must agree.
    like = {name: score for name, score in bench.scores.items() if "canary" not in name}
    values = sorted(like.values()) or [0.0]
    agree = "agree" if values[-1] - values[0] < 1e-6 else "DIFFER"
    shown = ", ".join(f"{name} {score:.6f}" for name, score in bench.scores.items())
    return (
        f"- P(fraud) of the warm-up request as each server answered it (the XGBoost-100 "
        f"servers {agree}): {shown}"
    )


SERVER_NOTES = (
    "- `kpigate`: `kpigate serve` at weight 0 (every request on the XGBoost-100 champion), "
    "SQLite prediction log (each answer committed before it is sent), Prometheus metrics on; "
    "`kpigate-canary50`: the same at a 50% canary with the LightGBM-100 candidate; "
    "`kpigate-pg` and `kpigate-pg-canary50`: the same with the log in PostgreSQL at "
    "127.0.0.1:5432, database `test` (own table prefix, dropped afterwards). Each request has "
    "a fresh card id, so the canary splits it by hash.",
    "- `kserve-v1`: KServe's ModelServer, one worker, V1 protocol "
    '(`POST /v1/models/fraud:predict`, `{"instances": [[9 numbers]]}`), a custom '
    "`kserve.Model` (bench/peers/kserve_model.py) scoring with `xgboost.Booster.inplace_predict` "
    "like the router; gRPC off, no per-request log line (KSERVE_LOGLEVEL=WARNING, latency "
    "logging off).",
    "- `mlserver`: `mlserver start` with its xgboost runtime (`mlserver_xgboost.XGBoostModel`), "
    "`parallel_workers: 1`, debug (and so the access log) off, V2 protocol asking for "
    "`predict_proba`. uvloop is pinned to 0.21.0: 0.22 and later break MLServer 1.7.1's "
    "inference worker (`RuntimeError: There is no current event loop in thread 'MainThread'` "
    "in mlserver/parallel/worker.py). mlserver-xgboost requires `xgboost`, the CUDA build; it "
    "is installed without dependencies beside xgboost-cpu, which provides the same module.",
    "- `http-ceiling`: a Starlette endpoint that reads the body and returns a constant "
    "(bench/peers/ceiling.py), uvicorn with uvloop and httptools like `kpigate serve`: no server "
    "doing work on these requests can beat it.",
    "- all servers run at once, one process each (MLServer adds its inference worker), on "
    "loopback with wrk; OMP_NUM_THREADS=1 for all, since XGBoost's OpenMP threads spinning on a "
    "shared 2-core machine make a single-row predict far slower and kpigate scores with one "
    "thread. KServe and MLServer get the feature row as numbers (categoricals already coded); "
    "kpigate gets the transaction and does the validation, routing, logging and metrics itself.",
)


def report(
    bench: Bench, plan: Plan, command: str, servers: list[str], load: str, results: list[rr.Check]
) -> str:
    missed = [c.target for c in results if not c.met]
    lines = [
        "# Router benchmark: kpigate beside KServe, MLServer and the HTTP ceiling",
        "",
        "Generated by `make bench-router` (bench/router_bench.py); rerun it to refresh.",
        "",
        f"- command: `{command}`",
        f"- mode: {plan.mode}: {plan.reps} interleaved repetitions; each run "
        f"{plan.seconds:g} s of wrk after a {plan.warmup:g} s warm-up at the same concurrency",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- load average: {load}; one-minute load at the start of each run: "
        f"{rr.load_range(bench.runs)}",
        *[note for note in [rr.load_note(bench.runs, os.cpu_count() or 1)] if note],
        *versions_lines(bench),
        score_line(bench),
        "",
        "## Servers",
        "",
        *SERVER_NOTES,
        "- KServe V1 replaces the naive endpoint earlier versions of this page compared "
        "against (sklearn `predict_proba` inline on the event loop) as the reference: it scores "
        "with the same booster call as the router.",
        "",
        "## Ratios",
        "",
        "A pair is the two servers at the same concurrency in the same repetition. Every ratio "
        "is the median over the pairs, with the lowest and highest in brackets. Latency ratios "
        "below 1 and throughput ratios above 1 favour kpigate.",
        "",
        *rr.ratio_table(bench.runs, bench.missing),
        "",
        "## Targets (issue 12)",
        "",
        *rr.target_table(results),
        "",
        f"**{len(results) - len(missed)} of {len(results)} targets met.**"
        + (f" Missed: {'; '.join(missed)}." if missed else ""),
        "",
        "## Per configuration (median over the repetitions)",
        "",
        "The last two columns are the durable log's cost, from kpigate's "
        "`kpigate_predlog_commit_seconds` and `kpigate_predlog_commit_rows` histograms over "
        "each measured run (bucket upper bounds); the answer's latency includes it.",
        "",
        *rr.configuration_table(bench.runs, servers, bench.missing),
        "",
        "## Every run, in order",
        "",
        *rr.runs_table(bench.runs),
        "",
        "wrk, the servers and kpigate's scoring thread share the machine's cores, and on a shared "
        "machine other jobs take their share too, so absolute numbers move from run to run; the "
        "targets are ratios of runs made minutes apart. Rerun on a quiet machine for numbers that "
        "stand for the software rather than the neighbours: `make bench-router`.",
        "",
    ]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Plan]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 repetitions of 3 s runs (trying it out; the full run is the one to publish)",
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per run (10)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds (2)")
    parser.add_argument(
        "--only", default=",".join(ORDER), help="comma-separated servers to run (default: all)"
    )
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    parser.add_argument("--write", type=Path, help="write the Markdown report here")
    args = parser.parse_args(argv)
    defaults = (2, 3.0, 1.0) if args.quick else (3, 10.0, 2.0)
    reps = args.reps or defaults[0]
    seconds = args.seconds or defaults[1]
    warmup = args.warmup if args.warmup is not None else defaults[2]
    only = tuple(name for name in ORDER if name in args.only.split(","))
    mode = "quick" if args.quick else "full"
    return args, Plan(reps, seconds, warmup, only, args.postgres_url, mode)


def run_bench(plan: Plan, wrk: str, bench: Bench) -> list[str]:
    """Trains, builds, starts and measures; returns the names of the servers in the run."""
    body, row = request_body()
    with tempfile.TemporaryDirectory(prefix="kpigate-bench-") as tmp:
        work = Path(tmp)
        print("training and registering the models ...", file=sys.stderr)
        uri, model = train_and_register(work)
        servers = [s for s in kpigate_servers(work, uri, plan, body, bench) if s.name in plan.only]
        servers += peer_servers(work, model, row, plan, bench)
        servers.sort(key=lambda s: ORDER.index(s.name))
        with running(servers):
            up = start_all(servers, bench)
            scripts = {}
            for server in up:
                scripts[server.name] = work / f"{server.name}.lua"
                scripts[server.name].write_text(lua_script(server.path, server.body))
            measure_all(wrk, up, scripts, plan, bench)
        drop_postgres_tables(servers, plan.postgres_url)
    return [s.name for s in servers]


def main(argv: list[str] | None = None) -> int:
    args, plan = parse_args(argv)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    wrk = ensure_wrk()
    if wrk is None:
        print("wrk is not installed (apt-get install wrk); no measurement made", file=sys.stderr)
        return 1
    bench = Bench()
    for name in ORDER:
        if name not in plan.only:
            bench.missing[name] = "left out with --only"
    names = run_bench(plan, wrk, bench)
    load += " before, " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + " after"
    results = rr.checks(bench.runs, bench.missing)
    command = (
        "make bench-router  (python bench/router_bench.py "
        + shlex.join(sys.argv[1:] if argv is None else argv)
        + ")"
    )
    text = report(
        bench, plan, command, [n for n in ORDER if n in names or n in bench.missing], load, results
    )
    print(text)
    if args.write:
        args.write.write_text(text)
    missed = [c for c in results if not c.met]
    for check in missed:
        print(f"MISSED: {check.target}: {check.measured}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

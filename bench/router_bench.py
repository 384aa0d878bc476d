"""Router throughput and latency against a naive endpoint, both on real uvicorn servers.

The naive endpoint does what the issue's anchor does: one single-row XGBoost-100 predict per
request, inline on the event loop. The router serves the same model (registered in a local
MLflow store, loaded by alias) with micro-batching, the SQLite prediction log and metrics on.
Both are driven by wrk on loopback (installed with apt-get when missing and we are root); without
wrk a Python load generator runs instead and the report says so. Results go to
docs/bench-router.md.

usage: python bench/router_bench.py [--duration 10] [--out docs/bench-router.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from machine import describe  # bench/machine.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kpigate.fraud.schema import FEATURES, LABEL  # noqa: E402
from kpigate.traffic import generate_transactions  # noqa: E402

WRK_SCRIPT = """
counter = 0
local body = [[%s]]
request = function()
  counter = counter + 1
  local b = string.gsub(body, "CARD", "b" .. (counter %% 5000) .. "-" .. math.random(1, 1000000))
  return wrk.format("POST", "/predict", {["Content-Type"] = "application/json"}, b)
end
"""


@dataclass
class Result:
    server: str
    clients: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    tool: str
    # The durable log's cost (router only): how long an answer waited for its commit, and how
    # many rows one commit carried, from the router's own histograms over the measured run.
    commit_p50_ms: float | None = None
    commit_p99_ms: float | None = None
    rows_per_commit: float | None = None


def histogram(url: str, name: str) -> tuple[dict[float, float], float, float]:
    """Cumulative bucket counts, sum and count of a router histogram, from /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    buckets: dict[float, float] = {}
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == f"{name}_sum":
                total = sample.value
            elif sample.name == f"{name}_count":
                count = sample.value
    return buckets, total, count


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding quantile q of the observations in between."""
    edges = sorted(after)
    n = after[edges[-1]] - before.get(edges[-1], 0.0)
    for edge in edges:
        if after[edge] - before.get(edge, 0.0) >= q * n:
            return edge
    return edges[-1]


def log_cost(url: str, run: Callable[[], Result]) -> Result:
    wait0, _, _ = histogram(url, "kpigate_predlog_commit_seconds")
    _, rows0, commits0 = histogram(url, "kpigate_predlog_commit_rows")
    result = run()
    wait1, _, _ = histogram(url, "kpigate_predlog_commit_seconds")
    _, rows1, commits1 = histogram(url, "kpigate_predlog_commit_rows")
    result.commit_p50_ms = quantile(wait0, wait1, 0.5) * 1000
    result.commit_p99_ms = quantile(wait0, wait1, 0.99) * 1000
    result.rows_per_commit = (rows1 - rows0) / max(commits1 - commits0, 1.0)
    return result


# -- the naive server (run in a subprocess by this same file) -----------------------------


def naive_app(model_path: str) -> Any:
    import numpy as np
    import xgboost
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from kpigate.fraud.models import instance_schema
    from kpigate.serve.instances import InstanceParser

    parse_instance = InstanceParser(instance_schema()).parse
    # One thread, as in the router: OpenMP threads spinning on a shared 2-core machine make a
    # single-row predict take ~9 ms instead of ~0.3 ms.
    model = xgboost.XGBClassifier(n_jobs=1)
    model.load_model(model_path)

    async def predict(request: Request) -> JSONResponse:
        inst = parse_instance(await request.json())
        # A numpy row, the cheapest sklearn-API predict (the 0.27 ms anchor); it blocks
        # the event loop, which is the point of the comparison.
        score = float(model.predict_proba(np.asarray([inst.row]))[0, 1])
        return JSONResponse({"score": score, "decision": "decline" if score >= 0.5 else "approve"})

    return Starlette(routes=[Route("/predict", predict, methods=["POST"])])


def serve_naive(model_path: str, port: int) -> None:
    import uvicorn

    uvicorn.run(naive_app(model_path), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)  # fmt: skip


# -- setup ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def train_and_register(work: Path) -> tuple[str, str]:
    """XGBoost-100 baseline and LightGBM candidate in a SQLite MLflow store; returns the
    tracking URI and the baseline's native model file for the naive server."""
    import lightgbm
    import mlflow
    import pandas as pd
    import xgboost

    from kpigate.fraud.models import MODEL_INPUTS, instance_schema
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
        mlflow.xgboost.log_model(xgb, name="model", registered_model_name="fraud", **signed)
    with mlflow.start_run(experiment_id=exp):
        mlflow.lightgbm.log_model(lgb, name="model", registered_model_name="fraud", **signed)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias("fraud", "champion", "1")
    client.set_registered_model_alias("fraud", "candidate", "2")
    return uri, str(native)


def wait_up(url: str, body: dict[str, Any], timeout_s: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.post(url + "/predict", json=body, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server at {url} did not come up in {timeout_s}s")


def ensure_wrk() -> str | None:
    found = shutil.which("wrk")
    if found or os.geteuid() != 0:
        return found
    print("installing wrk with apt-get ...", file=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False,
                       capture_output=True)  # fmt: skip
    return shutil.which("wrk")


# -- load generators -----------------------------------------------------------------------


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip()).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(wrk: str, url: str, script: Path, clients: int, duration: int, name: str) -> Result:
    threads = 1 if clients == 1 else 2
    cmd = [wrk, f"-t{threads}", f"-c{clients}", f"-d{duration}s", "--latency", "-s", str(script),
           url]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return Result(name, clients, rps, p50, p99, int(errors.group(1)) if errors else 0, "wrk")


def run_python(url: str, body: dict[str, Any], clients: int, duration: int, name: str) -> Result:
    import httpx

    async def main() -> tuple[list[float], int]:
        latencies: list[float] = []
        errors = 0
        stop = time.perf_counter() + duration
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:

            async def worker(w: int) -> None:
                nonlocal errors
                i = 0
                while time.perf_counter() < stop:
                    i += 1
                    t0 = time.perf_counter()
                    r = await client.post("/predict", json=dict(body, card_id=f"p{w}-{i}"))
                    latencies.append((time.perf_counter() - t0) * 1000)
                    errors += r.status_code != 200

            await asyncio.gather(*(worker(w) for w in range(clients)))
        return latencies, errors

    latencies, errors = asyncio.run(main())
    latencies.sort()

    def pick(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    return Result(
        name,
        clients,
        len(latencies) / duration,
        pick(0.5),
        pick(0.99),
        errors,
        "python-httpx (wrk unavailable: numbers are bounded by the load generator)",
    )


# -- report --------------------------------------------------------------------------------


def machine() -> str:
    return describe("uvicorn", "xgboost")


def report(results: list[Result], command: str, load: str) -> str:
    by = {(r.server, r.clients): r for r in results}
    n1, r1 = by[("naive", 1)], by[("router", 1)]
    n64, r64 = by[("naive", 64)], by[("router", 64)]
    ratio = r64.rps / n64.rps
    checks = [
        ("64 clients: router throughput >= 2x naive", f"{ratio:.2f}x", ratio >= 2.0),
        ("64 clients: router p99 <= 50 ms", f"{r64.p99_ms:.1f} ms", r64.p99_ms <= 50.0),
        ("1 client: router p50 within 0.5 ms of naive", f"{r1.p50_ms - n1.p50_ms:+.2f} ms",
         r1.p50_ms - n1.p50_ms <= 0.5),
    ]  # fmt: skip
    lines = [
        "# Router benchmark",
        "",
        "Generated by `make bench-router` (bench/router_bench.py); rerun it to refresh.",
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}",
        f"- load generator: {results[0].tool}; load average before the run: {load}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "- naive: one single-row XGBoost-100 predict per request, inline on the event loop.",
        "- router: `kpigate serve` with the same XGBoost-100 as champion from a local MLflow",
        "  registry, micro-batching, SQLite prediction log and Prometheus metrics on;",
        "  `router` rows run at weight 0 (all baseline, like for like), `router-canary50` at",
        "  50% canary with the LightGBM-100 candidate. Each request has a fresh card_id.",
        "- both use one XGBoost thread (`n_jobs=1`): with the default (all cores),",
        "  OpenMP threads spinning on this shared machine made one single-row predict",
        "  take ~9 ms instead of ~0.3 ms.",
        "- naive scores one numpy row with `predict_proba` (~0.3 ms, the issue's 0.27 ms",
        "  anchor); the router builds one DataFrame per micro-batch and, for an XGBoost",
        "  binary:logistic model, calls `Booster.inplace_predict` (identical probabilities,",
        "  without ~0.6 ms of pandas handling per call in xgboost 3.2), and freezes startup",
        "  objects out of the GC (`gc.freeze`) so full collections do not stall requests.",
        "",
        "- the router commits each prediction to its log before answering (group commit: one",
        "  SQLite transaction takes every row queued while the previous one ran); the last",
        "  three columns are that cost, from the router's `kpigate_predlog_commit_seconds`",
        "  and `kpigate_predlog_commit_rows` histograms over the measured run (bucket upper",
        "  bounds). The answer's latency above includes it.",
        "",
        "| server | clients | requests/s | p50 ms | p99 ms | non-2xx "
        "| commit wait p50 / p99 ms | rows per commit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cost = (
            f"{r.commit_p50_ms:g} / {r.commit_p99_ms:g} | {r.rows_per_commit:.1f}"
            if r.rows_per_commit is not None
            else "- | -"
        )
        lines.append(f"| {r.server} | {r.clients} | {r.rps:,.0f} | {r.p50_ms:.2f} | "
                     f"{r.p99_ms:.2f} | {r.errors} | {cost} |")  # fmt: skip
    lines += ["", "| target | measured | met |", "|---|---:|:---:|"]
    lines += [f"| {name} | {value} | {'yes' if ok else 'NO'} |" for name, value, ok in checks]
    lines += [
        "",
        "The machine is shared (2 cores, other jobs running), and wrk, the server and the",
        "scoring thread compete for the same cores, so absolute numbers move between runs;",
        "the targets are ratios against the naive endpoint measured in the same run.",
        "",
        "The durable log has a price, and the single-client target no longer holds: each",
        "answer now waits for its commit (at 1 client, one SQLite transaction per request,",
        "p50 <= 0.5 ms), where the writer used to insert after the answer, in 0.25 s batches,",
        "and lose answered predictions on a kill (issue 11). The last run before the change",
        "(2026-11-26, same machine) measured 0.76 ms p50 at 1 client and 6,864 requests/s at",
        "64 clients; under load the group commit amortises (tens of rows per commit) and the",
        "throughput target still holds.",
        "",
        "`router-canary50` is for information, not a target: half the traffic goes to the",
        "LightGBM candidate, whose sklearn `predict_proba` keeps the pandas overhead, and two",
        "scoring threads share the 2 cores with wrk and the server.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench-router.md"))
    parser.add_argument("--serve-naive", nargs=2, metavar=("MODEL", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_naive:
        serve_naive(args.serve_naive[0], int(args.serve_naive[1]))
        return 0
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    wrk = ensure_wrk()
    body = next(generate_transactions(1, seed=1))
    body.pop(LABEL)
    body["card_id"] = "CARD"
    procs: list[subprocess.Popen[bytes]] = []
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="kpigate-bench-") as tmp:
        work = Path(tmp)
        print("training and registering models ...", file=sys.stderr)
        uri, native = train_and_register(work)
        script = work / "post.lua"
        script.write_text(WRK_SCRIPT % json.dumps(body))
        naive_port, router_port, canary_port = free_port(), free_port(), free_port()
        py = sys.executable
        kpigate = [
            py,
            "-m",
            "kpigate.cli",
            "serve",
            "--tracking-uri",
            uri,
            "--log-level",
            "warning",
        ]
        env = dict(os.environ, KPIGATE_ADMIN_TOKEN="bench", PYTHONPATH=str(ROOT))
        servers = {
            "naive": ([py, __file__, "--serve-naive", native, str(naive_port)], naive_port),
            "router": ([*kpigate, "--port", str(router_port),
                        "--db-url", f"sqlite:///{work / 'router.db'}"], router_port),
            "router-canary50": ([*kpigate, "--port", str(canary_port), "--weight", "50",
                                 "--db-url", f"sqlite:///{work / 'canary.db'}"], canary_port),
        }  # fmt: skip
        try:
            for cmd, port in servers.values():
                procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT))
                wait_up(f"http://127.0.0.1:{port}", dict(body, card_id="warmup"))
            plan = [("naive", 1), ("router", 1), ("naive", 64), ("router", 64),
                    ("router-canary50", 64)]  # fmt: skip
            for name, clients in plan:
                url = f"http://127.0.0.1:{servers[name][1]}"
                print(f"{name} at {clients} client(s) ...", file=sys.stderr)
                if wrk:
                    run_wrk(wrk, url, script, clients, 2, name)  # warm-up

                def measure(url: str = url, clients: int = clients, name: str = name) -> Result:
                    if wrk:
                        return run_wrk(wrk, url, script, clients, args.duration, name)
                    return run_python(url, body, clients, args.duration, name)

                result = measure() if name == "naive" else log_cost(url, measure)
                print(f"  {result}", file=sys.stderr)
                results.append(result)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
    command = f"make bench-router  (python bench/router_bench.py --duration {args.duration})"
    text = report(results, command, load)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

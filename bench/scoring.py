"""Single-request scoring latency: the booster alone, the router's scoring paths, and the router.

Trains the case study's XGBoost baseline and LightGBM candidate, registers them in a throwaway
MLflow store with their signature (kpigate.fraud.registration), and times, one request at a time:
- the booster alone: FraudModel.predict_proba on one row (loaded by alias with load_model);
- the router's Batcher (kpigate/serve/scoring.py) per flavor: the fast path (numpy row straight to
  the booster, inline on the event loop), the booster in the worker thread (`--inline-rows 0`),
  and the DataFrame path that a model without a booster takes (pyfunc-style);
- `kpigate serve` itself at 1 client (HTTP keep-alive, SQLite log and metrics on), with the fast
  path on and off, interleaved.

usage: python bench/scoring.py [--calls 5000] [--requests 2000] [--write docs/bench-scoring.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

ROOT = Path(__file__).resolve().parents[1]


def ms(times: list[float]) -> str:
    a = np.array(times) * 1000
    return (
        f"{np.median(a):.3f} ms | {np.percentile(a, 90):.3f} ms | "
        f"{np.percentile(a, 99):.3f} ms | {a.max():.3f} ms"
    )


def booster_alone(uri: str, calls: int) -> list[float]:
    from kpigate.fraud.registration import load_model
    from kpigate.fraud.schema import FEATURES
    from kpigate.registry.base import CHAMPION

    loaded = load_model(CHAMPION, tracking_uri=uri, name="bench-scoring")
    row = np.zeros((1, len(FEATURES)), dtype=np.float32)
    for _ in range(200):
        loaded.predict_proba(row)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        loaded.predict_proba(row)
        times.append(time.perf_counter() - start)
    return times


def batcher_paths(uri: str, calls: int) -> dict[str, list[float]]:
    """Per-request time through the router's Batcher, one request at a time."""
    from kpigate.fraud.models import instance_schema
    from kpigate.serve.instances import InstanceParser
    from kpigate.serve.loader import LoadedModel, MlflowAliasLoader
    from kpigate.serve.scoring import Batcher
    from kpigate.traffic import generate_transactions

    schema = instance_schema()
    parser = InstanceParser(schema)
    rows = []
    for tx in generate_transactions(500, seed=5):
        tx.pop("is_fraud")
        rows.append(parser.parse(tx).row)
    loader = MlflowAliasLoader("bench-scoring", uri)
    out: dict[str, list[float]] = {}
    for alias in ("champion", "candidate"):
        model = loader.load(alias)
        assert isinstance(model, LoadedModel)
        flavor = type(model.estimator).__name__.removesuffix("Classifier")
        frame_model = LoadedModel(model.estimator, model.version, model.inputs)
        frame_model.native = None
        paths = {
            f"{flavor}: fast path (inline, numpy)": Batcher(model, "a", schema, inline_rows=4),
            f"{flavor}: booster in the worker thread": Batcher(model, "b", schema, inline_rows=0),
            f"{flavor}: DataFrame path (no booster)": Batcher(frame_model, "c", schema),
        }

        async def run(batcher: Batcher) -> list[float]:
            for row in rows[:200]:
                await batcher.score(row)
            times = []
            for i in range(calls):
                start = time.perf_counter()
                await batcher.score(rows[i % len(rows)])
                times.append(time.perf_counter() - start)
            return times

        for name, batcher in paths.items():
            out[name] = asyncio.run(run(batcher))
            batcher.close()
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def router_one_client(uri: str, work: Path, requests: int, pairs: int) -> dict[str, list[float]]:
    """`kpigate serve` (XGBoost champion, weight 0) at 1 client, fast path on and off in turn."""
    import httpx

    from kpigate.traffic import generate_transactions

    bodies = []
    for tx in generate_transactions(500, seed=9):
        tx.pop("is_fraud")
        bodies.append(tx)
    out: dict[str, list[float]] = {"router, fast path (--inline-rows 4)": [],
                                   "router, worker thread (--inline-rows 0)": []}  # fmt: skip
    for rep in range(pairs):
        for name, inline in zip(out, ("4", "0"), strict=True):
            port = free_port()
            env = dict(os.environ, KPIGATE_DB_URL=f"sqlite:///{work / f'p{rep}{inline}.db'}")
            cmd = [sys.executable, "-m", "kpigate.cli", "serve", "--tracking-uri", uri,
                   "--model-name", "bench-scoring", "--port", str(port), "--inline-rows", inline,
                   "--log-level", "warning"]  # fmt: skip
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
            url = f"http://127.0.0.1:{port}"
            try:
                with httpx.Client(base_url=url, timeout=10) as client:
                    deadline = time.monotonic() + 120
                    said = "no answer"
                    while True:
                        try:
                            ready = client.get("/readyz")
                            if ready.status_code == 200:
                                break
                            said = ready.text
                        except httpx.HTTPError as exc:
                            said = repr(exc)
                        if time.monotonic() > deadline or proc.poll() is not None:
                            raise RuntimeError(f"router did not start ({said}): {cmd}")
                        time.sleep(0.2)
                    for body in bodies[:200]:
                        client.post("/predict", json=body).raise_for_status()
                    for i in range(requests):
                        start = time.perf_counter()
                        client.post("/predict", json=bodies[i % len(bodies)]).raise_for_status()
                        out[name].append(time.perf_counter() - start)
            finally:
                proc.terminate()
                proc.wait(30)
    return out


def report(
    booster: list[float],
    paths: dict[str, list[float]],
    router: dict[str, list[float]],
    args: argparse.Namespace,
    load: tuple[float, float],
) -> str:
    head = "| path | median | p90 | p99 | max |\n|---|---|---|---|---|\n"
    lines = [
        "# Single-request scoring latency",
        "",
        f"`make bench-scoring` (`python bench/scoring.py --calls {args.calls} --requests "
        f"{args.requests} --pairs {args.pairs}`): the case study's XGBoost baseline (100 trees) "
        "and LightGBM candidate (300 trees), registered with their signature in a throwaway "
        "MLflow store and loaded by alias; one request at a time, after 200 warm-up calls.",
        "",
        "## The booster alone",
        "",
        f"{args.calls} calls of `FraudModel.predict_proba` on one row (XGBoost).",
        "",
        head + f"| xgboost booster | {ms(booster)} |",
        "",
        "## The router's scoring paths, in process",
        "",
        f"{args.calls} requests through `kpigate.serve.scoring.Batcher.score`, one at a time: "
        "the time from the call to the score, event loop included.",
        "",
        head + "\n".join(f"| {name} | {ms(t)} |" for name, t in paths.items()),
        "",
        "## `kpigate serve` at 1 client",
        "",
        f"{args.requests} sequential `/predict` requests per run over one keep-alive "
        f"connection (httpx, Python client in this process), {args.pairs} runs per setting, "
        "interleaved; SQLite prediction log (committed before each answer) and metrics on, "
        "weight 0. Round-trip time at the client:",
        "",
        head + "\n".join(f"| {name} | {ms(t)} |" for name, t in router.items()),
        "",
        f"Load average before / after: {load[0]:.2f} / {load[1]:.2f}. "
        f"Machine: {describe('numpy', 'xgboost', 'lightgbm', shared=True)}.",
        "",
    ]
    return "\n".join(lines)


# A section of the page measured by another command (bench/router_ab.py), kept when this
# script rewrites the page: from this heading to the end.
KEPT_HEADING = "## The router's per-request cost"


def kept_section(page: Path) -> str:
    """The hand-written section from KEPT_HEADING on, if the page has one."""
    try:
        text = page.read_text()
    except OSError:
        return ""
    at = text.find(KEPT_HEADING)
    return "\n" + text[at:] if at >= 0 else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--write", type=Path, help="write the Markdown report here")
    args = parser.parse_args()
    from kpigate.fraud.data import generate
    from kpigate.fraud.models import (
        BASELINE_TRAIN_DRIFT,
        CANDIDATE_TRAIN_DRIFT,
        train_baseline,
        train_candidate,
    )
    from kpigate.fraud.registration import register_model
    from kpigate.registry.base import CANDIDATE, CHAMPION

    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        evaluation = generate(5_000, seed=3)
        baseline = train_baseline(generate(20_000, seed=1, drift=BASELINE_TRAIN_DRIFT), seed=0)
        candidate = train_candidate(generate(20_000, seed=2, drift=CANDIDATE_TRAIN_DRIFT), seed=0)
        for model, alias in ((baseline, CHAMPION), (candidate, CANDIDATE)):
            register_model(model, tracking_uri=uri, eval_frame=evaluation,
                           name="bench-scoring", alias=alias)  # fmt: skip
        booster = booster_alone(uri, args.calls)
        paths = batcher_paths(uri, args.calls)
        # The router serves the champion alone: no candidate alias at weight 0 is fine.
        router = router_one_client(uri, work, args.requests, args.pairs)
    text = report(booster, paths, router, args, (load0, os.getloadavg()[0]))
    print(text)
    if args.write:
        args.write.write_text(text + kept_section(args.write))
    return 0


if __name__ == "__main__":
    sys.exit(main())

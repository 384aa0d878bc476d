"""Single-row scoring latency of a model loaded from the registry in process (load_model).

Trains the XGBoost-100 baseline, registers it in a SQLite MLflow store, loads it back by its
`champion` alias as the router does, and times predict_proba on one row: the median and p99
of N calls, after a warm-up. This used to be a timed assertion in
tests/test_registry_mlflow.py, which failed on a busy machine; a number belongs here.

Run: make bench-scoring   (or: python bench/scoring.py --calls 5000 --write docs/bench-scoring.md)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe


def measure(calls: int) -> tuple[list[float], str]:
    from kpigate.fraud.data import generate
    from kpigate.fraud.models import BASELINE_TRAIN_DRIFT, train_baseline
    from kpigate.fraud.registration import load_model, register_model
    from kpigate.fraud.schema import FEATURES
    from kpigate.registry.base import CHAMPION

    with tempfile.TemporaryDirectory() as work:
        uri = f"sqlite:///{Path(work) / 'mlflow.db'}"
        model = train_baseline(generate(20_000, seed=1, drift=BASELINE_TRAIN_DRIFT), seed=0)
        register_model(model, tracking_uri=uri, eval_frame=generate(5_000, seed=3),
                       name="bench-scoring", alias=CHAMPION)  # fmt: skip
        loaded = load_model(CHAMPION, tracking_uri=uri, name="bench-scoring")
        row = np.zeros((1, len(FEATURES)), dtype=np.float32)
        for _ in range(200):
            loaded.predict_proba(row)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            loaded.predict_proba(row)
            times.append(time.perf_counter() - start)
        return times, loaded.flavor


def report(times: list[float], flavor: str, calls: int) -> str:
    ms = np.array(times) * 1000
    return (
        "# Single-row scoring latency, in process\n\n"
        f"`make bench-scoring` ({calls} calls of `predict_proba` on one row, after 200 warm-up "
        f"calls; the {flavor} baseline, 100 trees, loaded from the registry by alias with "
        "`kpigate.fraud.registration.load_model`).\n\n"
        "| median | p90 | p99 | max |\n|---|---|---|---|\n"
        f"| {np.median(ms):.3f} ms | {np.percentile(ms, 90):.3f} ms | "
        f"{np.percentile(ms, 99):.3f} ms | {ms.max():.3f} ms |\n\n"
        f"Machine: {describe('numpy', 'xgboost', shared=True)}.\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--write", type=Path, help="write the Markdown report here")
    args = parser.parse_args()
    times, flavor = measure(args.calls)
    text = report(times, flavor, args.calls)
    print(text)
    if args.write:
        args.write.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

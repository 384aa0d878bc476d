"""Replay throughput: 10,000 rollouts x 24 windows through `kpigate replay` (target: < 60 s).

Writes a JSON Lines file in the issue's format (one recall KPI; candidates identical, 2pp and
5pp worse in turn; the 4 x 6 schedule), then times the installed command on it end to end,
parsing and printing included, and reports peak memory.

Run: make bench-replay   (or: python bench/replay_speed.py --rollouts 10000 --write docs/...)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STAGES = (5, 25, 50, 100)


def write_windows(path: Path, rollouts: int, seed: int = 1) -> int:
    rng = np.random.default_rng(seed)
    total = 10_000  # labeled positives per window, 500 of them the candidate's at 5%
    lines = 0
    with path.open("w") as out:
        for r in range(rollouts):
            effect = (0.0, -0.02, -0.05)[r % 3]
            for t in range(24):
                stage = STAGES[t // 6]
                n_c = total * (95 if stage == 100 else stage) // 100
                n_b = total - n_c
                record = {
                    "rollout": f"r{r}",
                    "window": t + 1,
                    "stage": stage,
                    "kpis": {
                        "recall": {
                            "baseline": {
                                "successes": int(rng.binomial(n_b, 0.876)),
                                "trials": n_b,
                            },
                            "candidate": {
                                "successes": int(rng.binomial(n_c, 0.876 + effect)),
                                "trials": n_c,
                            },
                        }
                    },
                }
                out.write(json.dumps(record) + "\n")
                lines += 1
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rollouts", type=int, default=10_000)
    parser.add_argument("--write", help="write the result (markdown) to this file")
    args = parser.parse_args(argv)
    kpigate = Path(sys.executable).with_name("kpigate")
    with tempfile.TemporaryDirectory() as tmp:
        windows = Path(tmp) / "windows.jsonl"
        lines = write_windows(windows, args.rollouts)
        size = windows.stat().st_size / 1e6
        print(f"wrote {lines} windows ({size:.0f} MB); replaying...", file=sys.stderr)
        started = time.perf_counter()
        done = subprocess.run(
            [str(kpigate), "replay", "--summary", str(windows), "-o", os.devnull],
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return 1
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    verdict = "meets" if elapsed < 60 else "MISSES"
    text = (
        f"- {args.rollouts} rollouts x 24 windows = {lines} lines ({size:.0f} MB): "
        f"{elapsed:.1f} s ({lines / elapsed:,.0f} windows/s), peak RSS {peak_mb:.0f} MB; "
        f"{verdict} the < 60 s target. {done.stderr.strip()}\n"
        f"  Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}. Command: `make bench-replay` "
        f"(`python bench/replay_speed.py --rollouts {args.rollouts}`)."
    )
    print(text)
    if args.write:
        Path(args.write).write_text("# Replay throughput\n\n" + text + "\n")
    return 0 if elapsed < 60 else 1


if __name__ == "__main__":
    sys.exit(main())

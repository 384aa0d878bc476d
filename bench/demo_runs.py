"""The live demo N times in a row at a capped request rate: does it tell its story every time?

Each run is `kpigate demo --rate R` in a fresh workdir, one after the other (never two at once:
they would share the machine). A run passes when it exits 0, the good candidate is promoted to
100% and the bad one is rolled back for harm on recall. The report lists every run: its
duration, the rate the router reached, the window length the demo chose, every mid-rollout
resize (the machine slowed: the rate achieved and the new window), and the two outcomes.

Run: make bench-demo   (or: python bench/demo_runs.py --runs 10 --rate 50 --write docs/...)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

GOOD = "good: promoted to 100%"
BAD = re.compile(r"bad: rolled back for harm on recall")
SIZED = re.compile(r"answers (\d+) requests/s here \(.*?\): windows of ([\d.]+) s")
RESIZED = re.compile(r"machine slowed to (\d+) req/s: windows now ([\d.]+) s")


@dataclass
class Run:
    number: int
    seconds: float
    exit_code: int
    rates: list[str]
    windows: list[str]
    resized: list[str]  # "31/s: 25.8 s" per mid-rollout resize
    good: bool
    bad: bool

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and self.good and self.bad


def one_run(number: int, rate: float, timeout_s: float, logs: Path | None = None) -> Run:
    with tempfile.TemporaryDirectory(prefix="kpigate-demo-bench-") as work:
        start = time.monotonic()
        log = Path(work) / "demo.log"
        with log.open("w") as sink:
            demo = subprocess.Popen(
                [sys.executable, "-m", "kpigate.cli", "demo", "--rate", f"{rate:g}",
                 "--workdir", work], stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                code = demo.wait(timeout_s)
            except subprocess.TimeoutExpired:
                demo.terminate()  # SIGTERM: the demo stops every server it started
                code = demo.wait(120)
        out = log.read_text(errors="replace")
        if logs is not None:  # a failed run is explained by its output, not guessed at
            logs.mkdir(parents=True, exist_ok=True)
            (logs / f"run-{number}.log").write_text(out)
        seconds = time.monotonic() - start
    sized = SIZED.findall(out)
    resized = [f"{r}/s: {w} s" for r, w in RESIZED.findall(out)]
    return Run(number, seconds, code, [r for r, _ in sized], [w for _, w in sized], resized,
               GOOD in out, bool(BAD.search(out)))  # fmt: skip


def report(runs: list[Run], rate: float, asked: int) -> str:
    rows = "".join(
        f"| {r.number} | {'pass' if r.passed else 'FAIL'} | {r.seconds:.0f} s | "
        f"{', '.join(r.rates) or '-'} | {', '.join(r.windows) or '-'} | "
        f"{'; '.join(r.resized) or 'none'} | "
        f"{'promoted' if r.good else 'not promoted'} | "
        f"{'rolled back on recall' if r.bad else 'not rolled back on recall'} | {r.exit_code} |\n"
        for r in runs
    )
    passed = sum(r.passed for r in runs)
    return (
        "# The live demo, run after run\n\n"
        f"`python bench/demo_runs.py --runs {asked} --rate {rate:g}` (`make bench-demo`): "
        f"`kpigate demo --rate {rate:g}` in a fresh workdir, one run after the other. "
        f"**{passed} of {len(runs)} runs passed** (good candidate promoted to 100%, bad one "
        "rolled back for harm on recall, exit 0)"
        + (
            f"; {asked - len(runs)} of the {asked} asked for were not run"
            if asked > len(runs)
            else ""
        )
        + ".\n\n| run | result | time | requests/s reached (per rollout) | window (s) | "
        "resized mid-rollout (achieved rate: new window) | good | bad | exit |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        + rows
        + f"\nMachine: {describe('numpy', shared=True)}.\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rate", type=float, default=50.0, help="requests/s asked for")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--until", type=float, default=0.0,
                        help="start no run after this Unix time (a deadline)")  # fmt: skip
    parser.add_argument("--write", type=Path, help="write the Markdown report here")
    parser.add_argument("--logs", type=Path, help="keep each run's output here (run-N.log)")
    args = parser.parse_args()
    runs: list[Run] = []
    for number in range(1, args.runs + 1):
        if args.until and time.time() > args.until:
            break
        runs.append(one_run(number, args.rate, args.timeout, args.logs))
        last = runs[-1]
        print(f"run {number}: {'pass' if last.passed else 'FAIL'} in {last.seconds:.0f} s",
              flush=True)  # fmt: skip
        if args.write:  # after every run: an interrupted series still leaves its report
            args.write.write_text(report(runs, args.rate, args.runs))
    print(report(runs, args.rate, args.runs))
    return 0 if runs and all(r.passed for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

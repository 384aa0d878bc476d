"""Two or more builds of `kpigate serve` side by side: the same models, the same wrk load, runs
interleaved, so a before/after comparison on a busy shared machine compares like with like.

Each arm is NAME=KPIGATE_CLI[:FLAG,FLAG...], e.g. `main=../main/.venv/bin/kpigate` and
`this=.venv/bin/kpigate:--log-inline-rows=0`; every arm serves the XGBoost-100 champion of
bench/router_bench.py at weight 0 (or --weight) with its own SQLite log (committed before each
answer) and metrics on. Each repetition measures every arm at each concurrency back to back, the
order rotated from one block to the next; the report gives the median requests/s, p50 and p99 per
arm and each arm's throughput ÷ the first arm's, median (min-max) over the repetitions, with the
load average. Nothing here is a target: it is the A/B that docs/bench-scoring.md quotes.

usage: python bench/router_ab.py --arm A=CLI --arm B=CLI[:FLAGS] [--clients 1,16,64] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import peer_servers as ps
import router_bench as rb
import router_report as rr
from wrk_load import ensure_wrk, lua_script, run_wrk


def arm_server(
    spec: str, work: Path, uri: str, weight: float, body: dict[str, object]
) -> ps.Server:
    name, _, rest = spec.partition("=")
    cli, _, flags = rest.partition(":")
    if not name or not cli:
        raise SystemExit(f"--arm {spec!r}: use NAME=KPIGATE_CLI[:FLAG,FLAG...]")
    base = ps.kpigate(name, work, uri, f"sqlite:///{work / f'{name}.db'}", "kpigate_", weight, body)
    extra = [f for f in flags.split(",") if f]
    return replace(base, cmd=[str(Path(cli).absolute()), *base.cmd[1:], *extra])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", action="append", required=True, help="NAME=CLI[:FLAGS]")
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--weight", type=float, default=0.0)
    args = parser.parse_args(argv)
    wrk = ensure_wrk()
    if wrk is None:
        print("wrk is not installed", file=sys.stderr)
        return 1
    clients = [int(c) for c in args.clients.split(",")]
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    body, _ = rb.request_body()
    runs: list[rr.Run] = []
    with tempfile.TemporaryDirectory(prefix="kpigate-ab-") as tmp:
        work = Path(tmp)
        uri, _ = rb.train_and_register(work)
        servers = [arm_server(spec, work, uri, args.weight, body) for spec in args.arm]
        bench = rb.Bench()
        with rb.running(servers):
            up = rb.start_all(servers, bench)
            if len(up) != len(servers):
                print(f"not started: {bench.missing}", file=sys.stderr)
                return 1
            script = work / "ab.lua"
            script.write_text(lua_script("/predict", up[0].body))
            block = 0
            for rep in range(1, args.reps + 1):
                for n in clients:
                    for server in rb.rotated(up, block):
                        run_wrk(wrk, server.url, script, n, args.warmup)
                        load1 = os.getloadavg()[0]
                        m = run_wrk(wrk, server.url, script, n, args.seconds)
                        runs.append(rr.Run(rep, len(runs) + 1, server.name, n, m, load1))
                        print(
                            f"rep {rep} {server.name} c={n}: {m.rps:,.0f} req/s, p50 "
                            f"{m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms, {m.socket_errors} socket "
                            f"errors, {m.non_2xx} non-2xx, load {load1:.2f}",
                            file=sys.stderr,
                        )
                    block += 1
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    names = [s.name for s in servers]
    print(f"load average {load_before} before, {load_after} after; {args.reps} repetitions of "
          f"{args.seconds:g} s per arm and concurrency, interleaved")  # fmt: skip
    print()
    print("| arm | clients | requests/s | p50 ms | p99 ms | errors (socket / non-2xx) "
          f"| throughput ÷ {names[0]} |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n in clients:
        for name in names:
            ms = list(rr.measurements(runs, name, n).values())
            ratio = rr.spread(rr.pair_ratios(runs, name, names[0], n, rr.throughput))
            shown = "-" if ratio is None or name == names[0] else ratio.text(unit="x")
            print(
                f"| {name} | {n} | {statistics.median(m.rps for m in ms):,.0f} | "
                f"{statistics.median(m.p50_ms for m in ms):.2f} | "
                f"{statistics.median(m.p99_ms for m in ms):.2f} | "
                f"{sum(m.socket_errors for m in ms)} / {sum(m.non_2xx for m in ms)} | {shown} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

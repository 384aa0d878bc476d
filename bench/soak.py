"""Soak benchmark: a real router under steady load with labels flowing back, for N minutes.

The router runs in its own process (uvicorn, prediction log on a SQLite file, metrics on) with a
real XGBoost baseline and LightGBM candidate from kpigate.fraud.models, trained here on
kpigate.fraud.data rows and handed to the router through an in-process loader, at 50% canary.
This process drives it open-loop at --rate requests/s and posts each label back after a delay
(some twice, on purpose). At the end it checks:
  missing         successful responses whose request_id is not in the prediction log (want 0)
  double-counted  outcome counts beyond the labels that joined (want 0): the router's
                  kpigate_outcomes_total{segment="all"} sum, its joined-label counter, the
                  /feedback answers and the labelled rows in the log must all agree, and every
                  re-posted label must come back as a duplicate
  memory          the router's RSS after warm-up and at the end (from /proc, its own process)
Results go to docs/reliability.md between the Load markers (the rest of the file is kept).

usage: python bench/soak.py [--minutes 10] [--rate 500] [--write docs/reliability.md]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import os
import pickle
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from machine import describe  # bench/machine.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BEGIN = "<!-- load:begin (bench/soak.py writes this section) -->"
END = "<!-- load:end -->"
HEADER = """# Reliability

What kpigate promises under faults, bad input and load, and the commands that show it. Each
section is produced by the command it names; rerun the command to refresh it.
"""
# The router's RSS may grow by this much from warm-up to the end and still count as flat:
# allocator arenas and SQLite's page cache settle during the first minutes.
FLAT_MB = 16.0
FLAT_SHARE = 0.05
# uvicorn closes keep-alive connections idle for 5 s; reopen ours before that.
IDLE_REOPEN_S = 3.0


# -- the router process (this file, run with --serve) -----------------------------------------


def serve(models_path: str, port: int, db_path: str, weight: float) -> None:
    import uvicorn

    from kpigate.serve.app import create_app
    from kpigate.serve.config import ServeConfig
    from kpigate.serve.loader import StaticLoader

    with open(models_path, "rb") as fh:
        models = pickle.load(fh)
    config = ServeConfig(db_url=f"sqlite:///{db_path}", initial_weight=weight)
    app = create_app(config, StaticLoader(models))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                lifespan="on")  # fmt: skip


# -- setup --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def train(path: Path) -> None:
    """The case study's baseline (pre-drift data) and candidate (drifted data), pickled."""
    from kpigate.fraud.data import generate
    from kpigate.fraud.models import train_baseline, train_candidate

    baseline = train_baseline(generate(20_000, seed=11, drift=0.0), seed=0)
    candidate = train_candidate(generate(20_000, seed=12, drift=0.5), seed=0)
    baseline.version, candidate.version = "1", "2"
    with open(path, "wb") as fh:
        pickle.dump({"champion": baseline, "candidate": candidate}, fh)


def traffic(n: int, seed: int) -> list[tuple[bytes, int]]:
    """n distinct request bodies (JSON) with their labels; the load cycles through them."""
    from kpigate.fraud.data import generate, to_requests
    from kpigate.fraud.schema import LABEL

    frame = generate(n, seed=seed, drift=0.3)
    out = []
    for record, label in zip(to_requests(frame), frame[LABEL].tolist(), strict=True):
        record.pop("amount_band")  # the router derives it; not a model input
        out.append((json.dumps(record).encode(), int(label)))
    return out


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for process {pid}")


def metric_sum(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# -- the load ------------------------------------------------------------------------------


@dataclass
class Load:
    sent: int = 0
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    late_starts: int = 0  # requests started > 100 ms after their slot (the client fell behind)
    request_ids: list[str] = field(default_factory=list)
    arms: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    labels_posted: int = 0
    reposted: int = 0
    feedback: Counter[str] = field(default_factory=Counter)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds, MB)
    elapsed_s: float = 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Connection:
    """One keep-alive HTTP/1.1 connection for POST /predict.

    httpx costs about 1.5 ms of CPU a request, which at 500/s takes most of a core from the
    router on a 2-core machine; this costs a few tens of microseconds. Good enough for a
    server we know (uvicorn always answers with Content-Length)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_used = 0.0

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        now = time.monotonic()
        if self.writer is not None and now - self.last_used > IDLE_REOPEN_S:
            self.writer.close()  # uvicorn may be closing it right now: do not race it
            self.writer = None
        self.last_used = now
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        try:
            self.writer.write(head.encode() + body)
            status_line = await self.reader.readuntil(b"\r\n")
            length = 0
            while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            return int(status_line.split()[1]), await self.reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            self.writer.close()
            self.writer = None
            raise


async def drive(url: str, pid: int, opts: argparse.Namespace) -> Load:
    import httpx

    load = Load()
    bodies = traffic(opts.pool, seed=21)
    rng = random.Random(5)
    heap: list[tuple[float, int, str, int]] = []  # (due, tie, request_id, label)
    total = int(opts.minutes * 60 * opts.rate)
    host, port = url.removeprefix("http://").split(":")
    idle = [Connection(host, int(port)) for _ in range(opts.concurrency)]
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(conn: Connection, body: bytes, label: int) -> None:
            t0 = time.perf_counter()
            try:
                status, raw = await asyncio.wait_for(conn.post("/predict", body), 30)
            except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
                load.failed[type(exc).__name__] += 1
                return
            finally:
                idle.append(conn)
                free.set()
            if status != 200:
                load.failed[f"HTTP {status}"] += 1
                return
            load.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
            answer = json.loads(raw)
            load.ok += 1
            load.arms[answer["arm"]] += 1
            load.request_ids.append(answer["request_id"])
            delay = opts.label_delay * (rng.uniform(0.5, 1.5) if label else 1.0)
            heapq.heappush(heap, (time.monotonic() + delay, load.ok, answer["request_id"], label))

        async def post_labels(items: list[dict[str, Any]]) -> None:
            try:
                resp = await client.post("/feedback", json={"labels": items})
                resp.raise_for_status()
            except httpx.HTTPError as exc:
                load.failed[f"feedback {type(exc).__name__}"] += 1
                return
            report = resp.json()
            for key in ("joined", "unknown", "duplicate", "invalid", "late"):
                load.feedback[key] += int(report.get(key, 0))

        async def labeller(done: asyncio.Event) -> None:
            while not (done.is_set() and not heap):
                now = time.monotonic()
                due: list[dict[str, Any]] = []
                while heap and (heap[0][0] <= now or done.is_set()):
                    _, _, rid, label = heapq.heappop(heap)
                    due.append({"request_id": rid, "label": label})
                    # Every 97th label is posted a second time (a retrying label feed).
                    if (load.labels_posted + len(due)) % 97 == 0:
                        due.append({"request_id": rid, "label": label})
                        load.reposted += 1
                for start in range(0, len(due), 500):
                    chunk = due[start : start + 500]
                    await post_labels(chunk)
                    load.labels_posted += len(chunk)
                await asyncio.sleep(0.25)

        async def sampler(done: asyncio.Event) -> None:
            t0 = time.monotonic()
            while not done.is_set():
                load.rss.append((time.monotonic() - t0, rss_mb(pid)))
                elapsed = time.monotonic() - t0
                sent = load.sent
                line = (
                    f"\r{elapsed:6.0f}s sent {sent} ok {load.ok} failed "
                    f"{sum(load.failed.values())} labels {load.labels_posted} "
                    f"rss {load.rss[-1][1]:.1f} MB"
                )
                print(line, end="", file=sys.stderr, flush=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 5.0)

        sending_done, sampling_done = asyncio.Event(), asyncio.Event()
        side = [
            asyncio.create_task(labeller(sending_done)),
            asyncio.create_task(sampler(sampling_done)),
        ]
        tasks: set[asyncio.Task[None]] = set()
        free = asyncio.Event()
        started = time.monotonic()
        for i in range(total):
            slot = started + i / opts.rate
            delay = slot - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.1:
                load.late_starts += 1
            while not idle:  # all connections busy: the router is behind
                free.clear()
                await free.wait()
            body, label = bodies[i % len(bodies)]
            load.sent += 1
            task = asyncio.create_task(one(idle.pop(), body, label))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        load.elapsed_s = time.monotonic() - started
        sending_done.set()
        await side[0]
        load.rss.append((time.monotonic() - started, rss_mb(pid)))
        sampling_done.set()
        await side[1]
        print(file=sys.stderr)
    return load


# -- checks and report ---------------------------------------------------------------------


@dataclass
class Checks:
    log_rows: int
    missing: int
    labelled_rows: int
    outcomes_all: float
    joined_counter: float
    dropped: float
    double_counted: int
    unjoined: int
    rss_start_mb: float
    rss_warm_mb: float
    rss_end_mb: float
    rss_max_mb: float
    flat: bool


def check(url: str, db_path: Path, load: Load, rss_start: float, warm_s: float) -> Checks:
    import httpx

    # The writer flushes every 0.25 s; wait until nothing is pending.
    deadline = time.monotonic() + 60
    while True:
        text = httpx.get(url + "/metrics", timeout=10).text
        if metric_sum(text, "kpigate_predlog_pending_rows") == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        logged = {row[0] for row in db.execute("select request_id from kpigate_predictions")}
        log_rows = db.execute("select count(*) from kpigate_predictions").fetchone()[0]
        labelled = db.execute(
            "select count(*) from kpigate_predictions where label is not null"
        ).fetchone()[0]
    missing = sum(1 for rid in load.request_ids if rid not in logged)
    outcomes = metric_sum(text, "kpigate_outcomes_total", segment="all")
    joined = metric_sum(text, "kpigate_feedback_labels_total", result="joined")
    # Each answered request gets one first label, so every count of joined labels should equal
    # load.ok; anything above it was counted twice (a re-post that joined again shows up here).
    double = int(max(0.0, max(outcomes, joined, load.feedback["joined"], labelled) - load.ok))
    warm = [mb for t, mb in load.rss if t >= warm_s] or [load.rss[-1][1]]
    rss_warm, rss_end = warm[0], load.rss[-1][1]
    flat = rss_end - rss_warm <= max(FLAT_MB, FLAT_SHARE * rss_warm)
    return Checks(
        log_rows=log_rows,
        missing=missing,
        labelled_rows=labelled,
        outcomes_all=outcomes,
        joined_counter=joined,
        dropped=metric_sum(text, "kpigate_predlog_rows_dropped_total"),
        double_counted=double,
        unjoined=max(0, load.ok - load.feedback["joined"]),
        rss_start_mb=rss_start,
        rss_warm_mb=rss_warm,
        rss_end_mb=rss_end,
        rss_max_mb=max(mb for _, mb in load.rss),
        flat=flat,
    )


def passed(load: Load, checks: Checks) -> bool:
    return (
        checks.missing == 0
        and checks.double_counted == 0
        and checks.unjoined == 0
        and load.feedback["duplicate"] == load.reposted
        and checks.flat
        and not load.failed
    )


def machine() -> str:
    return describe("uvicorn", shared=True)


def section(
    load: Load, checks: Checks, opts: argparse.Namespace, command: str, loadavg: str
) -> str:
    ok = passed(load, checks)
    rate = load.ok / load.elapsed_s if load.elapsed_s else 0.0
    rss = ", ".join(f"{mb:.0f}" for _, mb in load.rss[:: max(1, len(load.rss) // 12)])
    lines = [
        BEGIN,
        "## Load",
        "",
        f"A {opts.minutes:g}-minute soak at {opts.rate:g} requests/s on loopback with labels "
        "flowing back (`make bench-soak`, bench/soak.py). The router runs in its own process "
        "(uvicorn, SQLite prediction log, metrics on) with the case study's XGBoost baseline "
        "and LightGBM candidate at 50% canary; the load is open-loop (a request starts at its "
        f"slot whatever the previous ones did, at most {opts.concurrency} in flight), and each "
        f"label is posted about {opts.label_delay:g} s after its answer, every 97th twice.",
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}; load average before the run: {loadavg}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| measure | value | want |",
        "|---|---:|---|",
        f"| requests sent / answered 200 | {load.sent:,} / {load.ok:,} | all |",
        f"| failed requests | {sum(load.failed.values())} {dict(load.failed) or ''} | 0 |",
        f"| achieved rate | {rate:,.1f}/s over {load.elapsed_s:,.0f} s | {opts.rate:g}/s |",
        f"| requests started > 100 ms after their slot | {load.late_starts:,} | 0 |",
        f"| client latency p50 / p99 | {load.percentile(0.5):.1f} / "
        f"{load.percentile(0.99):.1f} ms | |",
        f"| arms (baseline / candidate) | {load.arms['baseline']:,} / "
        f"{load.arms['candidate']:,} | about 50/50 |",
        f"| prediction log rows | {checks.log_rows:,} | = answered |",
        f"| **predictions missing from the log** | **{checks.missing}** | 0 |",
        f"| rows dropped by the log writer | {checks.dropped:g} | 0 |",
        f"| labels posted (incl. re-posts) | {load.labels_posted:,} | |",
        f"| joined: /feedback answers / router counter / outcomes segment=all / labelled rows "
        f"| {load.feedback['joined']:,} / {checks.joined_counter:,.0f} / "
        f"{checks.outcomes_all:,.0f} / {checks.labelled_rows:,} | all = answered |",
        f"| re-posted labels / answered duplicate | {load.reposted:,} / "
        f"{load.feedback['duplicate']:,} | equal |",
        f"| labels never joined | {checks.unjoined:,} | 0 |",
        f"| **labels double-counted** | **{checks.double_counted}** | 0 |",
        f"| router RSS at start (idle) / after {opts.warmup:g} s / end / max | "
        f"{checks.rss_start_mb:.1f} / {checks.rss_warm_mb:.1f} / {checks.rss_end_mb:.1f} / "
        f"{checks.rss_max_mb:.1f} MB | end - warm-up <= max({FLAT_MB:g} MB, "
        f"{FLAT_SHARE:.0%}) |",
        f"| **memory flat** | **{'yes' if checks.flat else 'NO'}** | yes |",
        "",
        f"RSS samples (MB, every ~{load.elapsed_s / max(1, len(load.rss) - 1):.0f} s, "
        f"thinned): {rss}.",
        "",
        f"Verdict: {'PASS' if ok else 'FAIL'}.",
        END,
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    old = path.read_text() if path.exists() else HEADER
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + text.rstrip("\n") + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="soak length (%(default)s)")
    parser.add_argument("--rate", type=float, default=500.0, help="requests/s (%(default)s)")
    parser.add_argument("--label-delay", type=float, default=5.0,
                        help="seconds from an answer to its label (%(default)s)")  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=64, help="max requests in flight")
    parser.add_argument("--pool", type=int, default=20_000, help="distinct transactions cycled")
    parser.add_argument("--warmup", type=float, default=60.0,
                        help="seconds before the RSS baseline is taken (%(default)s)")  # fmt: skip
    parser.add_argument("--write", default=str(ROOT / "docs" / "reliability.md"),
                        help="file for the Load section; '' to skip (%(default)s)")  # fmt: skip
    parser.add_argument("--serve", nargs=4, metavar=("MODELS", "PORT", "DB", "WEIGHT"),
                        help=argparse.SUPPRESS)  # fmt: skip
    opts = parser.parse_args()
    if opts.serve:
        serve(opts.serve[0], int(opts.serve[1]), opts.serve[2], float(opts.serve[3]))
        return 0
    if opts.minutes <= 0 or opts.rate <= 0 or opts.concurrency < 1:
        parser.error("--minutes, --rate and --concurrency must be positive")
    loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="kpigate-soak-") as tmp:
        work = Path(tmp)
        print("training the baseline and candidate ...", file=sys.stderr)
        train(work / "models.pkl")
        port, db = free_port(), work / "router.db"
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, __file__, "--serve", str(work / "models.pkl"), str(port), str(db),
               "50"]  # fmt: skip
        router = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        try:
            wait_ready(url, router)
            rss_start = rss_mb(router.pid)
            print(f"router pid {router.pid} up at {url}, RSS {rss_start:.1f} MB; "
                  f"{opts.minutes:g} min at {opts.rate:g}/s ...", file=sys.stderr)  # fmt: skip
            with contextlib.suppress(ImportError):
                import uvloop

                asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            load = asyncio.run(drive(url, router.pid, opts))
            checks = check(url, db, load, rss_start, min(opts.warmup, load.elapsed_s / 2))
        finally:
            router.terminate()
            try:
                router.wait(30)
            except subprocess.TimeoutExpired:
                router.kill()
    argv = " ".join(sys.argv[1:])
    command = "make bench-soak" + (f"  (python bench/soak.py {argv})" if argv else "")
    text = section(load, checks, opts, command, loadavg)
    print(text)
    if opts.write:
        write_section(Path(opts.write), text)
        print(f"wrote the Load section of {opts.write}", file=sys.stderr)
    return 0 if passed(load, checks) else 1


def wait_ready(url: str, router: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if router.poll() is not None:
            raise RuntimeError(f"the router exited with {router.returncode}; see its log above")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the router at {url} was not ready within {timeout_s:.0f}s")


if __name__ == "__main__":
    sys.exit(main())

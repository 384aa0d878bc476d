"""Soak benchmark: a real router under steady load with labels flowing back, for N minutes.

By default two router replicas run, each in its own process (uvicorn, metrics on), sharing one
PostgreSQL prediction log (KPIGATE_DB_URL, default the loopback test database, fresh tables
dropped afterwards), with a real XGBoost baseline and LightGBM candidate from
kpigate.fraud.models, trained here and handed to the routers through an in-process loader, at
50% canary. Requests alternate between the replicas; each label is posted to the replica that
did not serve it, after a delay (some twice, on purpose). Half-way (--kill-at) the second
replica is SIGKILLed and restarted: requests and labels it had not answered are retried on the
other one, as a client behind a load balancer would. At the end it checks:
  missing         successful responses whose request_id is not in the prediction log (want 0)
  double-counted  outcome counts beyond the labels that joined (want 0): the /feedback answers,
                  the labelled rows in the log and the routers' kpigate_outcomes_total and
                  joined-label counters (the killed process's from its last scrape) must agree,
                  and every re-posted label must come back as a duplicate
  memory          the first replica's RSS after warm-up and at the end (from /proc)
--replicas 1 runs the single router on a SQLite file, without the kill. Results go to
docs/reliability.md between the Load markers (the rest of the file is kept).

usage: python bench/soak.py [--minutes 10] [--rate 500] [--replicas 2] [--write docs/reliability.md]
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
import signal
import socket
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


POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def serve(models_path: str, port: int, prefix: str, replica_id: str) -> None:
    """One router replica; its database URL comes from KPIGATE_DB_URL (never argv)."""
    import uvicorn

    from kpigate.serve.app import create_app
    from kpigate.serve.cli import uvicorn_config
    from kpigate.serve.config import ServeConfig
    from kpigate.serve.loader import StaticLoader

    with open(models_path, "rb") as fh:
        models = pickle.load(fh)
    config = ServeConfig(db_url=os.environ["KPIGATE_DB_URL"], table_prefix=prefix,
                         replica_id=replica_id, initial_weight=50.0)  # fmt: skip
    app = create_app(config, StaticLoader(models))
    server = uvicorn.Server(uvicorn_config(app, config, "127.0.0.1", port, log_level="warning",
                                           access_log=False))  # fmt: skip
    server.run()


class Replica:
    """A router replica process, restartable under the same name and port."""

    def __init__(self, name: str, models: Path, prefix: str, db_url: str) -> None:
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, __file__, "--serve", str(models), str(self.port), prefix,
                    name]  # fmt: skip
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), KPIGATE_DB_URL=db_url,
                        KPIGATE_ADMIN_TOKEN="soak")  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.up = False
        self.killed_counters: list[str] = []  # /metrics of killed processes, last scrape

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, start_new_session=True)
        wait_ready(self.url, self.proc)
        self.up = True

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL at once (no scrape first: requests in flight must die with it)."""
        self.up = False
        os.killpg(self.pid, signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)


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
    kills: int = 0
    failed_at_kill: int = 0  # in flight to the killed replica, retried on another

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


async def drive(replicas: list[Replica], opts: argparse.Namespace) -> Load:
    import httpx

    load = Load()
    bodies = traffic(opts.pool, seed=21)
    rng = random.Random(5)
    heap: list[tuple[float, int, str, int, int]] = []  # (due, tie, request_id, label, served by)
    total = int(opts.minutes * 60 * opts.rate)
    n = len(replicas)
    idle = [
        [Connection("127.0.0.1", r.port) for _ in range(opts.concurrency // n or 1)]
        for r in replicas
    ]
    kill_slot = int(total * opts.kill_at) if n > 1 and opts.kill_at > 0 else -1
    async with httpx.AsyncClient(timeout=30) as client:

        def pick(i: int) -> int:
            """Replica i % n, or the next one up (a load balancer skips a dead backend)."""
            for k in range(n):
                j = (i + k) % n
                if replicas[j].up:
                    return j
            return i % n

        async def one(
            index: int, conn: Connection, body: bytes, label: int, retried: bool = False
        ) -> None:
            t0 = time.perf_counter()
            try:
                status, raw = await asyncio.wait_for(conn.post("/predict", body), 30)
            except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
                idle[index].append(conn)
                free.set()
                if not replicas[index].up and not retried:
                    # In flight at the kill: never answered, so retried on another replica.
                    load.failed_at_kill += 1
                    other = pick(index + 1)
                    while not idle[other]:
                        free.clear()
                        await free.wait()
                    await one(other, idle[other].pop(), body, label, retried=True)
                    return
                load.failed[type(exc).__name__] += 1
                return
            idle[index].append(conn)
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
            due = time.monotonic() + delay
            heapq.heappush(heap, (due, load.ok, answer["request_id"], label, index))

        async def post_labels(target: int, items: list[dict[str, Any]], retry: bool) -> None:
            try:
                resp = await client.post(replicas[target].url + "/feedback", json={"labels": items})
                resp.raise_for_status()
            except httpx.HTTPError as exc:
                if not retry:
                    # The replica died with the request: the labels go to another one; those
                    # it had already joined come back as duplicates, counted apart.
                    await post_labels(pick(target + 1), items, retry=True)
                    return
                load.failed[f"feedback {type(exc).__name__}"] += 1
                return
            report = resp.json()
            for key in ("joined", "unknown", "duplicate", "invalid", "late"):
                name = f"{key} on retry" if retry and key == "duplicate" else key
                load.feedback[name] += int(report.get(key, 0))

        async def labeller(done: asyncio.Event) -> None:
            while not (done.is_set() and not heap):
                now = time.monotonic()
                due: dict[int, list[dict[str, Any]]] = {}
                count = 0
                while heap and (heap[0][0] <= now or done.is_set()):
                    _, _, rid, label, served = heapq.heappop(heap)
                    # Labels go to the replica that did not serve the prediction.
                    items = due.setdefault(pick(served + 1), [])
                    items.append({"request_id": rid, "label": label})
                    count += 1
                    # Every 97th label is posted a second time (a retrying label feed).
                    if (load.labels_posted + count) % 97 == 0:
                        items.append({"request_id": rid, "label": label})
                        load.reposted += 1
                for target, items in due.items():
                    for start in range(0, len(items), 500):
                        chunk = items[start : start + 500]
                        await post_labels(target, chunk, retry=False)
                        load.labels_posted += len(chunk)
                await asyncio.sleep(0.25)

        async def sampler(done: asyncio.Event) -> None:
            t0 = time.monotonic()
            while not done.is_set():
                load.rss.append((time.monotonic() - t0, rss_mb(replicas[0].pid)))
                elapsed = time.monotonic() - t0
                line = (
                    f"\r{elapsed:6.0f}s sent {load.sent} ok {load.ok} failed "
                    f"{sum(load.failed.values())} at kill {load.failed_at_kill} labels "
                    f"{load.labels_posted} rss {load.rss[-1][1]:.1f} MB"
                )
                print(line, end="", file=sys.stderr, flush=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 5.0)

        async def kill_and_restart(victim: Replica) -> None:
            # Its counters die with it: keep its last scrape (a lower bound of what it counted).
            with contextlib.suppress(httpx.HTTPError):
                scraped = await client.get(victim.url + "/metrics")
                victim.killed_counters.append(scraped.text)
            victim.kill()
            load.kills += 1
            print(f"\nSIGKILLed {victim.name}; restarting it", file=sys.stderr)
            await asyncio.to_thread(victim.start)
            print(f"{victim.name} is back", file=sys.stderr)

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
            if i == kill_slot:
                side.append(asyncio.create_task(kill_and_restart(replicas[-1])))
            index = pick(i)
            while not idle[index]:  # all connections busy: the router is behind
                free.clear()
                await free.wait()
            body, label = bodies[i % len(bodies)]
            load.sent += 1
            task = asyncio.create_task(one(index, idle[index].pop(), body, label))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        load.elapsed_s = time.monotonic() - started
        sending_done.set()
        await side[0]
        await asyncio.gather(*side[2:])
        load.rss.append((time.monotonic() - started, rss_mb(replicas[0].pid)))
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


def check(
    replicas: list[Replica], db_url: str, prefix: str, load: Load, rss_start: float, warm_s: float
) -> Checks:
    import httpx
    from sqlalchemy import func, select

    from kpigate.serve.predlog import Tables, make_engine

    # Rows are committed before their answers: nothing can be pending. Shadow-free canary, so
    # every row is a served prediction.
    texts = [httpx.get(r.url + "/metrics", timeout=10).text for r in replicas]
    texts += [text for r in replicas for text in r.killed_counters]
    table = Tables(prefix).predictions
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            logged = {rid for (rid,) in conn.execute(select(table.c.request_id))}
            log_rows = len(logged)
            labelled = int(
                conn.execute(
                    select(func.count()).select_from(table).where(table.c.label.is_not(None))
                ).scalar_one()
            )
    finally:
        engine.dispose()
    missing = sum(1 for rid in load.request_ids if rid not in logged)
    outcomes = sum(metric_sum(t, "kpigate_outcomes_total", segment="all") for t in texts)
    joined = sum(metric_sum(t, "kpigate_feedback_labels_total", result="joined") for t in texts)
    # Each answered request gets one first label, so every count of joined labels should equal
    # load.ok; anything above it was counted twice (a re-post that joined again shows up here).
    answered_joined = load.feedback["joined"]
    double = int(max(0.0, max(outcomes, joined, answered_joined, labelled) - load.ok))
    warm = [mb for t, mb in load.rss if t >= warm_s] or [load.rss[-1][1]]
    rss_warm, rss_end = warm[0], load.rss[-1][1]
    flat = rss_end - rss_warm <= max(FLAT_MB, FLAT_SHARE * rss_warm)
    return Checks(
        log_rows=log_rows,
        missing=missing,
        labelled_rows=labelled,
        outcomes_all=outcomes,
        joined_counter=joined,
        dropped=sum(metric_sum(t, "kpigate_predlog_rows_dropped_total") for t in texts),
        double_counted=double,
        # Labels joined by the killed replica whose answer died with it come back as
        # duplicates on the retry: joined all the same (the labelled rows show it).
        unjoined=max(0, load.ok - labelled),
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
        and load.feedback["joined"] + load.feedback["duplicate on retry"] == load.ok
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
        "flowing back (`make bench-soak`, bench/soak.py). "
        + (
            f"{opts.replicas} router replicas, each in its own process (uvicorn, metrics on), "
            "share one PostgreSQL prediction log and routing state; requests alternate between "
            "them and each label goes to the replica that did not serve it. At "
            f"{opts.kill_at:.0%} of the run the last replica is SIGKILLed and restarted; "
            "requests and labels in flight to it are retried on the other, as a client behind "
            "a load balancer would. "
            if opts.replicas > 1
            else "The router runs in its own process (uvicorn, SQLite prediction log, metrics on). "
        )
        + "The models are the case study's XGBoost baseline and LightGBM candidate at 50% "
        "canary; the load is open-loop (a request starts at its slot whatever the previous "
        f"ones did, at most {opts.concurrency} in flight), and each label is posted about "
        f"{opts.label_delay:g} s after its answer, every 97th twice.",
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}; load average before the run: {loadavg}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| measure | value | want |",
        "|---|---:|---|",
        f"| requests sent / answered 200 | {load.sent:,} / {load.ok:,} | all |",
        f"| failed requests | {sum(load.failed.values())} {dict(load.failed) or ''} | 0 |",
        f"| replicas SIGKILLed / requests in flight to it, retried on another | {load.kills} / "
        f"{load.failed_at_kill} | |",
        f"| achieved rate | {rate:,.1f}/s over {load.elapsed_s:,.0f} s | {opts.rate:g}/s |",
        f"| requests started > 100 ms after their slot | {load.late_starts:,} | 0 |",
        f"| client latency p50 / p99 | {load.percentile(0.5):.1f} / "
        f"{load.percentile(0.99):.1f} ms | |",
        f"| arms (baseline / candidate) | {load.arms['baseline']:,} / "
        f"{load.arms['candidate']:,} | about 50/50 |",
        f"| prediction log rows | {checks.log_rows:,} | >= answered (a request killed in flight "
        "may be committed, never answered) |",
        f"| **predictions missing from the log** | **{checks.missing}** | 0 |",
        f"| rows dropped by the log (dead-lettered or queue full) | {checks.dropped:g} | 0 |",
        f"| labels posted (incl. re-posts) | {load.labels_posted:,} | |",
        f"| joined: /feedback answers (+ duplicates of labels re-sent after the kill) / "
        f"labelled rows | {load.feedback['joined']:,} (+ "
        f"{load.feedback['duplicate on retry']:,}) / {checks.labelled_rows:,} | = answered |",
        f"| router counters: joined labels / outcomes segment=all (all processes; the killed "
        f"one's from its last scrape, so at most equal) | {checks.joined_counter:,.0f} / "
        f"{checks.outcomes_all:,.0f} | <= answered |",
        f"| re-posted labels / answered duplicate | {load.reposted:,} / "
        f"{load.feedback['duplicate']:,} | equal |",
        f"| labels never joined | {checks.unjoined:,} | 0 |",
        f"| **labels double-counted** | **{checks.double_counted}** | 0 |",
        f"| first replica's RSS at start (idle) / after {opts.warmup:g} s / end / max | "
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
    parser.add_argument("--replicas", type=int, default=2,
                        help="router replicas; 2+ share PostgreSQL (%(default)s)")  # fmt: skip
    parser.add_argument("--kill-at", type=float, default=0.5,
                        help="share of the run at which the last replica is SIGKILLed and "
                        "restarted; 0: never (%(default)s)")  # fmt: skip
    parser.add_argument("--serve", nargs=4, metavar=("MODELS", "PORT", "PREFIX", "NAME"),
                        help=argparse.SUPPRESS)  # fmt: skip
    opts = parser.parse_args()
    if opts.serve:
        serve(opts.serve[0], int(opts.serve[1]), opts.serve[2], opts.serve[3])
        return 0
    if opts.minutes <= 0 or opts.rate <= 0 or opts.concurrency < 1 or opts.replicas < 1:
        parser.error("--minutes, --rate, --concurrency and --replicas must be positive")
    loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    prefix = f"soak{int(time.time())}_"
    with tempfile.TemporaryDirectory(prefix="kpigate-soak-") as tmp:
        work = Path(tmp)
        db_url = (
            os.environ.get("KPIGATE_DB_URL", POSTGRES_URL)
            if opts.replicas > 1
            else f"sqlite:///{work / 'router.db'}"
        )
        print("training the baseline and candidate ...", file=sys.stderr)
        train(work / "models.pkl")
        replicas = [
            Replica(f"soak-{k}", work / "models.pkl", prefix, db_url) for k in range(opts.replicas)
        ]
        try:
            for replica in replicas:
                replica.start()
            rss_start = rss_mb(replicas[0].pid)
            print(f"{len(replicas)} replica(s) up, first RSS {rss_start:.1f} MB; "
                  f"{opts.minutes:g} min at {opts.rate:g}/s ...", file=sys.stderr)  # fmt: skip
            with contextlib.suppress(ImportError):
                import uvloop

                asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            load = asyncio.run(drive(replicas, opts))
            warm_s = min(opts.warmup, load.elapsed_s / 2)
            checks = check(replicas, db_url, prefix, load, rss_start, warm_s)
        finally:
            for replica in replicas:
                replica.stop()
            if opts.replicas > 1:
                from kpigate.serve.predlog import Tables, make_engine

                engine = make_engine(db_url)
                Tables(prefix).drop(engine)
                engine.dispose()
    argv = " ".join(sys.argv[1:])
    command = "make bench-soak" + (f"  (python bench/soak.py {argv})" if argv else "")
    text = section(load, checks, opts, command, loadavg)
    print(text)
    if opts.write:
        write_section(Path(opts.write), text)
        print(f"wrote the Load section of {opts.write}", file=sys.stderr)
    return 0 if passed(load, checks) else 1


def wait_ready(url: str, router: subprocess.Popen[bytes], timeout_s: float = 180.0) -> None:
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

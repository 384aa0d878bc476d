"""Replay generated card transactions against a router and post their labels after a delay.

Each transaction is sent to POST /predict at the given rate and concurrency; its ground-truth
label is posted to POST /feedback later, as in production: fraud labels arrive late (after a
chargeback, --fraud-delay) and legitimate ones only once the maturity window has passed
(--maturity). A progress line runs on stderr and a summary is printed at the end.

Label delays per class (--fraud-delay-dist, --legit-delay-dist):
  uniform    0.5x to 1.5x the delay (the default for fraud)
  fixed      exactly the delay (the default for legitimate labels)
  lognormal  a long right tail around the delay as its median, spread --delay-sigma (log
             scale): chargebacks mostly come in days, a few in weeks
  never      the label is never sent (legitimate only): silence means legitimate, as in
             production fraud feeds; pair it with a policy whose labels.unlabeled is negative

--delays-file FILE lets another program change both delays while the replay runs: on SIGHUP the
replayer rereads FILE ({"fraud_delay": seconds, "maturity": seconds}) and schedules the labels
of the predictions answered from then on with the new delays; labels already scheduled keep
their times (`kpigate demo` does this when it lengthens its windows mid-rollout).

examples:
  kpigate traffic --url http://127.0.0.1:8080 --count 5000 --rate 200 --concurrency 16
  kpigate traffic --url http://127.0.0.1:8080 --count 2000 --fraud-delay 2 --maturity 5
  kpigate traffic --url http://127.0.0.1:8080 --fraud-delay 20 --fraud-delay-dist lognormal \
      --legit-delay-dist never       fraud about 20 s late (long tail), legitimate never sent
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kpigate.fraud.schema import FEATURES, LABEL


def generate_transactions(
    n: int, seed: int = 0, drift: float = 0.0, fraud_share: float | None = None
) -> Iterator[dict[str, Any]]:
    """Request bodies with their label (`is_fraud`) from the shared generator (kpigate.fraud.data).

    `fraud_share` enriches the stream in fraud (legitimate rows are thinned out): labeled
    positives then arrive in seconds instead of hours, which is what a compressed demo needs.
    Both arms see the same stream, so the comparison is unaffected; rates such as precision are
    not those of production traffic.
    """
    from kpigate.fraud.data import generate_chunks, to_requests

    rng = random.Random(seed)
    produced = 0
    chunk_seed = seed
    while produced < n:
        # Chunks of a fresh seed each time: an unbounded stream without holding it in memory.
        for frame in generate_chunks(max(n - produced, 1) * 4, seed=chunk_seed, drift=drift,
                                     chunk_size=20_000):  # fmt: skip
            labels = frame[LABEL].tolist()
            keep = 1.0
            if fraud_share is not None:
                base = max(sum(labels) / max(len(labels), 1), 1e-6)
                keep = min(1.0, (base / (1 - base)) / (fraud_share / (1 - fraud_share)))
            for record, label in zip(to_requests(frame), labels, strict=True):
                if not label and keep < 1.0 and rng.random() >= keep:
                    continue
                record.pop("amount_band", None)  # the router derives segments itself
                record[LABEL] = int(label)
                yield record
                produced += 1
                if produced >= n:
                    return
        chunk_seed += 1_000_003


DELAY_KINDS = ("uniform", "fixed", "lognormal", "never")


@dataclass(frozen=True)
class LabelDelay:
    """When one class's label is sent after its prediction (see the module help)."""

    kind: str
    seconds: float
    sigma: float = 0.5

    def sample(self, rng: random.Random) -> float | None:
        """Seconds until the label is sent, or None when it is never sent."""
        if self.kind == "never":
            return None
        if self.kind == "fixed":
            return self.seconds
        if self.kind == "uniform":
            return self.seconds * rng.uniform(0.5, 1.5)
        if self.kind == "lognormal":
            return self.seconds * math.exp(self.sigma * rng.gauss(0.0, 1.0))
        raise ValueError(f"unknown delay distribution {self.kind!r}; use one of {DELAY_KINDS}")


@dataclass
class TrafficOptions:
    url: str
    count: int = 1000
    rate: float = 100.0  # requests per second; 0 = as fast as the concurrency allows
    concurrency: int = 8
    fraud_delay_s: float = 5.0
    maturity_s: float = 15.0
    labels: bool = True
    wait_for_labels: bool = True
    seed: int = 0
    drift: float = 0.0
    label_batch: int = 500
    timeout_s: float = 10.0
    progress: bool = True
    fraud_share: float | None = None  # enrich the stream in fraud (demos); None = as generated
    stop: threading.Event | None = None  # set it to end a long replay early
    fraud_delay_kind: str = "uniform"  # around fraud_delay_s; see LabelDelay
    legit_delay_kind: str = "fixed"  # around maturity_s
    delay_sigma: float = 0.5

    def delay(self, label: int) -> LabelDelay:
        if label:
            return LabelDelay(self.fraud_delay_kind, self.fraud_delay_s, self.delay_sigma)
        return LabelDelay(self.legit_delay_kind, self.maturity_s, self.delay_sigma)


@dataclass
class TrafficSummary:
    sent: int = 0
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    arms: Counter[str] = field(default_factory=Counter)
    decisions: Counter[str] = field(default_factory=Counter)
    fallbacks: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    labels_posted: int = 0
    labels_pending: int = 0
    labels_withheld: int = 0  # never sent (--legit-delay-dist never)
    feedback: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "ok": self.ok,
            "failed": dict(self.failed),
            "throughput_rps": self.ok / self.elapsed_s if self.elapsed_s else 0.0,
            "latency_ms": {f"p{int(q * 100)}": self.percentile(q) for q in (0.5, 0.95, 0.99)},
            "arms": dict(self.arms),
            "decisions": dict(self.decisions),
            "fallbacks": self.fallbacks,
            "labels_posted": self.labels_posted,
            "labels_pending": self.labels_pending,
            "labels_withheld": self.labels_withheld,
            "feedback": dict(self.feedback),
            "elapsed_s": self.elapsed_s,
        }


class _Labels:
    """Labels waiting for their delivery time, posted in batches."""

    def __init__(self, client: Any, opts: TrafficOptions, summary: TrafficSummary) -> None:
        self.client, self.opts, self.summary = client, opts, summary
        self.heap: list[tuple[float, str, int]] = []
        self.rng = random.Random(opts.seed + 1)

    def schedule(self, request_id: str, label: int) -> None:
        delay = self.opts.delay(label).sample(self.rng)
        if delay is None:
            self.summary.labels_withheld += 1
            return
        heapq.heappush(self.heap, (time.monotonic() + delay, request_id, label))

    async def post_due(self, everything: bool = False) -> None:
        now = time.monotonic()
        due: list[dict[str, Any]] = []
        while self.heap and (everything or self.heap[0][0] <= now):
            _, rid, label = heapq.heappop(self.heap)
            due.append({"request_id": rid, "label": label})
        for start in range(0, len(due), self.opts.label_batch):
            chunk = due[start : start + self.opts.label_batch]
            try:
                resp = await self.client.post("/feedback", json={"labels": chunk})
                resp.raise_for_status()
                report = resp.json()
            except Exception as exc:
                self.summary.failed[f"feedback: {type(exc).__name__}"] += 1
                continue
            self.summary.labels_posted += len(chunk)
            for key in ("joined", "unknown", "duplicate", "invalid", "late"):
                self.summary.feedback[key] += int(report.get(key, 0))


async def replay(opts: TrafficOptions) -> TrafficSummary:
    import httpx

    summary = TrafficSummary()
    transactions = generate_transactions(opts.count, opts.seed, opts.drift, opts.fraud_share)
    # An idle connection must expire on this side first: uvicorn closes one after 5 s
    # (uvicorn/config.py, timeout_keep_alive=5), httpx keeps it 5 s too (keepalive_expiry=5.0),
    # and a request sent on a connection the router is closing at that moment fails with
    # ReadError although the router is healthy.
    limits = httpx.Limits(max_connections=opts.concurrency + 2, keepalive_expiry=2.0)
    async with httpx.AsyncClient(
        base_url=opts.url.rstrip("/"), timeout=opts.timeout_s, limits=limits
    ) as client:
        labels = _Labels(client, opts, summary)
        started = time.monotonic()
        next_index = 0

        async def worker() -> None:
            nonlocal next_index
            while True:
                index = next_index
                if opts.stop is not None and opts.stop.is_set():
                    return
                try:
                    tx = next(transactions)
                except StopIteration:
                    return
                next_index += 1
                if opts.rate > 0:
                    delay = started + index / opts.rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                label = tx.pop(LABEL)
                t0 = time.perf_counter()
                summary.sent += 1
                try:
                    resp = await client.post("/predict", json=tx)
                except httpx.HTTPError as exc:
                    summary.failed[type(exc).__name__] += 1
                    continue
                if resp.status_code != 200:
                    summary.failed[f"HTTP {resp.status_code}"] += 1
                    continue
                summary.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
                answer = resp.json()
                summary.ok += 1
                summary.arms[answer["arm"]] += 1
                summary.decisions[answer["decision"]] += 1
                summary.fallbacks += bool(answer.get("fallback"))
                if opts.labels:
                    labels.schedule(answer["request_id"], label)

        async def poster(done: asyncio.Event) -> None:
            while not done.is_set():
                await labels.post_due()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.2)

        async def progress(done: asyncio.Event) -> None:
            while not done.is_set():
                _show(summary, opts, time.monotonic() - started, len(labels.heap))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.5)

        sending_done, all_done = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(poster(sending_done))]
        if opts.progress:
            tasks.append(asyncio.create_task(progress(all_done)))
        await asyncio.gather(*(worker() for _ in range(max(1, opts.concurrency))))
        summary.elapsed_s = time.monotonic() - started
        if opts.wait_for_labels:
            while labels.heap:
                await labels.post_due()
                wait = labels.heap[0][0] - time.monotonic() if labels.heap else 0.0
                await asyncio.sleep(min(0.2, max(0.0, wait)))
        sending_done.set()
        all_done.set()
        await asyncio.gather(*tasks)
        summary.labels_pending = len(labels.heap)
        if opts.progress:
            _show(summary, opts, time.monotonic() - started, 0)
            print(file=sys.stderr)
    return summary


def _show(summary: TrafficSummary, opts: TrafficOptions, elapsed: float, waiting: int) -> None:
    done = summary.sent / opts.count if opts.count else 1.0
    bar = "#" * int(done * 30)
    line = (
        f"\r[{bar:<30}] {summary.sent}/{opts.count} sent, {summary.ok} ok, "
        f"{sum(summary.failed.values())} failed, {summary.labels_posted} labels posted, "
        f"{waiting} waiting, {elapsed:.1f}s"
    )
    print(line, end="", file=sys.stderr, flush=True)


def format_summary(summary: TrafficSummary) -> str:
    d = summary.as_dict()
    lat = d["latency_ms"]
    lines = [
        f"requests: {d['sent']} sent, {d['ok']} ok, failed {d['failed'] or 0} "
        f"in {d['elapsed_s']:.1f}s ({d['throughput_rps']:.0f}/s)",
        f"latency ms: p50 {lat['p50']:.2f}  p95 {lat['p95']:.2f}  p99 {lat['p99']:.2f}",
        f"arms: {d['arms']}  decisions: {d['decisions']}  fallbacks: {d['fallbacks']}",
        f"labels: {d['labels_posted']} posted, {d['labels_pending']} not posted, "
        f"{d['labels_withheld']} never sent; "
        f"router says {d['feedback']}",
    ]
    return "\n".join(lines)


def read_delays(path: str) -> tuple[float, float]:
    """(fraud delay, maturity) from a --delays-file; ValueError when unreadable or negative."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        fraud, maturity = float(data["fraud_delay"]), float(data["maturity"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: cannot read the label delays ({exc})") from None
    if not (math.isfinite(fraud) and math.isfinite(maturity)) or fraud < 0 or maturity < 0:
        raise ValueError(f"{path}: label delays must be finite seconds >= 0")
    return fraud, maturity


def write_delays(path: str, fraud_delay_s: float, maturity_s: float) -> None:
    """The file read_delays() reads, written whole and then renamed into place, so a SIGHUP
    never finds half of it."""
    with open(f"{path}.tmp", "w", encoding="utf-8") as fh:
        json.dump({"fraud_delay": fraud_delay_s, "maturity": maturity_s}, fh)
    os.replace(f"{path}.tmp", path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrafficOptions(url="")
    add = parser.add_argument
    add("--url", required=True, help="router base URL, e.g. http://127.0.0.1:8080")
    add("--count", type=int, default=d.count, help="transactions to send (%(default)s)")
    add("--rate", type=float, default=d.rate, help="requests/s, 0 = unthrottled (%(default)s)")
    add("--concurrency", type=int, default=d.concurrency, help="in-flight requests (%(default)s)")
    add("--fraud-delay", type=float, default=d.fraud_delay_s,
        help="seconds until a fraud label arrives: the mean, or the median when lognormal "
             "(%(default)s)")  # fmt: skip
    add("--maturity", type=float, default=d.maturity_s,
        help="seconds until a legitimate label arrives (%(default)s)")  # fmt: skip
    add("--fraud-delay-dist", choices=DELAY_KINDS[:3], default=d.fraud_delay_kind,
        help="how fraud delays spread around --fraud-delay (%(default)s; see above)")  # fmt: skip
    add("--legit-delay-dist", choices=DELAY_KINDS, default=d.legit_delay_kind,
        help="how legitimate delays spread around --maturity, or never (%(default)s)")  # fmt: skip
    add("--delays-file", default=None,
        help="on SIGHUP, reread both delays from this JSON file (see above)")  # fmt: skip
    add("--delay-sigma", type=float, default=d.delay_sigma,
        help="spread of lognormal delays on the log scale (%(default)s)")  # fmt: skip
    add("--no-labels", action="store_true", help="do not post labels")
    add("--no-wait", action="store_true", help="exit without waiting for pending labels")
    add("--seed", type=int, default=d.seed, help="generator seed (%(default)s)")
    add("--drift", type=float, default=d.drift, help="0..1 drift knob (%(default)s)")
    add("--fraud-share", type=float, default=None,
        help="enrich the stream in fraud to this share (default: as generated)")  # fmt: skip
    add("--quiet", action="store_true", help="no progress line")
    add("--json", dest="json_path", default=None, help="also write the summary as JSON here")


def run(args: argparse.Namespace) -> int:
    opts = TrafficOptions(
        url=args.url,
        count=args.count,
        rate=args.rate,
        concurrency=args.concurrency,
        fraud_delay_s=args.fraud_delay,
        maturity_s=args.maturity,
        labels=not args.no_labels,
        wait_for_labels=not args.no_wait,
        seed=args.seed,
        drift=args.drift,
        progress=not args.quiet,
        fraud_share=args.fraud_share,
        fraud_delay_kind=args.fraud_delay_dist,
        legit_delay_kind=args.legit_delay_dist,
        delay_sigma=args.delay_sigma,
    )
    if opts.fraud_delay_s < 0 or opts.maturity_s < 0 or not 0 <= opts.delay_sigma <= 5:
        print("--fraud-delay and --maturity must be >= 0, --delay-sigma in [0, 5]", file=sys.stderr)
        return 2
    if opts.count < 0 or opts.rate < 0 or opts.concurrency < 1:
        print("--count and --rate must be >= 0 and --concurrency >= 1", file=sys.stderr)
        return 2
    if opts.fraud_share is not None and not 0 < opts.fraud_share < 1:
        print("--fraud-share must be in (0, 1)", file=sys.stderr)
        return 2
    # SIGTERM (an orchestrator ending the replay) stops sending, posts the labels already due
    # and still prints the summary.
    opts.stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: opts.stop.set() if opts.stop else None)
    if args.delays_file:
        path = args.delays_file

        def reread(*_: object) -> None:
            try:
                opts.fraud_delay_s, opts.maturity_s = read_delays(path)
            except ValueError as exc:  # keep the delays it had: the replay goes on
                print(f"kpigate traffic: {exc}; delays unchanged", file=sys.stderr)

        signal.signal(signal.SIGHUP, reread)
    summary = asyncio.run(replay(opts))
    print(format_summary(summary))
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as fh:
            json.dump(summary.as_dict(), fh, indent=2)
    if summary.ok == 0 and summary.sent:
        print(f"no request succeeded; is the router at {opts.url} up?", file=sys.stderr)
        return 1
    return 1 if summary.failed else 0


assert set(FEATURES) <= set(next(generate_transactions(1))), "generator out of sync with schema"

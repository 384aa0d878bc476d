"""Replay generated card transactions against a router and post their labels after a delay.

Each transaction is sent to POST /predict at the given rate and concurrency; its ground-truth
label is posted to POST /feedback later, as in production: fraud labels arrive late (after a
chargeback, --fraud-delay) and legitimate ones only once the maturity window has passed
(--maturity). A progress line runs on stderr and a summary is printed at the end.

examples:
  kpigate traffic --url http://127.0.0.1:8080 --count 5000 --rate 200 --concurrency 16
  kpigate traffic --url http://127.0.0.1:8080 --count 2000 --fraud-delay 2 --maturity 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kpigate.fraud.schema import (
    ENTITY_KEY,
    FEATURES,
    LABEL,
    MERCHANT_CATEGORIES,
    PAYMENT_METHODS,
    REGIONS,
)


def generate_transactions(n: int, seed: int = 0, drift: float = 0.0) -> Iterator[dict[str, Any]]:
    """Schema-conformant transactions with a label (about 1.5% fraud).

    A stand-in until the shared generator (kpigate.fraud.data) lands; swap it in here. Fraud
    leans on device risk, velocity, user deviation, night hours and some merchant categories, so
    a model can learn it; `drift` raises the digital-wallet and marketplace shares.
    """
    rng = random.Random(seed)
    cards = max(50, n // 8)
    risky = {"electronics": 0.8, "gaming": 0.9, "crypto": 1.4, "marketplace": 0.6 + drift}
    pay_w = (0.7 - 0.3 * drift, 0.2 + 0.3 * drift, 0.1)
    cat_w = [1.0] * (len(MERCHANT_CATEGORIES) - 1) + [0.3 + 2.0 * drift]
    for _ in range(n):
        card = rng.randrange(cards)
        amount = round(math.exp(rng.gauss(3.6, 1.1)), 2)
        category = rng.choices(MERCHANT_CATEGORIES, cat_w)[0]
        method = rng.choices(PAYMENT_METHODS, pay_w)[0]
        hour = rng.randrange(24)
        device_risk = rng.betavariate(1.2, 8.0)
        velocity = rng.expovariate(1.0)
        avg_spend = round(math.exp(rng.gauss(3.6, 0.6)), 2)
        deviation = abs(math.log(amount + 1) - math.log(avg_spend + 1))
        logit = (
            -7.9
            + 4.0 * device_risk
            + 0.7 * velocity
            + 0.9 * deviation
            + (0.8 if hour < 5 else 0.0)
            + risky.get(category, 0.0)
            + (0.5 + drift if method == "digital_wallet" else 0.0)
        )
        fraud = rng.random() < 1.0 / (1.0 + math.exp(-logit))
        yield {
            ENTITY_KEY: f"c{card}",
            "amount": amount,
            "merchant_category": category,
            "region": rng.choices(REGIONS, (0.4, 0.3, 0.15, 0.15))[0],
            "device_risk": round(device_risk, 4),
            "hour": hour,
            "payment_method": method,
            "velocity": round(velocity, 3),
            "avg_spend_merchant": avg_spend,
            "user_deviation": round(deviation, 4),
            LABEL: int(fraud),
        }


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
        delay = self.opts.maturity_s
        if label:
            delay = self.opts.fraud_delay_s * self.rng.uniform(0.5, 1.5)
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
    transactions = generate_transactions(opts.count, opts.seed, opts.drift)
    limits = httpx.Limits(max_connections=opts.concurrency + 2)
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
        f"labels: {d['labels_posted']} posted, {d['labels_pending']} not posted; "
        f"router says {d['feedback']}",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrafficOptions(url="")
    add = parser.add_argument
    add("--url", required=True, help="router base URL, e.g. http://127.0.0.1:8080")
    add("--count", type=int, default=d.count, help="transactions to send (%(default)s)")
    add("--rate", type=float, default=d.rate, help="requests/s, 0 = unthrottled (%(default)s)")
    add("--concurrency", type=int, default=d.concurrency, help="in-flight requests (%(default)s)")
    add("--fraud-delay", type=float, default=d.fraud_delay_s,
        help="mean seconds until a fraud label arrives (%(default)s)")  # fmt: skip
    add("--maturity", type=float, default=d.maturity_s,
        help="seconds until a legitimate label arrives (%(default)s)")  # fmt: skip
    add("--no-labels", action="store_true", help="do not post labels")
    add("--no-wait", action="store_true", help="exit without waiting for pending labels")
    add("--seed", type=int, default=d.seed, help="generator seed (%(default)s)")
    add("--drift", type=float, default=d.drift, help="0..1 drift knob (%(default)s)")
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
    )
    if opts.count < 0 or opts.rate < 0 or opts.concurrency < 1:
        print("--count and --rate must be >= 0 and --concurrency >= 1", file=sys.stderr)
        return 2
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

"""Fan messages out to channels by severity, with dedup and a per-channel rate limit.

The paper's alert fatigue: a flapping KPI can post the same hold every window. A message
already sent to a channel (same rollout, kind and text) within `dedup_s` is not sent again,
and each channel has a token bucket; what the bucket drops is counted and summarised in the
channel's next message (or by `flush()`), so nothing vanishes silently. A channel that fails
is logged and skipped: a notification never breaks a rollout.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from kpigate.notify.base import KIND_FIELD, ROLLOUT_FIELD, Notifier, Severity
from kpigate.notify.redact import guarded_logger, redact

log = guarded_logger(__name__)

ALL_SEVERITIES = frozenset(Severity)
SUPPRESSED_FIELD = "suppressed"


@dataclass(frozen=True)
class RateLimit:
    """At most `per_minute` messages a minute on average, bursts up to `burst`.

    `exempt` severities always go out (a rollback must reach the on-call person) but
    still spend a token when one is left.
    """

    per_minute: float = 6.0
    burst: int = 6
    exempt: frozenset[Severity] = frozenset({Severity.CRITICAL})

    def __post_init__(self) -> None:
        if self.per_minute <= 0 or self.burst < 1:
            raise ValueError("a rate limit needs per_minute > 0 and burst >= 1")


@dataclass
class Channel:
    """A notifier with its routing rules; `name` appears in logs and stats."""

    name: str
    notifier: Notifier
    severities: Collection[Severity] = ALL_SEVERITIES
    rate_limit: RateLimit | None = None
    dedup: bool = True  # the audit trail wants every message: it sets False


@dataclass
class ChannelStats:
    sent: int = 0
    deduplicated: int = 0
    rate_limited: int = 0
    failed: int = 0


@dataclass
class _Bucket:
    tokens: float
    updated: float
    dropped: Counter[Severity] = field(default_factory=Counter)


class Dispatcher:
    """Itself a Notifier, so a runner holds one object whatever is configured."""

    def __init__(
        self,
        channels: Sequence[Channel],
        *,
        dedup_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        names = [c.name for c in channels]
        if len(set(names)) != len(names):
            raise ValueError(f"channel names must be unique: {names}")
        self.channels = list(channels)
        self.dedup_s = dedup_s
        self._clock = clock
        self._lock = threading.Lock()
        self._sent_at: dict[tuple[str, str, str, str], float] = {}
        self._buckets: dict[str, _Bucket] = {}
        self.stats: dict[str, ChannelStats] = {c.name: ChannelStats() for c in self.channels}

    def post(self, severity: Severity, message: str, fields: Mapping[str, str]) -> None:
        severity = Severity(severity)
        fields = {str(k): str(v) for k, v in fields.items()}
        for channel in self.channels:
            if severity not in channel.severities:
                continue
            with self._lock:
                outgoing = self._admit(channel, severity, message, fields)
            if outgoing is not None:
                self._deliver(channel, severity, message, outgoing)

    def _admit(
        self, channel: Channel, severity: Severity, message: str, fields: dict[str, str]
    ) -> dict[str, str] | None:
        """The fields to send (with a summary of drops), or None when this one is held back."""
        now = self._clock()
        stats = self.stats[channel.name]
        if channel.dedup:
            key = (channel.name, fields.get(ROLLOUT_FIELD, ""), fields.get(KIND_FIELD, ""), message)
            last = self._sent_at.get(key)
            if last is not None and now - last < self.dedup_s:
                stats.deduplicated += 1
                return None
            self._sent_at[key] = now
            self._forget_before(now - self.dedup_s)
        limit = channel.rate_limit
        if limit is None:
            return fields
        bucket = self._buckets.get(channel.name)
        if bucket is None:
            bucket = self._buckets[channel.name] = _Bucket(float(limit.burst), now)
        bucket.tokens = min(
            float(limit.burst), bucket.tokens + (now - bucket.updated) * limit.per_minute / 60.0
        )
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
        elif severity not in limit.exempt:
            bucket.dropped[severity] += 1
            stats.rate_limited += 1
            return None
        if bucket.dropped:
            fields = {**fields, SUPPRESSED_FIELD: _summary(bucket.dropped)}
            bucket.dropped = Counter()
        return fields

    def _forget_before(self, cutoff: float) -> None:
        if len(self._sent_at) > 1024:  # a long-lived relay must not grow without bound
            self._sent_at = {k: t for k, t in self._sent_at.items() if t >= cutoff}

    def _deliver(
        self, channel: Channel, severity: Severity, message: str, fields: Mapping[str, str]
    ) -> None:
        try:
            channel.notifier.post(severity, message, fields)
        except Exception as exc:
            self.stats[channel.name].failed += 1
            log.warning(
                "notification to %s failed (the rollout goes on): %s",
                channel.name,
                redact(f"{type(exc).__name__}: {exc}"),
            )
            return
        self.stats[channel.name].sent += 1

    def flush(self) -> None:
        """Send each channel's summary of rate-limited messages now (call at rollout end)."""
        for channel in self.channels:
            with self._lock:
                bucket = self._buckets.get(channel.name)
                if bucket is None or not bucket.dropped:
                    continue
                dropped, bucket.dropped = bucket.dropped, Counter()
            worst = min(dropped, key=_rank)
            message = f"{sum(dropped.values())} notification(s) held back by the rate limit"
            fields = {KIND_FIELD: "summary", SUPPRESSED_FIELD: _summary(dropped)}
            self._deliver(channel, worst, message, fields)


def _rank(severity: Severity) -> int:
    return list(Severity).index(severity)


def _summary(dropped: Counter[Severity]) -> str:
    parts = ", ".join(
        f"{n} {s.value}" for s, n in sorted(dropped.items(), key=lambda i: _rank(i[0]))
    )
    return f"{sum(dropped.values())} earlier message(s) not sent (rate limit): {parts}"

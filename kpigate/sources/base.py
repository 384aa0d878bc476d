"""The metrics-source interface: mark the start of a window, then collect its counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kpigate.errors import Kind, KpigateError
from kpigate.sources.counts import WindowCounts


class SourceError(KpigateError):
    """The source could not answer (down, unreachable, bad response): the window is missing.
    soak-and-collect records the window as stale (the gate holds) instead of failing."""

    default_kind = Kind.UNAVAILABLE


@dataclass(frozen=True, slots=True)
class Collected:
    counts: WindowCounts
    stale: bool = False
    note: str = ""


class MetricsSource(Protocol):
    name: str

    def mark(self) -> None:
        """Remember where the current window starts."""

    def collect(self) -> Collected:
        """Counts since the last mark(); raises SourceError when nothing can be read."""

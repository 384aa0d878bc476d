"""The metrics-source interface: mark the start of a window, then collect its counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kpigate.errors import Kind, KpigateError
from kpigate.sources.counts import HORIZON_METRIC, WindowCounts


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


def check_horizon(router_horizon: float | None, policy_horizon: float, where: str) -> None:
    """Matured counters are one cohort's counts only if the router matures predictions at the
    policy's horizon; otherwise the cohort is missing (the gate holds) and this says why."""
    if router_horizon is None:
        raise SourceError(
            f"{where} exposes no {HORIZON_METRIC}: start the router with --label-horizon "
            f"{policy_horizon:g}s so it counts predictions at maturity"
        )
    if abs(router_horizon - policy_horizon) > 1e-6 * max(1.0, policy_horizon):
        raise SourceError(
            f"the router's label horizon ({router_horizon:g}s, {where}) differs from the "
            f"policy's labels.horizon ({policy_horizon:g}s): its matured counts are not this "
            f"policy's cohorts; restart the router with --label-horizon {policy_horizon:g}s "
            "or change the policy"
        )

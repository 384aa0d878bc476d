"""How far one KPI is from a decision, solved analytically from sequential.py's boundaries.

The forecast (forecast.py) uses it per simulated stage; classify.py uses `certify_eta` in the
reason of a KPI that holds: how many more samples it needs, and about how long at the current
rate. Pure arithmetic on plain numbers, so the classifier can import it without the simulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kpigate.engine import sequential as seq


@dataclass(frozen=True, slots=True)
class Eta:
    """How far a KPI is from certification if its current estimate held."""

    samples: float  # more labeled samples (candidate arm); inf: never; nan: no data to say
    seconds: float  # at the current rate; inf when never or the rate is unknown

    def describe(self, kind: str = "labeled samples") -> str:
        """The text of a HOLD reason, counting `kind` (e.g. "labeled candidate samples")."""
        if math.isnan(self.samples):
            return f"no {kind} yet to say how many more it needs"
        if not math.isfinite(self.samples):
            return "cannot be certified while the estimate stays where it is"
        if self.samples <= 0:
            return "certifiable now"
        when = (
            f" (~{format_duration(self.seconds)} at the current rate)"
            if math.isfinite(self.seconds)
            else ""
        )
        return f"needs ~{math.ceil(self.samples):,} more {kind}{when}"


def info_to_certify(estimate: float, margin: float, theta: float, log_threshold: float) -> float:
    """Information at which a constant `estimate` (improvement units) is certified.

    lower_bound = estimate - L / (theta I) - theta / 2 > -margin  <=>
    I > L / (theta (estimate + margin - theta / 2)); never when that denominator is <= 0.
    """
    room = estimate + margin - 0.5 * theta
    return log_threshold / (theta * room) if room > 0 else math.inf


def info_to_catch(drop: float, delta_r: float, rho: float, log_threshold: float) -> float:
    """Information at which a constant harm `drop` (> delta_r) meets the harm boundary."""
    slope = drop - delta_r
    if slope <= 0:
        return math.inf
    lo, hi = 0.0, 1.0
    while slope * hi <= seq.harm_boundary(hi, rho, log_threshold):
        lo, hi = hi, hi * 2.0
        if hi > 1e300:
            return math.inf
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (
            (mid, hi) if slope * mid <= seq.harm_boundary(mid, rho, log_threshold) else (lo, mid)
        )
    return hi


def certify_eta(
    info: float,
    weighted: float,
    margin: float,
    theta: float,
    log_threshold: float,
    info_per_sample: float,
    samples_per_second: float,
) -> Eta:
    """For a HOLD reason: more samples (and time) until certified if the estimate held.

    Plain numbers, as classify.py has them: the KPI's running `info` and `weighted`, its margin
    and theta, the log non-inferiority threshold, the information one labeled candidate sample
    adds (state.info / candidate samples) and the current labeled samples per second.
    """
    if not 0 < info_per_sample < math.inf:
        return Eta(math.nan, math.nan)
    # No evidence yet: assume the candidate is as good as the baseline.
    estimate = weighted / info if info > 0 else 0.0
    needed = info_to_certify(estimate, margin, theta, log_threshold)
    samples = max(0.0, needed - info) / info_per_sample
    if samples <= 0:
        return Eta(0.0, 0.0)
    if not math.isfinite(samples):
        return Eta(math.inf, math.inf)
    seconds = samples / samples_per_second if samples_per_second > 0 else math.inf
    return Eta(samples, seconds)


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "never"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"

"""What a window can show about a p95 regression, whatever the buckets: the exact-data bound.

bench/robust.py asks the shipped latency hold (a window-scope, one-sided test of the p95 at the
hold family's level, failing only beyond the 10 ms margin) to catch a +25 ms p95 regression
within 3 looks of the 5% stage. How often *any* such test can, is set by the requests a window
holds, not by the engine: with exact, unbucketed latencies the sample p95 of n requests has
standard deviation sqrt(p (1 - p) / n) / f(q) (f the density at the p95; lognormal latency
here), so the difference of the two arms' p95 has

    sd = sqrt(p (1 - p)) / f(q) * sqrt(1 / n_c + 1 / n_b)

and a test at level z that fails when the difference exceeds the margin fires in one window
with probability Phi((effect - margin) / sd - z), in 3 independent windows with
1 - (1 - that)^3. This module computes that bound and the requests per window at which it
reaches a given power; robust.py prints both beside the engine's measured rates on Prometheus'
default buckets, and judges the 3-look target at the traffic where exact data could meet it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import norm

P = 0.95  # the quantile
LOOKS = 3


@dataclass(frozen=True, slots=True)
class Bound:
    p95_ms: float
    requests: int  # per window, both arms
    per_look: float  # chance one window's test fires
    within: float  # chance it fires within LOOKS windows


def p95_sd(p95_ms: float, sigma: float, n: float) -> float:
    """Standard deviation of the sample p95 of n lognormal latencies (asymptotic)."""
    z = norm.ppf(P)
    density = norm.pdf(z) / (p95_ms * sigma)  # lognormal density at its own p95
    return math.sqrt(P * (1.0 - P) / n) / density


def bound(
    p95_ms: float,
    requests: int,
    weight: float,
    effect_ms: float,
    margin_ms: float,
    z: float,
    sigma: float = 0.5,
) -> Bound:
    """The exact-data test's chance to fire, per look and within LOOKS looks, at `weight`%.

    The candidate's p95 is `effect_ms` above the baseline's; its density at the p95 is taken
    at the baseline's (the shift is small beside the p95), which slightly favours the test.
    """
    n_c = requests * weight / 100.0
    n_b = requests - n_c
    sd = math.hypot(p95_sd(p95_ms, sigma, n_c), p95_sd(p95_ms, sigma, n_b))
    per_look = float(norm.cdf((effect_ms - margin_ms) / sd - z))
    return Bound(p95_ms, requests, per_look, 1.0 - (1.0 - per_look) ** LOOKS)


def requests_for(
    p95_ms: float,
    power: float,
    weight: float,
    effect_ms: float,
    margin_ms: float,
    z: float,
    sigma: float = 0.5,
) -> int:
    """The fewest requests per window (to the next thousand) at which the bound reaches
    `power` within LOOKS looks."""
    per_look = 1.0 - (1.0 - power) ** (1.0 / LOOKS)
    needed_sd = (effect_ms - margin_ms) / (z + float(norm.ppf(per_look)))
    # sd scales as 1 / sqrt(requests): solve from the sd at one request per window.
    unit = math.hypot(
        p95_sd(p95_ms, sigma, weight / 100.0), p95_sd(p95_ms, sigma, 1.0 - weight / 100.0)
    )
    return int(math.ceil((unit / needed_sd) ** 2 / 1000.0) * 1000)

"""Control limits (Shewhart and EWMA) and the paper's mu +/- k sigma rule.

The limits are shown with every decision so an operator sees the familiar control chart, and
`method: sigma` judges by them, as the paper does. The rule compares one window's candidate
value with limits taken from the baseline's history and ignores how many samples that
window holds, which is why it rolls back identical candidates at low traffic (see docs/).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import fmean, stdev


@dataclass(frozen=True, slots=True)
class ControlLimits:
    center: float
    lcl: float
    ucl: float
    value: float
    ewma: float
    ewma_lcl: float
    ewma_ucl: float

    def shewhart_outside(self) -> bool:
        return not self.lcl <= self.value <= self.ucl

    def ewma_outside(self) -> bool:
        return not self.ewma_lcl <= self.ewma <= self.ewma_ucl


def center_and_spread(history: tuple[float, ...]) -> tuple[float, float]:
    """mu and sigma from the baseline's per-window values (sample standard deviation)."""
    if len(history) < 2:
        raise ValueError("need at least two baseline windows")
    return fmean(history), stdev(history)


def ewma_update(previous: float | None, value: float, lam: float) -> float:
    # The EWMA starts at the first value rather than at mu: mu may not be known yet.
    return value if previous is None else lam * value + (1.0 - lam) * previous


def control_limits(
    center: float, sigma: float, k: float, value: float, ewma: float, lam: float, looks: int
) -> ControlLimits:
    """Shewhart limits mu +/- k sigma; EWMA limits with the exact time-varying width."""
    width = k * sigma * math.sqrt(lam / (2.0 - lam) * (1.0 - (1.0 - lam) ** (2 * looks)))
    return ControlLimits(
        center=center,
        lcl=center - k * sigma,
        ucl=center + k * sigma,
        value=value,
        ewma=ewma,
        ewma_lcl=center - width,
        ewma_ucl=center + width,
    )

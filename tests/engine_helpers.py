"""Small builders for engine tests: policies and windows of rate KPIs."""

from __future__ import annotations

from typing import Any

import numpy as np

from kpigate.engine import Observation, Rate, Window
from kpigate.policy import Kpi, Policy, Stage

STAGES = (5.0, 25.0, 50.0, 100.0)


def policy(*kpis: Kpi, **fields: Any) -> Policy:
    fields.setdefault("stages", tuple(Stage(traffic=t, soak=60, interval=10) for t in STAGES))
    return Policy(kpis=kpis or (Kpi(name="recall"),), **fields)


def rate_window(
    index: int,
    stage: float,
    candidate: tuple[float, float] | None,
    baseline: tuple[float, float] | None,
    name: str = "recall",
) -> Window:
    obs = Observation(
        baseline=None if baseline is None else Rate(*baseline),
        candidate=None if candidate is None else Rate(*candidate),
    )
    return Window(index, stage, {name: obs})


def simulate_rates(
    rng: np.random.Generator,
    looks: int,
    positives: int,
    p_base: float,
    effect: float,
    drift_sd: float = 0.0,
    holdback: float = 5.0,
) -> list[Window]:
    """The benchmark's schedule: 6 looks per stage, candidate share = stage (holdback at 100)."""
    windows = []
    for t in range(looks):
        stage = STAGES[min(t // 6, 3)]
        weight = 100.0 - holdback if stage == 100 else stage
        n_c = round(positives * 20 * weight / 100)
        n_b = positives * 20 - n_c
        drift = rng.normal(0.0, drift_sd) if drift_sd else 0.0
        x_c = rng.binomial(n_c, min(max(p_base + effect + drift, 0.0), 1.0))
        x_b = rng.binomial(n_b, min(max(p_base + drift, 0.0), 1.0))
        windows.append(rate_window(t + 1, stage, (x_c, n_c), (x_b, n_b)))
    return windows

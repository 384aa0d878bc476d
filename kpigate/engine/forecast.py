"""The forecast: how long each stage takes to certify an identical candidate or to catch a drop.

Pure, like the rest of the engine. `forecast(policy, traffic)` simulates rollouts on the
sufficient statistics (forecast_sim.py) and reads, per stage and KPI, the median and 90th
percentile of the time to certify an identical candidate, the share that times out after
max_holds, and for a given drop the time until it is rolled back; it warns, naming the stage
and the KPI, when a stage cannot decide within its soak plus max_holds x interval.
`certify_eta` (forecast_eta.py) is the same arithmetic for one KPI during a rollout: how many
more labeled samples a HOLD needs if the current estimate held; classify.py puts it in reasons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from kpigate.engine.forecast_eta import (
    Eta,
    certify_eta,
    format_duration,
    info_to_catch,
    info_to_certify,
)
from kpigate.engine.forecast_sim import (
    PROMOTED,
    ROLLED_BACK,
    TIMED_OUT,
    ForecastError,
    KpiModel,
    Paths,
    StagePlan,
    Traffic,
    calibration_info,
    kpi_models,
    simulate,
    stage_plans,
)
from kpigate.policy import Policy

MAX_PATHS = 100_000  # a few hundred MB of simulation state at most

__all__ = [
    "DropForecast",
    "Eta",
    "Forecast",
    "ForecastError",
    "KpiStage",
    "Spread",
    "StageForecast",
    "Traffic",
    "certify_eta",
    "forecast",
    "format_duration",
    "info_to_catch",
    "info_to_certify",
    "look_quantile",
    "spread_quantile",
]


def look_quantile(times: np.ndarray, q: float) -> float:
    """The first look time by which a share q of the paths had the event (inf: never)."""
    if times.size == 0:
        return math.inf
    rank = math.ceil(q * times.size) - 1
    return float(np.sort(times)[max(rank, 0)])


def spread_quantile(times: np.ndarray, widths: np.ndarray, q: float) -> float:
    """The q-quantile of look times, each spread uniformly over time +- width / 2.

    A look time stands for "somewhere in the interval around this look": spreading it keeps
    the median from jumping a whole interval when P(T <= t) is near one half at a look, and a
    time that every path shares stays exactly that time.

    Times are inf where the event never happened; the quantile is inf when fewer than q of
    them happened. The same reading is used for the forecast and for the benchmark.
    """
    finite = np.isfinite(times)
    if times.size == 0 or finite.mean() < q:
        return math.inf
    t, w = times[finite], np.maximum(widths[finite], 1e-12)
    target = q * times.size
    left = t - 0.5 * w
    lo, hi = float(left.min()), float((t + 0.5 * w).max())
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        mass = float(np.clip((mid - left) / w, 0.0, 1.0).sum())
        lo, hi = (mid, hi) if mass < target else (lo, mid)
    return hi


def _seconds(value: float) -> float | None:
    return round(value, 1) if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class Spread:
    """Median and 90th percentile of a time in seconds (inf: not reached by that share)."""

    median: float
    p90: float

    @classmethod
    def of(cls, times: np.ndarray, widths: np.ndarray) -> Spread:
        # The median is read smoothly (it is what the benchmark checks, and a look-discrete
        # median jumps a whole interval near a tie); the 90th percentile is the look by which
        # 90% have it, the time the gate will actually take.
        return cls(spread_quantile(times, widths, 0.5), look_quantile(times, 0.9))

    def as_dict(self) -> dict[str, float | None]:
        return {"median_s": _seconds(self.median), "p90_s": _seconds(self.p90)}


@dataclass(frozen=True, slots=True)
class KpiStage:
    key: str
    info_per_window: float
    certify: Spread  # from the stage's start, among identical rollouts that reach it
    certified: float  # share of those certified at this stage before it ended


@dataclass(frozen=True, slots=True)
class StageForecast:
    traffic: float
    interval: float
    deadline: float  # soak + max_holds x interval: the last look that can promote, seconds
    reached: float  # share of identical candidates reaching the stage
    promote: Spread  # from the stage's start
    timed_out: float  # share of those reaching it that time out here (max_holds)
    kpis: tuple[KpiStage, ...]
    caught: float  # share of rollouts with the drop rolled back at this stage

    def as_dict(self) -> dict[str, Any]:
        return {
            "traffic": self.traffic,
            "interval_s": self.interval,
            "deadline_s": self.deadline,
            "reached": round(self.reached, 4),
            "promote": self.promote.as_dict(),
            "timed_out": round(self.timed_out, 4),
            "drop_caught_here": round(self.caught, 4),
            "kpis": {
                k.key: {
                    "info_per_window": float(f"{k.info_per_window:.6g}"),
                    "certify": k.certify.as_dict(),
                    "certified": round(k.certified, 4),
                }
                for k in self.kpis
            },
        }


@dataclass(frozen=True, slots=True)
class DropForecast:
    key: str
    drop: float  # how much worse, in the KPI's units
    rollback: Spread  # from the rollout's start
    rolled_back: float  # share rolled back (by harm, not by a timeout)
    info_to_catch: float  # where the mean path meets the harm boundary (sequential.py)


@dataclass(frozen=True, slots=True)
class Forecast:
    policy: str
    rps: float
    paths: int
    seed: int
    stages: tuple[StageForecast, ...]
    promote_all: Spread  # identical candidate: from the start to the last PROMOTE
    promoted: float  # share of identical candidates promoted at 100%
    false_rollback: float  # share of identical candidates rolled back
    drop: DropForecast | None
    warnings: tuple[str, ...]
    notes: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        drop = self.drop
        return {
            "policy": self.policy,
            "rps": self.rps,
            "paths": self.paths,
            "seed": self.seed,
            "stages": [s.as_dict() for s in self.stages],
            "identical": {
                "promote_all": self.promote_all.as_dict(),
                "promoted": round(self.promoted, 4),
                "rolled_back": round(self.false_rollback, 4),
            },
            "drop": None
            if drop is None
            else {
                "kpi": drop.key,
                "drop": drop.drop,
                "rollback": drop.rollback.as_dict(),
                "rolled_back": round(drop.rolled_back, 4),
                "info_to_catch": float(f"{drop.info_to_catch:.6g}")
                if math.isfinite(drop.info_to_catch)
                else None,
            },
            "warnings": list(self.warnings),
            "notes": list(self.notes),
        }


def _drop_index(models: list[KpiModel], name: str) -> int:
    keys = [m.key for m in models]
    if name in keys:
        return keys.index(name)
    segmented = [i for i, m in enumerate(models) if m.hyp.kpi.name == name]
    if len(segmented) == 1:
        return segmented[0]
    raise ForecastError(
        f"--drop names {name!r}, which is not a forecast KPI of this policy "
        f"(forecast KPIs: {', '.join(keys) or 'none'})"
    )


def _stage_forecasts(
    policy: Policy, models: list[KpiModel], plans: list[StagePlan], same: Paths, worse: Paths
) -> list[StageForecast]:
    out = []
    for s, plan in enumerate(plans):
        reached = same.reached[s]
        width = np.full(int(reached.sum()), plan.interval)
        deadline = plan.deadline_looks * plan.interval
        kpis = tuple(
            KpiStage(
                key=m.key,
                info_per_window=plan.info[k],
                certify=Spread.of(same.first_pass[s, k][reached], width),
                certified=float(np.isfinite(same.first_pass[s, k][reached]).mean())
                if reached.any()
                else 0.0,
            )
            for k, m in enumerate(models)
        )
        out_here = (same.ended == TIMED_OUT) & (same.end_stage == s)
        out.append(
            StageForecast(
                traffic=plan.traffic,
                interval=plan.interval,
                deadline=deadline,
                reached=float(reached.mean()),
                promote=Spread.of(same.promoted[s][reached], width),
                timed_out=float(out_here[reached].mean()) if reached.any() else 0.0,
                kpis=kpis,
                caught=float(((worse.ended == ROLLED_BACK) & (worse.end_stage == s)).mean()),
            )
        )
    return out


def _stage_warnings(
    policy: Policy, models: list[KpiModel], stages: list[StageForecast], same: Paths
) -> list[str]:
    warnings = []
    for s, stage in enumerate(stages):
        if stage.reached == 0 or stage.timed_out < 0.1:
            continue
        # What the timed-out rollouts were waiting for at their last look.
        out_here = (same.ended == TIMED_OUT) & (same.end_stage == s)
        waiting = same.blocking[:, out_here].mean(axis=1)
        slowest = int(np.argmax(waiting))
        no_harm = policy.stages[s].promote_when == "no_harm"
        what = "past burn-in with data" if no_harm else "certified non-inferior"
        head = (
            f"an identical candidate cannot decide within soak + max_holds x interval "
            f"({format_duration(stage.deadline)}): {stage.timed_out:.0%} time out"
            if stage.timed_out >= 0.5
            else f"{stage.timed_out:.0%} of identical candidates time out (no decision within "
            f"soak + max_holds x interval, {format_duration(stage.deadline)})"
        )
        warnings.append(
            f"stage {stage.traffic:g}%: {head}, most often waiting for "
            f"{models[slowest].key} to be {what} ({waiting[slowest]:.0%} of them); raise the "
            "traffic share, the soak or max_holds, or widen the margin"
        )
    return warnings


def forecast(
    policy: Policy,
    traffic: Traffic,
    drop: tuple[str, float] | None = None,
    paths: int = 4000,
    seed: int = 0,
) -> Forecast:
    """Per stage and KPI, how long an identical candidate takes and how fast a drop is caught."""
    if not 100 <= paths <= MAX_PATHS:
        raise ForecastError(
            f"simulated paths must be between 100 (for a 90th percentile) and {MAX_PATHS:,}"
        )
    models, notes = kpi_models(policy, traffic)
    if not models:
        raise ForecastError("no KPI of this policy can be forecast: " + "; ".join(notes))
    notes += [f"{m.key}: assumed {', '.join(m.assumed)}" for m in models if m.assumed]
    plans = stage_plans(policy, models, traffic)
    improvements = [0.0] * len(models)
    drop_forecast = None
    worse_improvements = list(improvements)
    if drop is not None:
        name, size = drop
        if not (size > 0 and math.isfinite(size)):
            raise ForecastError(f"--drop {name}: the drop must be a positive number (KPI units)")
        index = _drop_index(models, name)
        worse_improvements[index] = -size
    calibration = calibration_info(policy, models, traffic)
    same = simulate(policy, models, plans, improvements, paths, seed, calibration)
    worse = simulate(policy, models, plans, worse_improvements, paths, seed + 1, calibration)
    intervals = np.array([p.interval for p in plans])
    stages = _stage_forecasts(policy, models, plans, same, worse)
    warnings = _stage_warnings(policy, models, stages, same)
    if drop is not None:
        m = models[index]
        caught = worse.ended == ROLLED_BACK
        drop_forecast = DropForecast(
            key=m.key,
            drop=size,
            rollback=Spread.of(
                np.where(caught, worse.end_time, np.inf), intervals[worse.end_stage]
            ),
            rolled_back=float(caught.mean()),
            info_to_catch=info_to_catch(size, m.delta_r, m.rho, m.hyp.log_harm_threshold),
        )
        if drop_forecast.rolled_back < 0.5:
            warnings.append(
                f"{m.key}: a drop of {size:g} is rolled back in only "
                f"{drop_forecast.rolled_back:.0%} of rollouts before they end"
            )
    done = same.ended == PROMOTED
    return Forecast(
        policy=policy.name,
        rps=traffic.rps,
        paths=paths,
        seed=seed,
        stages=tuple(stages),
        promote_all=Spread.of(np.where(done, same.end_time, np.inf), intervals[same.end_stage]),
        promoted=float(done.mean()),
        false_rollback=float((same.ended == ROLLED_BACK).mean()),
        drop=drop_forecast,
        warnings=tuple(warnings),
        notes=tuple(notes),
    )

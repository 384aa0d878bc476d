"""Benchmark of the forecast (`kpigate plan`) against full rollouts through the real `judge`.

For each setting (traffic, base rates, baseline values, label horizon, drop) the forecast is
computed as `kpigate plan` prints it, then >= 2,000 rollouts are simulated window by window:
Poisson trials at the setting's traffic and stage share, binomial successes, each window judged
by the real engine, the stage advancing only on PROMOTE, a rollout ending on ROLLBACK, on a
timeout after max_holds, or promoted at 100%. With a `labels` horizon a label KPI's window
carries the oldest cohort whose labels have matured (as the forecast assumes). Before each
rollout the judge takes the policy's A/A calibration windows (`calibration.windows`, 24 by
default): the baseline's traffic of one first-stage interval, Poisson trials split in two
halves, binomial successes at the baseline rate, as the forecast assumes them. Identical
candidates give the time to certify each stage's first KPI and to promote each stage and the
whole rollout; a second run with the drop gives the time to roll back. Both sides read their
medians with forecast.spread_quantile. Target: every forecast median within +-25% of the
simulated one (or both beyond reach).

Run: make bench   (or: python bench/forecast.py --rollouts 2000 --write docs/forecast.md)
Exits 1 when a median misses the target.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from simulate import fmt as _fmt  # the benchmarks' shared number format
from simulate import halves

from kpigate.engine import (
    Cohort,
    Decision,
    Observation,
    Rate,
    RolloutState,
    Verdict,
    Window,
    compile_plan,
    judge,
)
from kpigate.engine.forecast import Forecast, Traffic, forecast, spread_quantile
from kpigate.policy import Kpi, Labels, Policy, Stage

MARKER = "<!-- measured: everything below is written by bench/forecast.py -->"
TOLERANCE = 0.25
SHARE_TOLERANCE = 0.05  # absolute, for a median beyond reach


@dataclass(frozen=True)
class KpiTraffic:
    name: str
    base: float  # share of requests that are its trials
    value: float  # baseline rate
    margin: float


@dataclass(frozen=True)
class Setting:
    label: str
    rps: float
    kpis: tuple[KpiTraffic, ...]
    drop: float  # on the first KPI, in its units
    horizon: float | None = None  # label horizon, seconds
    early_no_harm: bool = False  # promote_when no_harm at 5% and 25%

    def policy(self) -> Policy:
        stages = tuple(
            Stage(
                traffic=t,
                soak=1800,
                interval=300,
                promote_when="no_harm" if self.early_no_harm and t < 50 else "noninferior",
            )
            for t in (5, 25, 50, 100)
        )
        return Policy(
            name=self.label,
            stages=stages,
            labels=None if self.horizon is None else Labels(horizon=self.horizon),
            kpis=tuple(Kpi(name=k.name, margin=k.margin, min_samples=100) for k in self.kpis),
        )

    def traffic(self) -> Traffic:
        return Traffic(
            self.rps, {k.name: k.base for k in self.kpis}, {k.name: k.value for k in self.kpis}
        )


def _settings() -> list[Setting]:
    recall = KpiTraffic("recall", 0.02, 0.876, 0.02)
    rare = KpiTraffic("recall", 0.005, 0.876, 0.03)
    flagged = KpiTraffic("precision", 0.1, 0.6, 0.04)
    return [
        Setting("recall, 50 rps, fraud 2%", 50, (recall,), 0.05, early_no_harm=True),
        Setting("recall, 150 rps, fraud 2%", 150, (recall,), 0.03, early_no_harm=True),
        Setting("recall, 500 rps, fraud 2%", 500, (recall,), 0.03),
        Setting("recall, 1000 rps, fraud 2%", 1000, (recall,), 0.02),
        Setting("recall, 400 rps, fraud 0.5%", 400, (rare,), 0.05, early_no_harm=True),
        Setting("precision, 20 rps, flagged 10%", 20, (flagged,), 0.08, early_no_harm=True),
        Setting(
            "recall, 150 rps, labels after 20m", 150, (recall,), 0.04, 1200, early_no_harm=True
        ),
        Setting(
            "recall + precision, 100 rps",
            100,
            (recall, KpiTraffic("precision", 0.03, 0.6, 0.03)),
            0.04,
            early_no_harm=True,
        ),
    ]


@dataclass
class Simulated:
    """Per rollout; times in seconds, inf when it did not happen."""

    certify: np.ndarray  # (stages, rollouts): first PASS of the first KPI, from the stage's start
    promoted: np.ndarray  # (stages, rollouts): PROMOTE, from the stage's start
    reached: np.ndarray  # (stages, rollouts)
    promote_all: np.ndarray  # (rollouts,): promoted at 100%, from the start
    rollback: np.ndarray  # (rollouts,): rolled back, from the start
    last_interval: np.ndarray  # (rollouts,)


def _calibration(
    setting: Setting, policy: Policy, rng: np.random.Generator
) -> list[dict[str, Observation]]:
    """The policy's A/A calibration windows: before the rollout every request is the
    baseline's; each half of a first-stage interval's trials at the baseline rate."""
    out = []
    for _ in range(policy.calibration.windows):
        observed: dict[str, Observation] = {}
        for k in setting.kpis:
            n_a, n_b = halves(int(rng.poisson(setting.rps * policy.stages[0].interval * k.base)))
            observed[k.name] = Observation(
                baseline=Rate(float(rng.binomial(n_b, k.value)), float(n_b)),
                candidate=Rate(float(rng.binomial(n_a, k.value)), float(n_a)),
            )
        out.append(observed)
    return out


def _rollouts(setting: Setting, drop: float, rollouts: int, seed: int) -> Simulated:
    policy = setting.policy()
    plan = compile_plan(policy)
    rng = np.random.default_rng(seed)
    # Calibration from its own generator: the rollouts' traffic is the same with and without.
    calibration_rng = np.random.default_rng((seed, 1))
    n_stages = len(policy.stages)
    first = setting.kpis[0].name
    out = Simulated(
        certify=np.full((n_stages, rollouts), np.inf),
        promoted=np.full((n_stages, rollouts), np.inf),
        reached=np.zeros((n_stages, rollouts), dtype=bool),
        promote_all=np.full(rollouts, np.inf),
        rollback=np.full(rollouts, np.inf),
        last_interval=np.zeros(rollouts),
    )
    horizon = setting.horizon
    for r in range(rollouts):
        state, s, now, start, index = RolloutState(), 0, 0.0, 0.0, 0
        before = _calibration(setting, policy, calibration_rng)
        for i, halves_of in enumerate(before):
            aa = Window(i - len(before), policy.stages[0].traffic, halves_of, calibration=True)
            state, _ = judge(plan, state, aa)
        assert state.calibration_windows == len(before)
        served: list[tuple[int, float, float, dict[str, Observation]]] = []
        out.reached[0, r] = True
        while True:
            index += 1
            stage = policy.stages[s]
            now += stage.interval
            share = policy.candidate_weight(stage) / 100.0
            observed: dict[str, Observation] = {}
            for k in setting.kpis:
                mean = setting.rps * stage.interval * k.base
                n_c, n_b = rng.poisson(mean * share), rng.poisson(mean * (1.0 - share))
                p_c = k.value - (drop if k.name == first else 0.0)
                observed[k.name] = Observation(
                    baseline=Rate(float(rng.binomial(n_b, k.value)), float(n_b)),
                    candidate=Rate(float(rng.binomial(n_c, p_c)), float(n_c)),
                )
            cohort = None
            if horizon is not None:
                # Every KPI here reads labels: the window carries the oldest matured cohort.
                served.append((index, stage.traffic, now, observed))
                observed = {}
                if served and served[0][2] + horizon <= now + 1e-9:
                    window_of, stage_of, ended, observed = served.pop(0)
                    cohort = Cohort(window_of, stage_of, ended + horizon)
            window = Window(index, stage.traffic, observed, cohort=cohort)
            state, decision = judge(plan, state, window)
            since = now - start
            report = decision.kpis[first]
            if report.verdict is Verdict.PASS and math.isinf(out.certify[s, r]):
                out.certify[s, r] = since
            out.last_interval[r] = stage.interval
            if decision.decision is Decision.ROLLBACK:
                out.rollback[r] = now
                break
            if decision.suspend:
                break
            if decision.decision is Decision.PROMOTE:
                out.promoted[s, r] = since
                if s == n_stages - 1:
                    out.promote_all[r] = now
                    break
                s, start = s + 1, now
                out.reached[s, r] = True
    return out


@dataclass
class Row:
    """One median, forecast vs simulated, with the share of rollouts in which it happened."""

    setting: str
    measure: str
    forecast: float
    simulated: float
    simulated_share: float
    forecast_share: float

    @property
    def ok(self) -> bool:
        if math.isfinite(self.forecast) and math.isfinite(self.simulated):
            return abs(self.forecast - self.simulated) <= TOLERANCE * self.simulated
        # A median beyond reach on either side: it happens in about half the rollouts or
        # fewer, where the median jumps to infinity; compare how often it happens instead.
        return abs(self.forecast_share - self.simulated_share) <= SHARE_TOLERANCE


def _median(times: np.ndarray, widths: np.ndarray | float) -> tuple[float, float]:
    spread = np.broadcast_to(np.asarray(widths, dtype=float), times.shape)
    share = float(np.isfinite(times).mean()) if times.size else 0.0
    return spread_quantile(times, spread, 0.5), share


def compare(setting: Setting, rollouts: int, seed: int) -> tuple[list[Row], float]:
    started = time.perf_counter()
    result: Forecast = forecast(
        setting.policy(), setting.traffic(), (setting.kpis[0].name, setting.drop)
    )
    same = _rollouts(setting, 0.0, rollouts, seed)
    worse = _rollouts(setting, setting.drop, rollouts, seed + 1)
    rows = []
    stages = result.stages
    for s, stage in enumerate(stages):
        reached = same.reached[s]
        if reached.mean() < 0.5 or stage.reached < 0.5:
            continue  # too few rollouts get there for a median of that stage
        where = f"stage {stage.traffic:g}%"
        kpi = stage.kpis[0]
        promoted = stages[s + 1].reached / stage.reached if s + 1 < len(stages) else None
        rows += [
            Row(
                setting.label,
                f"{where}: certify {kpi.key}",
                kpi.certify.median,
                *_median(same.certify[s][reached], stage.interval),
                kpi.certified,
            ),
            Row(
                setting.label,
                f"{where}: promote",
                stage.promote.median,
                *_median(same.promoted[s][reached], stage.interval),
                result.promoted / stage.reached if promoted is None else promoted,
            ),
        ]
    rows.append(
        Row(
            setting.label,
            "identical: promoted to 100%",
            result.promote_all.median,
            *_median(same.promote_all, same.last_interval),
            result.promoted,
        )
    )
    assert result.drop is not None
    rows.append(
        Row(
            setting.label,
            f"{setting.kpis[0].name} -{setting.drop:g}: rolled back",
            result.drop.rollback.median,
            *_median(worse.rollback, worse.last_interval),
            result.drop.rolled_back,
        )
    )
    return rows, time.perf_counter() - started


def _run(job: tuple[Setting, int, int]) -> tuple[list[Row], float]:
    return compare(*job)


def _minutes(seconds: float) -> str:
    return "beyond reach" if math.isinf(seconds) else f"{seconds / 60:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rollouts", type=int, default=2000, help="per setting and run")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--write", help="also write the report (markdown) to this file")
    args = parser.parse_args(argv)
    settings = _settings()
    jobs = [(s, args.rollouts, 7000 + 10 * i) for i, s in enumerate(settings)]
    started = time.perf_counter()
    rows: list[Row] = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for (setting, _, _), (found, seconds) in zip(jobs, pool.map(_run, jobs), strict=True):
            rows += found
            print(f"{setting.label}: {seconds:.1f} s", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - started
    lines = [
        "## Results",
        "",
        "| setting | measure | forecast median (min) | simulated median (min) | error "
        "| happened: forecast / simulated | holds |",
        "|---|---|---:|---:|---:|---:|:---:|",
    ]
    for row in rows:
        finite = math.isfinite(row.forecast) and math.isfinite(row.simulated)
        error = f"{(row.forecast - row.simulated) / row.simulated:+.0%}" if finite else "–"
        lines.append(
            f"| {row.setting} | {row.measure} | {_minutes(row.forecast)} | "
            f"{_minutes(row.simulated)} | {error} | {row.forecast_share:.0%} / "
            f"{row.simulated_share:.0%} | {'yes' if row.ok else '**NO**'} |"
        )
    errors = [
        abs(r.forecast - r.simulated) / r.simulated
        for r in rows
        if math.isfinite(r.forecast) and math.isfinite(r.simulated)
    ]
    worst = max(errors, default=math.nan)
    shares = [
        abs(r.forecast_share - r.simulated_share)
        for r in rows
        if not (math.isfinite(r.forecast) and math.isfinite(r.simulated))
    ]
    lines += [
        "",
        f"{sum(r.ok for r in rows)} of {len(rows)} rows hold: {len(errors)} medians within "
        f"reach on both sides, largest error {_fmt(100 * worst, 1)}% (target ±25%); "
        f"{len(shares)} beyond reach on a side, largest difference in how often it happened "
        f"{_fmt(100 * max(shares, default=math.nan), 1)} points (target ±5).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; {len(settings)} settings x 2 runs x {args.rollouts} "
        f"rollouts in {elapsed:.0f} s.",
        "",
        f"Command: `python bench/forecast.py --rollouts {args.rollouts}` (`make bench` runs it).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        path = Path(args.write)
        intro = path.read_text().split(MARKER)[0] if path.exists() else ""
        path.write_text(intro + MARKER + "\n\n" + text + "\n")
    missed = [f"{r.setting}: {r.measure}" for r in rows if not r.ok]
    if missed:
        print(
            f"\n{len(missed)} median(s) off by more than 25%: " + "; ".join(missed), file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

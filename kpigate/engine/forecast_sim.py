"""Simulated rollouts on the sufficient statistics, for the forecast (forecast.py).

The expected traffic gives the information one window adds to each KPI at each stage, by the
engine's own reader (evidence.compare) on expected counts. Under a true improvement u the
running weighted sum A is a Gaussian random walk with mean u I and variance I (sequential.py),
so a rollout is simulated on (A, I) alone, look by look, with the gate's rules and the exact
boundaries of sequential.py solved for A at each I.

As in the engine (classify.update), each window's variance is its model variance v_w plus the
between-window component tau^2 estimated from the earlier windows (plan.pooled_tau2): the
policy's A/A calibration windows before the rollout and the rollout's own earlier windows. The
forecast's traffic is binomial, so the true tau^2 is 0, but the estimate is often positive; each
simulated rollout therefore draws its windows' differences u_w ~ N(u, v_w), keeps the spread
sums as the engine does (plan.SpreadArrays) and adds the estimate to each window's variance
before the window enters (A, I).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from scipy.special import log_ndtr

from kpigate.engine import sequential as seq
from kpigate.engine.classify import Unused, sizes_of
from kpigate.engine.evidence import ArmData, Histogram, Rate, ScoreHistograms, compare
from kpigate.engine.plan import Hypothesis, SpreadArrays, compile_plan, pooled_tau2_arrays
from kpigate.policy import Action, KpiType, Method, Policy, Scope

FORECAST_TYPES = (KpiType.RATE, KpiType.AUC)
MAX_RPS = 1e9  # beyond any router; keeps every count far from float overflow
# An unknown baseline value: it maximises a rate's binomial variance and is the AUC's least
# informative value, so the forecast errs on the slow side.
DEFAULT_VALUE = 0.5


class ForecastError(ValueError):
    """A policy or traffic that cannot be forecast; the message says what to change."""


@dataclass(frozen=True, slots=True)
class Traffic:
    """What the forecast assumes about live traffic. Keys are KPI names (or segment keys)."""

    rps: float  # requests per second reaching the router (both arms)
    base: Mapping[str, float] = field(default_factory=dict)  # share of requests that are trials
    value: Mapping[str, float] = field(default_factory=dict)  # the KPI's baseline value


@dataclass(frozen=True, slots=True)
class KpiModel:
    """One hypothesis' statistics, worked out once from the policy and the traffic."""

    hyp: Hypothesis
    margin: float
    theta: float
    rho: float
    delta_r: float
    base: float
    value: float
    labels: bool  # judged on matured cohorts, a label horizon after serving
    assumed: tuple[str, ...]  # what was not given and had to be assumed

    @property
    def key(self) -> str:
        return self.hyp.key

    def certify_level(self, info: float) -> float:
        """The weighted sum above which the non-inferiority bound clears -margin."""
        lower = seq.lower_bound(0.0, info, self.theta, self.hyp.log_noninferiority_threshold)
        return info * (-self.margin - lower)

    def harm_level(self, info: float) -> float:
        """The weighted sum below which the harm bound falls under -delta_r (a failure)."""
        upper = seq.upper_bound(0.0, info, self.rho, self.hyp.log_harm_threshold)
        return info * (-self.delta_r - upper)

    def certifies(self, weighted: np.ndarray, info: np.ndarray) -> np.ndarray:
        """weighted > certify_level(info), entry by entry (info > 0; elsewhere False)."""
        positive = info > 0
        safe = np.where(positive, info, 1.0)
        # sequential.lower_bound is plain arithmetic: it takes the array as it takes a float.
        lower = seq.lower_bound(
            0.0, cast(float, safe), self.theta, self.hyp.log_noninferiority_threshold
        )
        return positive & (weighted > safe * (-self.margin - lower))

    def harms(self, weighted: np.ndarray, info: np.ndarray) -> np.ndarray:
        """weighted < harm_level(info), entry by entry (info > 0; elsewhere False): the harm
        e-value of s = -weighted - delta_r info exceeds its threshold, the same condition as
        the harm bound (sequential.upper_bound) under -delta_r, as the e-value grows with s."""
        positive = info > 0
        safe = np.where(positive, info, 1.0)
        total = safe + self.rho
        z = (-weighted - self.delta_r * safe) / np.sqrt(total)
        log_e = math.log(2.0) + 0.5 * np.log(self.rho / total) + 0.5 * z * z + log_ndtr(z)
        return np.asarray(positive & (log_e > self.hyp.log_harm_threshold), dtype=bool)


def kpi_models(policy: Policy, traffic: Traffic) -> tuple[list[KpiModel], list[str]]:
    """The hypotheses the forecast covers, and a note for each one it cannot cover."""
    if policy.method is not Method.SEQUENTIAL:
        raise ForecastError("kpigate plan forecasts method sequential; this policy uses sigma")
    models: list[KpiModel] = []
    notes: list[str] = []
    for hyp in compile_plan(policy).hypotheses:
        kpi = hyp.kpi
        if kpi.scope is Scope.WINDOW:
            notes.append(f"{hyp.key}: judged per window (scope window), not forecast")
            continue
        if kpi.type not in FORECAST_TYPES:
            needs = (
                "the density of the distribution at the quantile"
                if kpi.type is KpiType.QUANTILE
                else "each segment's trials and rate"
            )
            notes.append(f"{hyp.key}: type {kpi.type.value} is not forecast (it needs {needs})")
            continue
        assumed: list[str] = []
        base = traffic.base.get(hyp.key, traffic.base.get(kpi.name))
        if base is None and kpi.type is KpiType.AUC:
            base = 0.5
            assumed.append("positives half of the requests")
        elif base is None:
            base = 1.0
            assumed.append("every request a trial")
        value = traffic.value.get(hyp.key, traffic.value.get(kpi.name, kpi.baseline_mean))
        if value is None:
            value = DEFAULT_VALUE
            assumed.append(f"baseline value {value:g}")
        if not 0 < base <= 1:
            raise ForecastError(f"{hyp.key}: the share of requests that are trials is in (0, 1]")
        if kpi.type is KpiType.AUC and not 0.5 <= value < 1:
            raise ForecastError(f"{hyp.key}: an AUC baseline value must be in [0.5, 1)")
        if kpi.type is KpiType.RATE and not 0 <= value <= 1:
            raise ForecastError(f"{hyp.key}: a rate's baseline value must be in [0, 1]")
        if kpi.type is KpiType.AUC and base >= 1:
            raise ForecastError(f"{hyp.key}: an AUC needs both classes: base rate below 1")
        sizes = sizes_of(kpi, policy, value)  # the gate's own (classify.py)
        if isinstance(sizes, Unused):
            notes.append(f"{hyp.key}: relative margin of a zero baseline value, not forecast")
            continue
        scales = sizes.scales
        models.append(
            KpiModel(
                hyp=hyp,
                margin=sizes.margin,
                theta=scales.theta,
                rho=scales.rho,
                delta_r=scales.delta_r,
                base=base,
                value=value,
                labels=policy.labels is not None and kpi.needs_labels,
                assumed=tuple(assumed),
            )
        )
    return models, notes


def _arm(kpi_type: KpiType, requests: float, base: float, value: float) -> ArmData:
    """Expected counts of one arm in one window."""
    if kpi_type is KpiType.AUC:
        # Two score buckets: negatives low, a share 2 (1 - AUC) of positives tied with them.
        pos, neg = requests * base, requests * (1.0 - base)
        tied = 2.0 * (1.0 - value) * pos
        return ScoreHistograms(
            Histogram((0.5, math.inf), (tied, pos)), Histogram((0.5, math.inf), (neg, neg))
        )
    trials = requests * base
    return Rate(value * trials, trials)


def window_info(model: KpiModel, candidate_requests: float, baseline_requests: float) -> float:
    """Information one window adds, by the engine's own reader (evidence.compare)."""
    kpi_type = model.hyp.kpi.type
    candidate = _arm(kpi_type, candidate_requests, model.base, model.value)
    baseline = _arm(kpi_type, baseline_requests, model.base, model.value)
    return 1.0 / compare(candidate, baseline, None, baseline).variance


def arm_samples(model: KpiModel, requests: float) -> float:
    """What the burn-in counts for one arm: trials, or the rarer class of an AUC."""
    share = model.base if model.hyp.kpi.type is KpiType.RATE else min(model.base, 1 - model.base)
    return requests * share


@dataclass(frozen=True, slots=True)
class StagePlan:
    """Per stage, what one window brings each KPI (index k follows the model list)."""

    traffic: float
    interval: float
    looks: int
    deadline_looks: int  # soak + max_holds: the last look that can promote
    info: tuple[float, ...]
    candidate_samples: tuple[float, ...]
    baseline_samples: tuple[float, ...]


def stage_plans(policy: Policy, models: list[KpiModel], traffic: Traffic) -> list[StagePlan]:
    if not 0 < traffic.rps <= MAX_RPS:
        raise ForecastError(f"requests per second must be a positive number up to {MAX_RPS:g}")
    plans = []
    history = 0.0  # baseline requests so far, the reference when holdback is 0 at 100%
    for stage in policy.stages:
        requests = traffic.rps * stage.interval
        share = policy.candidate_weight(stage) / 100.0
        cand = requests * share
        base = requests - cand if requests - cand > 0 else max(history, requests)
        plans.append(
            StagePlan(
                traffic=stage.traffic,
                interval=stage.interval,
                looks=stage.looks,
                deadline_looks=stage.looks + policy.max_holds,
                info=tuple(window_info(m, cand, base) for m in models),
                candidate_samples=tuple(arm_samples(m, cand) for m in models),
                baseline_samples=tuple(arm_samples(m, base) for m in models),
            )
        )
        unusable = [
            m.key for m, i in zip(models, plans[-1].info, strict=True) if not 0 < i < math.inf
        ]
        if unusable:
            raise ForecastError(
                f"stage {stage.traffic:g}%: the traffic gives no usable information for "
                f"{', '.join(unusable)} (check --rps, --kpi-base and --kpi-value)"
            )
        history += (requests - cand) * stage.looks
    return plans


# Why a simulated rollout ended.
RUNNING, PROMOTED, ROLLED_BACK, TIMED_OUT = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Paths:
    """What happened to each simulated rollout; times in seconds, inf when it did not happen."""

    reached: np.ndarray  # (stages, paths) bool
    promoted: np.ndarray  # (stages, paths): time from the stage's start to its PROMOTE
    first_pass: np.ndarray  # (stages, kpis, paths): time from the stage's start to a PASS
    first_judged: np.ndarray  # (stages, kpis, paths): ... to the first look past burn-in
    blocking: np.ndarray  # (kpis, paths): gating KPIs not ready at a timeout's last look
    ended: np.ndarray  # (paths,): RUNNING, PROMOTED, ROLLED_BACK or TIMED_OUT
    end_stage: np.ndarray  # (paths,) stage index of the last look
    end_time: np.ndarray  # (paths,) time from the rollout's start to its last look
    stage_start: np.ndarray  # (stages, paths): time from the rollout's start, inf if unreached


def calibration_info(policy: Policy, models: list[KpiModel], traffic: Traffic) -> tuple[float, ...]:
    """Information of one A/A calibration window per KPI: the baseline's traffic of one
    first-stage interval before the rollout (every request the baseline's), split in two
    halves, read as the engine reads it (classify.calibrate); () under calibration.windows 0."""
    if policy.calibration.windows <= 0:
        return ()
    half = traffic.rps * policy.stages[0].interval / 2.0
    return tuple(window_info(m, half, half) for m in models)


def simulate(
    policy: Policy,
    models: list[KpiModel],
    plans: list[StagePlan],
    improvements: list[float],
    paths: int,
    seed: int,
    calibration: tuple[float, ...] = (),
) -> Paths:
    """Rollouts on the sufficient statistics, look by look, by the gate's rules (gate.py).

    improvements[k] is KPI k's true improvement (candidate minus baseline, signed so that
    positive is better). KPIs are independent here; label KPIs are judged on one matured
    cohort per look, the oldest first, a label horizon after the cohort's window ended.
    `calibration` (calibration_info) gives each KPI policy.calibration.windows A/A windows
    before the rollout, mean 0, that feed the between-window component only.
    """
    rng = np.random.default_rng(seed)
    n_stages, n_kpis = len(plans), len(models)
    max_looks = sum(p.deadline_looks for p in plans)
    interval = np.array([p.interval for p in plans])
    looks_of = np.array([p.looks for p in plans])
    info_of = np.array([p.info for p in plans]).reshape(n_stages, n_kpis)
    cand_of = np.array([p.candidate_samples for p in plans]).reshape(n_stages, n_kpis)
    base_of = np.array([p.baseline_samples for p in plans]).reshape(n_stages, n_kpis)
    horizon = policy.labels.horizon if policy.labels is not None else 0.0
    labelled = np.array([m.labels for m in models], dtype=bool)
    drift = np.array(improvements, dtype=float)
    min_samples = np.array([m.hyp.kpi.min_samples for m in models], dtype=float)
    action = [m.hyp.kpi.action for m in models]
    gating = np.array([m.hyp.kpi.is_gating for m in models], dtype=bool)
    rollback_kpi = np.array([a is Action.ROLLBACK for a in action], dtype=bool)
    hold_kpi = np.array([a is Action.HOLD for a in action], dtype=bool)
    no_harm = np.array([s.promote_when == "no_harm" for s in policy.stages])

    stage = np.zeros(paths, dtype=np.int64)
    look = np.zeros(paths, dtype=np.int64)
    holds = np.zeros(paths, dtype=np.int64)
    now = np.zeros(paths)
    start = np.zeros(paths)
    ended = np.zeros(paths, dtype=np.int64)
    end_time = np.full(paths, np.inf)
    weighted = np.zeros((n_kpis, paths))
    info = np.zeros((n_kpis, paths))
    cand_n = np.zeros((n_kpis, paths))
    base_n = np.zeros((n_kpis, paths))
    served_stage = np.zeros((paths, max_looks + 1), dtype=np.int64)
    served_end = np.full((paths, max_looks + 1), np.inf)
    served = np.zeros(paths, dtype=np.int64)
    next_cohort = np.zeros(paths, dtype=np.int64)
    reached = np.zeros((n_stages, paths), dtype=bool)
    reached[0] = True
    stage_start = np.full((n_stages, paths), np.inf)
    stage_start[0] = 0.0
    promoted = np.full((n_stages, paths), np.inf)
    first_pass = np.full((n_stages, n_kpis, paths), np.inf)
    first_judged = np.full((n_stages, n_kpis, paths), np.inf)
    blocking = np.zeros((n_kpis, paths), dtype=bool)
    rows = np.arange(paths)
    # The between-window component, as the engine estimates it (classify.between_window_variance).
    calibrated = SpreadArrays.zeros((n_kpis, paths))
    spread = SpreadArrays.zeros((n_kpis, paths))
    if calibration:
        cal_variance = 1.0 / np.array(calibration, dtype=float)[:, None]
        everywhere = np.ones((n_kpis, paths), dtype=bool)
        cal_variance = np.broadcast_to(cal_variance, (n_kpis, paths))
        for _ in range(policy.calibration.windows):
            aa = np.sqrt(cal_variance) * rng.standard_normal((n_kpis, paths))
            calibrated.add(aa, cal_variance, everywhere)

    for _ in range(max_looks):
        active = ended == RUNNING
        if not active.any():
            break
        now = np.where(active, now + interval[stage], now)
        look = look + active
        # This window's cohort; the oldest matured one is judged (label KPIs).
        served_stage[rows, served] = stage
        served_end[rows, served] = np.where(active, now, np.inf)
        served = served + active
        matured = active & (served_end[rows, next_cohort] + horizon <= now + 1e-9)
        cohort_stage = served_stage[rows, next_cohort]
        next_cohort = next_cohort + matured
        has_data = np.where(labelled[:, None], matured[None, :], active[None, :])
        source = np.where(labelled[:, None], cohort_stage[None, :], stage[None, :])
        model_info = info_of[source, np.arange(n_kpis)[:, None]]  # 1 / v_w
        model_variance = 1.0 / model_info
        difference = drift[:, None] + np.sqrt(model_variance) * rng.standard_normal((n_kpis, paths))
        variance = model_variance + pooled_tau2_arrays((calibrated, spread))
        weighted += np.where(has_data, difference / variance, 0.0)
        info += np.where(has_data, 1.0 / variance, 0.0)
        spread.add(difference, model_variance, has_data)
        cand_n += np.where(has_data, cand_of[source, np.arange(n_kpis)[:, None]], 0.0)
        base_n += np.where(has_data, base_of[source, np.arange(n_kpis)[:, None]], 0.0)
        judged = has_data & (cand_n >= min_samples[:, None]) & (base_n >= min_samples[:, None])
        passed = np.zeros_like(judged)
        failed = np.zeros_like(judged)
        for k, model in enumerate(models):
            failed[k] = judged[k] & model.harms(weighted[k], info[k])
            passed[k] = judged[k] & ~failed[k] & model.certifies(weighted[k], info[k])
        since = now - start
        for record, event in ((first_pass, passed), (first_judged, judged)):
            earlier = record[stage, :, rows].T  # (kpis, paths) at each path's stage
            record[stage, :, rows] = np.where(event & np.isinf(earlier), since, earlier).T

        rollback = active & (failed & rollback_kpi[:, None]).any(axis=0)
        held = (failed & hold_kpi[:, None]).any(axis=0)
        soaking = look < looks_of[stage]
        each_ready = np.where(no_harm[stage][None, :], judged, passed) | ~gating[:, None]
        ready = each_ready.all(axis=0)
        promote = active & ~rollback & ~held & ~soaking & ready
        hold = active & ~rollback & ~promote
        holds = holds + (hold & ~soaking)
        timeout = hold & (holds > policy.max_holds)
        blocking[:, timeout] = ~each_ready[:, timeout]
        finished = rollback | timeout | (promote & (stage == n_stages - 1))
        ended = np.where(rollback, ROLLED_BACK, ended)
        ended = np.where(timeout, TIMED_OUT, ended)
        ended = np.where(promote & (stage == n_stages - 1), PROMOTED, ended)
        end_time = np.where(finished, now, end_time)
        promoted[stage[promote], rows[promote]] = since[promote]
        advance = promote & (stage < n_stages - 1)
        stage = stage + advance
        look = np.where(advance, 0, look)
        holds = np.where(advance, 0, holds)
        start = np.where(advance, now, start)
        reached[stage[advance], rows[advance]] = True
        stage_start[stage[advance], rows[advance]] = now[advance]
    return Paths(
        reached=reached,
        promoted=promoted,
        first_pass=first_pass,
        first_judged=first_judged,
        blocking=blocking,
        ended=ended,
        end_stage=stage,
        end_time=end_time,
        stage_start=stage_start,
    )

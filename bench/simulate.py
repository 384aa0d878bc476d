"""Simulated traffic for the statistical benchmarks, and a rollout walked through the real judge.

Shared by bench/statistical.py (binomial data on a fixed schedule) and bench/robust.py (data
that real traffic produces, with the stage advancing only on PROMOTE). The traffic models are
numpy-vectorised over windows and stages: each produces, for one rollout, the counts every stage
would see in every window, so the walk can pick the stage its decisions reached.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kpigate.engine import (
    Decision,
    GatePlan,
    Histogram,
    Observation,
    Rate,
    RolloutState,
    SegmentRates,
    Verdict,
    Window,
    judge,
)
from kpigate.policy import Kpi, Policy, Stage
from kpigate.serve.routing import BUCKETS, bucket

BASE_RECALL = 0.876
STAGES = (5.0, 25.0, 50.0, 100.0)
LOOKS_PER_STAGE = 6
HOLDBACK = 5.0
ALPHA = 0.05
MARGIN = 0.01
# Prometheus' default histogram buckets, in milliseconds: DefBuckets in client_golang's
# prometheus/histogram.go (.005 ... 10 s), the same as client_python's DEFAULT_BUCKETS.
DEF_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PROMETHEUS_BUCKETS_MS = tuple(round(b * 1000.0, 6) for b in DEF_BUCKETS_S)
BOUNDS_MS = (*PROMETHEUS_BUCKETS_MS, math.inf)

Kpis = Mapping[str, Observation]
Observe = Callable[[int, int], Kpis]  # window t, stage index -> that window's KPI data


def stage_weights() -> np.ndarray:
    """The candidate's share of traffic at each stage, percent (the holdback stays at 100%)."""
    return np.array([100.0 - HOLDBACK if s >= 100 else s for s in STAGES])


def look_weights() -> list[float]:
    """The candidate's share at every look of the fixed schedule (6 looks per stage)."""
    return [float(w) for w in stage_weights() for _ in range(LOOKS_PER_STAGE)]


def split(total: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trials per arm when `total` trials per window are split by the candidate's weights."""
    n_c = np.rint(total * weights / 100.0).astype(np.int64)
    return n_c, total - n_c


def bench_policy(*kpis: Kpi, **fields: Any) -> Policy:
    """The benchmarks' policy: 4 stages x 6 looks, alpha 0.05, 5% holdback, one recall KPI."""
    fields.setdefault(
        "stages", tuple(Stage(traffic=t, soak=1800.0, interval=300.0) for t in STAGES)
    )
    fields.setdefault("alpha", ALPHA)
    fields.setdefault("holdback", HOLDBACK)
    return Policy(name="bench", kpis=kpis or (Kpi(name="recall", margin=MARGIN),), **fields)


def fmt(value: float, digits: int = 3) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def write_section(path: Path, begin: str, end: str, text: str, before: str | None = None) -> None:
    """Replace what lies between `begin` and `end` in `path`, leaving the rest of it alone.

    Without the markers yet, the section goes just above `before` (another script's marker,
    whose writer keeps what is above it) or at the end.
    """
    section = f"{begin}\n\n{text}\n\n{end}"
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + section + rest.split(end, 1)[1]
    elif before is not None and before in old:
        head, rest = old.split(before, 1)
        new = head + section + "\n\n" + before + rest
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + section + "\n"
    path.write_text(new)


# --- the walk: one rollout through the real judge --------------------------------------------


@dataclass(frozen=True, slots=True)
class Walk:
    """How one rollout went when the stage advances only on PROMOTE."""

    end: str  # rollback, promoted (past the last stage), suspended (max_holds) or open
    promotions: int  # stages passed
    windows: int
    samples: float  # the counted KPI's candidate samples until the end
    first_fail: int  # window of the first FAIL verdict of any KPI, 0 if none
    fails: int  # windows with a FAIL verdict


def max_windows(policy: Policy) -> int:
    """Windows a rollout can take: every stage soaks, then holds up to max_holds, then times out."""
    return sum(stage.looks + policy.max_holds for stage in policy.stages)


def calibration_windows(plan: GatePlan) -> int:
    """A/A calibration windows the plan's policy asks for; 0 for an engine without them (the
    reference engine of the power settings, bench/engine_at.py)."""
    calibration = getattr(plan.policy, "calibration", None)
    return 0 if calibration is None else int(calibration.windows)


def walk(plan: GatePlan, observe: Observe, count: str, calibration: Sequence[Kpis] = ()) -> Walk:
    """Judge window after window; `observe(t, s)` is window t's data at stage index s.

    `calibration` (A/A windows of the baseline's halves, before the rollout) goes first, as a
    source writes it, with negative window indices; it is no look and counts no samples."""
    state = RolloutState()
    for i, kpis in enumerate(calibration):
        index = i - len(calibration)  # ..., -2, -1
        window = Window(index, plan.stages[0].traffic, kpis, calibration=True)
        state, _ = judge(plan, state, window)
    stage_index, promotions, samples, first_fail, fails = 0, 0, 0.0, 0, 0
    end, t = "open", 0
    for t in range(max_windows(plan.policy)):
        kpis = observe(t, stage_index)
        stage = plan.stages[stage_index].traffic
        state, decision = judge(plan, state, Window(t + 1, stage, kpis))
        counted = kpis[count].candidate
        samples += 0.0 if counted is None else counted.samples
        if any(r.verdict is Verdict.FAIL for r in decision.kpis.values()):
            fails += 1
            first_fail = first_fail or t + 1
        if decision.decision is Decision.ROLLBACK:
            end = "rollback"
        elif decision.suspend:
            end = "suspended"
        elif decision.decision is Decision.PROMOTE:
            promotions += 1
            if decision.final:
                end = "promoted"
            stage_index += 1
        if end != "open":
            break
    return Walk(end, promotions, t + 1, samples, first_fail, fails)


# --- traffic models: arrays [window, stage] for one rollout ----------------------------------


def rates(x_c: np.ndarray, n_c: np.ndarray, x_b: np.ndarray, n_b: np.ndarray) -> Observe:
    """observe() for one rate KPI named recall from arrays [window, stage]."""

    def observe(t: int, s: int) -> Kpis:
        return {
            "recall": Observation(
                baseline=Rate(float(x_b[t, s]), float(n_b[t, s])),
                candidate=Rate(float(x_c[t, s]), float(n_c[t, s])),
            )
        }

    return observe


def binomial_arms(
    rng: np.random.Generator,
    windows: int,
    total: int,
    effect: float,
    sd: float = 0.0,
    base: float = BASE_RECALL,
) -> tuple[np.ndarray, ...]:
    """x_c, n_c, x_b, n_b [window, stage]: `total` trials per window split by the stage.

    With sd > 0 each arm's rate in each window moves by its own N(0, sd) (extra-binomial
    noise: the arms do not share it, so comparing within the window does not cancel it).
    """
    n_c, n_b = (np.broadcast_to(n, (windows, len(STAGES))) for n in split(total, stage_weights()))
    jitter_c = rng.normal(0.0, sd, (windows, 1)) if sd else np.zeros((windows, 1))
    jitter_b = rng.normal(0.0, sd, (windows, 1)) if sd else np.zeros((windows, 1))
    p_c = np.clip(base + effect + jitter_c, 0.0, 1.0)
    p_b = np.clip(base + jitter_b, 0.0, 1.0)
    return rng.binomial(n_c, p_c), n_c, rng.binomial(n_b, p_b), n_b


@dataclass(frozen=True)
class Users:
    """A rollout's users: sticky arm buckets, transaction rates and outcome propensities."""

    buckets: np.ndarray  # the router's bucket of each user, in [0, BUCKETS)
    rate: np.ndarray  # expected transactions per window
    propensity: np.ndarray  # chance that one of the user's transactions is a success


def users(
    rng: np.random.Generator,
    count: int,
    transactions: int,
    salt: str,
    activity_sigma: float = 1.7,
    concentration: float = 10.0,
    base: float = BASE_RECALL,
) -> Users:
    """Lognormal activity (sigma 1.7: the top fifth of users make 80% of transactions) and a
    Beta propensity with mean `base` and the given concentration (sd 0.099 at 10)."""
    activity = rng.lognormal(0.0, activity_sigma, count)
    propensity = rng.beta(base * concentration, (1.0 - base) * concentration, count)
    return Users(user_buckets(count, salt), activity * transactions / activity.sum(), propensity)


@functools.cache
def user_buckets(count: int, salt: str) -> np.ndarray:
    """The router's bucket of the keys user-0 ... user-(count-1). A rollout draws its users'
    activity and propensity afresh, independent of the key, so the keys can be reused."""
    keys = np.array([bucket(f"user-{i}", salt) for i in range(count)])
    keys.flags.writeable = False
    return keys


def user_arms(
    rng: np.random.Generator, people: Users, windows: int, effect: float = 0.0
) -> Observe:
    """observe() for recall counting transactions of users who recur every window.

    A user is on the candidate at a stage when the router's bucket of their key is below the
    stage's cutoff, so raising the weight only adds users (routing.bucket's promise). A user
    makes Poisson(rate) transactions a window, each a success with their propensity (drawn
    as independent Poisson successes and failures: thinning), so the users' own propensities
    persist from window to window. Each arm's rate carries the design effect the prediction
    log's SQL reports (kpigate.sources.predlog): over the arm's rows of the rollout so far,
    per user y_i and n_i, through the one definition, evidence.design_effect. observe() must
    be called window after window, at the stage the walk is at (as sim.walk does).
    """
    # Imported here: the power settings run this module against an older engine (engine_at),
    # which has no design effects.
    from kpigate.engine import ClusterMoments, design_effect

    cutoffs = np.rint(stage_weights() * BUCKETS / 100.0)
    # group g: on the candidate from stage g on (group 4: never, it is the holdback)
    group = np.searchsorted(cutoffs, people.buckets, side="right")
    moved = np.clip(people.propensity + effect, 0.0, 1.0)
    # per arm (0 baseline, 1 candidate) and user: successes and trials of the rollout so far
    y_sum = np.zeros((2, group.size))
    n_sum = np.zeros((2, group.size))

    def rate(arm: int) -> Rate:
        y, n = y_sum[arm], n_sum[arm]
        m = ClusterMoments(
            float(y.sum()),
            float(n.sum()),
            # not y @ y: BLAS threads spin on a busy machine (20 ms a call here, 50 us this way)
            float((y * y).sum()),
            float((y * n).sum()),
            float((n * n).sum()),
            float(np.count_nonzero(n)),
        )
        return Rate(m.successes, m.trials, design_effect(m))

    def window_rate(y: np.ndarray, n: np.ndarray, on: np.ndarray) -> tuple[float, float]:
        return float(y[on].sum()), float(n[on].sum())

    def observe(t: int, s: int) -> Kpis:
        on = group <= s  # the candidate at stage s: groups 0..s
        propensity = np.where(on, moved, people.propensity)
        y = rng.poisson(people.rate * propensity).astype(np.float64)
        n = y + rng.poisson(people.rate * (1.0 - propensity))
        for arm, members in ((0, ~on), (1, on)):
            y_sum[arm] += np.where(members, y, 0.0)
            n_sum[arm] += np.where(members, n, 0.0)
        cand, base = window_rate(y, n, on), window_rate(y, n, ~on)
        return {
            "recall": Observation(
                baseline=Rate(*base, rate(0).deff),
                candidate=Rate(*cand, rate(1).deff),
            )
        }

    return observe


def lognormal_mu(p95: float, sigma: float) -> float:
    """mu of a lognormal latency with the given sigma whose 95th percentile is `p95`."""
    return math.log(p95) - 1.6448536269514722 * sigma


def bucket_probabilities(
    p95: float, sigma: float, bounds: Sequence[float] = BOUNDS_MS
) -> np.ndarray:
    """Chance of a request landing in each bucket (le = bound) for a lognormal latency."""
    mu = lognormal_mu(p95, sigma)
    cdf = [
        1.0 if math.isinf(b) else 0.5 * math.erfc(-(math.log(b) - mu) / (sigma * math.sqrt(2)))
        for b in bounds
    ]
    return np.diff(np.array([0.0, *cdf]))


def latency_arms(
    rng: np.random.Generator,
    windows: int,
    requests: int,
    p95_baseline: float,
    p95_candidate: float,
    sigma: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative bucket counts [window, stage, bucket] of the candidate and the baseline."""
    n_c, n_b = split(requests, stage_weights())
    shape = (windows, len(STAGES))
    c = rng.multinomial(np.broadcast_to(n_c, shape), bucket_probabilities(p95_candidate, sigma))
    b = rng.multinomial(np.broadcast_to(n_b, shape), bucket_probabilities(p95_baseline, sigma))
    return np.cumsum(c, axis=-1), np.cumsum(b, axis=-1)


def histograms(name: str, cand: np.ndarray, base: np.ndarray) -> Observe:
    def observe(t: int, s: int) -> Kpis:
        return {
            name: Observation(
                baseline=Histogram(BOUNDS_MS, tuple(float(v) for v in base[t, s])),
                candidate=Histogram(BOUNDS_MS, tuple(float(v) for v in cand[t, s])),
            )
        }

    return observe


def segment_arms(
    rng: np.random.Generator,
    windows: int,
    positives: int,
    gap_baseline: float,
    gap_candidate: float,
    base: float = BASE_RECALL,
) -> tuple[np.ndarray, ...]:
    """Successes and trials [window, stage, segment a/b] of each arm; recall_a = b + gap."""
    n_c, n_b = split(positives, stage_weights())
    shape = (windows, len(STAGES), 2)
    n_c3 = np.broadcast_to(n_c[None, :, None], shape)
    n_b3 = np.broadcast_to(n_b[None, :, None], shape)
    p_c = np.array([base + gap_candidate, base])
    p_b = np.array([base + gap_baseline, base])
    return rng.binomial(n_c3, p_c), n_c3, rng.binomial(n_b3, p_b), n_b3


def segments(name: str, arms: tuple[np.ndarray, ...]) -> Observe:
    x_c, n_c, x_b, n_b = arms

    def pair(x: np.ndarray, n: np.ndarray, t: int, s: int) -> SegmentRates:
        a = Rate(float(x[t, s, 0]), float(n[t, s, 0]))
        return SegmentRates(a=a, b=Rate(float(x[t, s, 1]), float(n[t, s, 1])))

    def observe(t: int, s: int) -> Kpis:
        return {name: Observation(baseline=pair(x_b, n_b, t, s), candidate=pair(x_c, n_c, t, s))}

    return observe


# --- A/A calibration windows: the baseline before the rollout, split in two halves ------------
#
# Before the rollout every request is the baseline's; a source splits it by a hash of the user
# into two pseudo-arms (kpigate/sources/predlog.py). Each model below gives each half the same
# noise a real arm gets in that scenario, with half the window's trials. They draw from their
# own generator, so the rollout's own traffic is the same with and without calibration.


def halves(total: int) -> tuple[int, int]:
    return total // 2, total - total // 2


def binomial_calibration(
    rng: np.random.Generator, windows: int, total: int, sd: float = 0.0, name: str = "recall"
) -> list[Kpis]:
    """Each half's rate moves by its own N(0, sd) per window, as each arm's does."""
    n_a, n_b = halves(total)
    out = []
    for _ in range(windows):
        p_a, p_b = (
            float(np.clip(BASE_RECALL + (rng.normal(0.0, sd) if sd else 0.0), 0.0, 1.0))
            for _ in range(2)
        )
        a = Rate(float(rng.binomial(n_a, p_a)), float(n_a))
        b = Rate(float(rng.binomial(n_b, p_b)), float(n_b))
        out.append({name: Observation(baseline=a, candidate=b)})
    return out


def user_calibration(
    rng: np.random.Generator, people: Users, windows: int, salt: str = "calibration"
) -> list[Kpis]:
    """The rollout's users before it, every one on the baseline, halved by a second hash of
    their key (not the router's bucket), with their own activity and propensity."""
    half = user_buckets(people.rate.size, salt) < BUCKETS // 2
    out = []
    for _ in range(windows):
        y = rng.poisson(people.rate * people.propensity).astype(np.float64)
        n = y + rng.poisson(people.rate * (1.0 - people.propensity))
        a = Rate(float(y[half].sum()), float(n[half].sum()))
        b = Rate(float(y[~half].sum()), float(n[~half].sum()))
        out.append({"recall": Observation(baseline=a, candidate=b)})
    return out


def latency_calibration(
    rng: np.random.Generator, windows: int, requests: int, p95: float, name: str
) -> list[Kpis]:
    probabilities = bucket_probabilities(p95, 0.5)
    out = []
    for _ in range(windows):
        a, b = (
            Histogram(
                BOUNDS_MS, tuple(float(v) for v in np.cumsum(rng.multinomial(n, probabilities)))
            )
            for n in halves(requests)
        )
        out.append({name: Observation(baseline=a, candidate=b)})
    return out


def segment_calibration(
    rng: np.random.Generator, windows: int, positives: int, gap: float, name: str
) -> list[Kpis]:
    n_a, n_b = halves(positives)
    p = (BASE_RECALL + gap, BASE_RECALL)
    out = []
    for _ in range(windows):
        pair = [
            SegmentRates(
                a=Rate(float(rng.binomial(n, p[0])), float(n)),
                b=Rate(float(rng.binomial(n, p[1])), float(n)),
            )
            for n in (n_a, n_b)
        ]
        out.append({name: Observation(baseline=pair[0], candidate=pair[1])})
    return out

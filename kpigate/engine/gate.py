"""The gate: fold one window into a rollout's state and decide PROMOTE, HOLD or ROLLBACK.

Pure: `judge(plan, state, window)` returns a new state and a decision and touches nothing
else, so the same code runs in `kpigate replay`, in the evaluate-gate step and in tests.
Per KPI (and segment) a classifier gives a verdict (pass, fail, inconclusive); the scorer
below combines the verdicts with the stage's soak and hold rules, as Kayenta splits its judge.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from typing import Any

from kpigate.engine import sequential as seq
from kpigate.engine.control import ControlLimits, center_and_spread, control_limits, ewma_update
from kpigate.engine.evidence import (
    ArmData,
    Comparison,
    NotComparable,
    Observation,
    Window,
    compare,
    value_of,
)
from kpigate.policy import (
    Action,
    Direction,
    Kpi,
    KpiType,
    Method,
    Policy,
    Scope,
    Stage,
    TimeoutAction,
)

_DISPLAY_EWMA_LAMBDA = 0.3
_MAX_LOG_E = 690.0  # e-values are reported up to ~1e300


class Decision(StrEnum):
    PROMOTE = "promote"
    HOLD = "hold"
    ROLLBACK = "rollback"


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class Hypothesis:
    """One KPI in one segment, with its share of the error budgets worked out once."""

    key: str
    kpi: Kpi
    sign: float  # +1 when higher is better: improvement = sign * (candidate - baseline)
    log_harm_threshold: float
    log_noninferiority_threshold: float
    harm_z: float  # for scope `window`
    noninferiority_z: float


@dataclass(frozen=True)  # no slots: kpi_types is cached in the instance's __dict__
class GatePlan:
    """A policy compiled for judging: hypotheses and their Bonferroni-split budgets."""

    policy: Policy
    hypotheses: tuple[Hypothesis, ...]

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self.policy.stages

    @cached_property
    def kpi_types(self) -> Mapping[str, KpiType]:
        """Data key -> KPI type, for readers of window data (read once per window)."""
        return {h.key: h.kpi.type for h in self.hypotheses}


def compile_plan(policy: Policy) -> GatePlan:
    """Split alpha over the rollback hypotheses and the promotion budget over gating ones.

    e-values combine by Bonferroni without any dependence assumption: rejecting when
    e >= K / alpha keeps the family's error at alpha over all looks. Holds and alerts do not
    spend the false-rollback budget; they get their own family at the same alpha.
    """
    keyed = [(key, kpi) for kpi in policy.kpis for key in kpi.hypotheses()]
    n_rollback = sum(1 for _, k in keyed if k.action is Action.ROLLBACK) or 1
    n_other = sum(1 for _, k in keyed if k.action is not Action.ROLLBACK) or 1
    n_gating = sum(1 for _, k in keyed if k.is_gating) or 1
    hypotheses = []
    for key, kpi in keyed:
        harm_alpha = policy.alpha / (n_rollback if kpi.action is Action.ROLLBACK else n_other)
        promo_alpha = policy.promotion_alpha / n_gating
        hypotheses.append(
            Hypothesis(
                key=key,
                kpi=kpi,
                sign=1.0 if kpi.direction is Direction.HIGHER else -1.0,
                log_harm_threshold=math.log(1.0 / harm_alpha),
                log_noninferiority_threshold=math.log(1.0 / promo_alpha),
                harm_z=seq.normal_quantile(1.0 - harm_alpha),
                noninferiority_z=seq.normal_quantile(1.0 - promo_alpha),
            )
        )
    return GatePlan(policy=policy, hypotheses=tuple(hypotheses))


@dataclass(frozen=True, slots=True)
class KpiState:
    info: float = 0.0  # sum of 1 / v_w
    weighted: float = 0.0  # sum of u_w / v_w
    candidate: ArmData | None = None  # all windows summed
    baseline: ArmData | None = None
    history: tuple[float, ...] = ()  # the baseline's first per-window values (sigma rule)
    ewma: float | None = None
    looks: int = 0  # windows that added evidence


@dataclass(frozen=True, slots=True)
class KpiReport:
    key: str
    category: str
    verdict: Verdict
    triggers: str  # the action this verdict set off: rollback, hold, alert or none
    reason: str
    margin: float | None = None
    estimate: float | None = None  # candidate - baseline, stratified over windows
    ci: tuple[float, float] | None = None
    candidate: float | None = None
    baseline: float | None = None
    samples: tuple[float, float] = (0.0, 0.0)
    evidence: Mapping[str, float] = field(default_factory=dict)
    control: ControlLimits | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "category": self.category,
            "verdict": self.verdict.value,
            "action": self.triggers,
            "reason": self.reason,
            "estimate": _round(self.estimate),
            "ci": [_round(self.ci[0]), _round(self.ci[1])] if self.ci else None,
            "margin": _round(self.margin),
            "candidate": _round(self.candidate),
            "baseline": _round(self.baseline),
            "samples": {"candidate": self.samples[0], "baseline": self.samples[1]},
            "evidence": {k: _round(v) for k, v in self.evidence.items()},
        }
        if self.control is not None:
            out["control"] = {k: _round(getattr(self.control, k)) for k in _CONTROL_FIELDS}
        return out


_CONTROL_FIELDS = ("center", "lcl", "ucl", "value", "ewma", "ewma_lcl", "ewma_ucl")


def _round(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return value
    return float(f"{value:.6g}")


@dataclass(frozen=True, slots=True)
class GateDecision:
    window: int
    stage: float
    decision: Decision
    reasons: tuple[str, ...]
    kpis: Mapping[str, KpiReport]
    look: int  # evaluation number within the stage
    holds: int  # inconclusive looks after the soak, this stage
    suspend: bool = False  # HOLD that asks an operator to resume (policy on_max_holds)
    final: bool = False  # rolled back, or promoted at the last stage
    alerts: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "stage": self.stage,
            "decision": self.decision.value,
            "reasons": list(self.reasons),
            "look": self.look,
            "holds": self.holds,
            "suspend": self.suspend,
            "final": self.final,
            "alerts": list(self.alerts),
            "kpis": {key: report.as_dict() for key, report in self.kpis.items()},
        }


@dataclass(frozen=True, slots=True)
class RolloutState:
    windows: int = 0
    stage: float | None = None
    look: int = 0
    holds: int = 0
    ended: GateDecision | None = None
    kpis: Mapping[str, KpiState] = field(default_factory=dict)


# --- the classifier: one hypothesis, one window ----------------------------------------------


def _margin(kpi: Kpi, state: KpiState) -> float | None:
    if kpi.margin_type == "absolute":
        return kpi.margin
    reference = kpi.baseline_mean
    if reference is None and state.baseline is not None:
        try:
            reference = value_of(state.baseline, kpi.quantile)
        except NotComparable:
            return None
    return None if reference is None else kpi.margin * abs(reference)


def _add(total: ArmData | None, more: ArmData) -> ArmData:
    return more if total is None else total + more  # type: ignore[operator]


def _update(
    hyp: Hypothesis, policy: Policy, state: KpiState, obs: Observation | None, last_stage: bool
) -> tuple[KpiState, Comparison | None, str]:
    """Add one window's data to the running sums; say why not if it cannot be used."""
    if obs is None or obs.candidate is None:
        return state, None, "no candidate data in this window"
    reference = obs.baseline
    if reference is None:
        if last_stage and policy.holdback == 0 and state.baseline is not None:
            reference = state.baseline  # no concurrent baseline: its recorded history
        else:
            return state, None, "no baseline data in this window"
    earlier = None
    if state.candidate is not None and state.baseline is not None:
        earlier = _add(state.candidate, state.baseline)
    try:
        comparison = compare(obs.candidate, reference, hyp.kpi.quantile, earlier)
    except (NotComparable, ValueError) as exc:
        return state, None, f"not comparable: {exc}"
    if not (comparison.variance > 0 and math.isfinite(comparison.variance)):
        return state, None, "not comparable: zero variance"
    improvement = hyp.sign * comparison.difference
    history = state.history
    if obs.baseline is not None and len(history) < 64:
        history = (*history, comparison.baseline)
    updated = KpiState(
        info=state.info + 1.0 / comparison.variance,
        weighted=state.weighted + improvement / comparison.variance,
        candidate=_add(state.candidate, obs.candidate),
        baseline=state.baseline if obs.baseline is None else _add(state.baseline, obs.baseline),
        history=history,
        ewma=ewma_update(
            state.ewma, comparison.candidate, policy.sigma.ewma_lambda or _DISPLAY_EWMA_LAMBDA
        ),
        looks=state.looks + 1,
    )
    return updated, comparison, ""


def _limits(hyp: Hypothesis, policy: Policy, state: KpiState, value: float) -> ControlLimits | None:
    kpi = hyp.kpi
    if kpi.baseline_mean is not None and kpi.baseline_sd is not None:
        center, sigma = kpi.baseline_mean, kpi.baseline_sd
    elif len(state.history) >= policy.sigma.history_windows:
        center, sigma = center_and_spread(state.history[: policy.sigma.history_windows])
    else:
        return None
    lam = policy.sigma.ewma_lambda or _DISPLAY_EWMA_LAMBDA
    ewma = state.ewma if state.ewma is not None else value
    return control_limits(center, sigma, policy.sigma.k, value, ewma, lam, max(state.looks, 1))


def _classify(
    hyp: Hypothesis,
    policy: Policy,
    state: KpiState,
    comparison: Comparison,
    window_scope_samples: tuple[float, float],
) -> KpiReport:
    kpi = hyp.kpi
    category = kpi.category.value
    samples = (
        window_scope_samples
        if kpi.scope is Scope.WINDOW
        else (_samples(state.candidate), _samples(state.baseline))
    )
    candidate_value = _value(state.candidate, kpi)
    baseline_value = _value(state.baseline, kpi)
    limits = _limits(hyp, policy, state, comparison.candidate)
    common: dict[str, Any] = {
        "key": hyp.key,
        "category": category,
        "candidate": candidate_value,
        "baseline": baseline_value,
        "samples": samples,
        "control": limits,
    }
    delta = _margin(kpi, state)
    if delta is None:
        return KpiReport(
            verdict=Verdict.INCONCLUSIVE,
            triggers="none",
            reason="relative margin has no baseline value yet",
            **common,
        )
    common["margin"] = delta
    if min(samples) < kpi.min_samples:
        arm = "candidate" if samples[0] < samples[1] else "baseline"
        return KpiReport(
            verdict=Verdict.INCONCLUSIVE,
            triggers="none",
            reason=f"burn-in: {min(samples):g} of {kpi.min_samples} {arm} samples",
            **common,
        )

    scale = kpi.detect if kpi.detect is not None else policy.harm_scale * delta
    rho = 1.0 / (scale * scale)
    theta = delta if delta > 0 else 0.5 * scale
    delta_r = delta if kpi.fail_beyond_margin else 0.0
    evidence: dict[str, float]
    if kpi.scope is Scope.ROLLOUT:
        info, weighted = state.info, state.weighted
        upper = seq.upper_bound(weighted, info, rho, hyp.log_harm_threshold)
        lower = seq.lower_bound(weighted, info, theta, hyp.log_noninferiority_threshold)
        estimate = weighted / info
        log_e_harm = seq.harm_log_evalue(-weighted - delta_r * info, info, rho)
        log_e_ni = seq.noninferiority_log_evalue(weighted, info, delta, theta)
        evidence = {
            "e_harm": math.exp(min(log_e_harm, _MAX_LOG_E)),
            "harm_threshold": math.exp(hyp.log_harm_threshold),
            "e_noninferior": math.exp(min(log_e_ni, _MAX_LOG_E)),
            "noninferior_threshold": math.exp(hyp.log_noninferiority_threshold),
        }
    else:
        estimate = hyp.sign * comparison.difference
        sd = math.sqrt(comparison.variance)
        upper = estimate + hyp.harm_z * sd
        lower = estimate - hyp.noninferiority_z * sd
        evidence = {
            "p_harm": 1.0 - seq.normal_sf((-estimate - delta_r) / sd),
            "p_noninferior": seq.normal_sf((estimate + delta) / sd),
        }
    common["estimate"] = hyp.sign * estimate
    bounds = (hyp.sign * lower, hyp.sign * upper)
    common["ci"] = (min(bounds), max(bounds))
    common["evidence"] = evidence

    if policy.method is Method.SIGMA:
        return _sigma_verdict(hyp, policy, limits, common)
    if upper < -delta_r:
        worse = "beyond the margin" if delta_r else "than the baseline"
        return KpiReport(
            verdict=Verdict.FAIL,
            triggers=kpi.action.value,
            reason=f"candidate worse {worse}: improvement bound {upper:.4g} < {-delta_r:.4g}",
            **common,
        )
    if lower > -delta:
        return KpiReport(
            verdict=Verdict.PASS,
            triggers="none",
            reason=f"non-inferior: improvement bound {lower:.4g} > -{delta:.4g}",
            **common,
        )
    return KpiReport(
        verdict=Verdict.INCONCLUSIVE,
        triggers="none",
        reason=f"not yet shown non-inferior (bound {lower:.4g}, margin -{delta:.4g})",
        **common,
    )


def _sigma_verdict(
    hyp: Hypothesis, policy: Policy, limits: ControlLimits | None, common: dict[str, Any]
) -> KpiReport:
    if limits is None:
        return KpiReport(
            verdict=Verdict.INCONCLUSIVE,
            triggers="none",
            reason=f"building control limits from {policy.sigma.history_windows} baseline windows",
            **common,
        )
    use_ewma = policy.sigma.ewma_lambda is not None
    outside = limits.ewma_outside() if use_ewma else limits.shewhart_outside()
    shown, lo, hi = (
        (limits.ewma, limits.ewma_lcl, limits.ewma_ucl)
        if use_ewma
        else (limits.value, limits.lcl, limits.ucl)
    )
    if outside:
        return KpiReport(
            verdict=Verdict.FAIL,
            triggers=hyp.kpi.action.value,
            reason=f"outside mu +/- {policy.sigma.k:g} sigma: "
            f"{shown:.4g} not in [{lo:.4g}, {hi:.4g}]",
            **common,
        )
    return KpiReport(
        verdict=Verdict.PASS,
        triggers="none",
        reason=f"within mu +/- {policy.sigma.k:g} sigma: {shown:.4g} in [{lo:.4g}, {hi:.4g}]",
        **common,
    )


def _samples(arm: ArmData | None) -> float:
    return 0.0 if arm is None else arm.samples


def _value(arm: ArmData | None, kpi: Kpi) -> float | None:
    if arm is None:
        return None
    try:
        return value_of(arm, kpi.quantile)
    except NotComparable:
        return None


def _window_samples(obs: Observation | None) -> tuple[float, float]:
    if obs is None:
        return (0.0, 0.0)
    return (_samples(obs.candidate), _samples(obs.baseline))


# --- the scorer: all hypotheses, the stage's rules --------------------------------------------


def _stage(plan: GatePlan, traffic: float) -> Stage:
    # A stage the policy does not list (replaying someone else's windows) soaks one look.
    return plan.policy.stage_for(traffic) or Stage(traffic=traffic, soak=1.0, interval=1.0)


def judge(plan: GatePlan, state: RolloutState, window: Window) -> tuple[RolloutState, GateDecision]:
    """Fold one window into the rollout and decide. Never raises on data problems: it holds."""
    policy = plan.policy
    if state.ended is not None:
        ended = state.ended
        repeat = replace(
            ended,
            window=window.index,
            stage=window.stage,
            reasons=(f"rollout already ended at window {ended.window} ({ended.decision})",),
        )
        return replace(state, windows=state.windows + 1), repeat

    new_stage = window.stage != state.stage
    look = 1 if new_stage else state.look + 1
    holds = 0 if new_stage else state.holds
    stage = _stage(plan, window.stage)
    last_stage = window.stage >= 100

    kpi_states = dict(state.kpis)
    reports: dict[str, KpiReport] = {}
    for hyp in plan.hypotheses:
        previous = kpi_states.get(hyp.key, KpiState())
        obs = window.kpis.get(hyp.key)
        if window.stale:
            reports[hyp.key] = _no_evidence(hyp, "stale evidence: " + (window.note or "too old"))
            continue
        updated, comparison, why_not = _update(hyp, policy, previous, obs, last_stage)
        kpi_states[hyp.key] = updated
        if comparison is None:
            reports[hyp.key] = _no_evidence(hyp, why_not)
            continue
        reports[hyp.key] = _classify(hyp, policy, updated, comparison, _window_samples(obs))

    decision, reasons, suspend = _score(plan, reports, window, stage, look)
    alerts = tuple(
        f"{key}: {r.reason}" for key, r in reports.items() if r.triggers == Action.ALERT.value
    )
    soaked = look >= stage.looks
    if decision is Decision.HOLD and soaked:
        holds += 1
        if holds > policy.max_holds:
            timeout = f"no decision after {holds - 1} holds past the soak (max_holds)"
            if policy.on_max_holds is TimeoutAction.ROLLBACK:
                decision, reasons = Decision.ROLLBACK, (*reasons, timeout + ": rolling back")
            else:
                suspend, reasons = True, (*reasons, timeout + ": suspended for an operator")
    final = decision is Decision.ROLLBACK or (decision is Decision.PROMOTE and last_stage)
    result = GateDecision(
        window=window.index,
        stage=window.stage,
        decision=decision,
        reasons=reasons,
        kpis=reports,
        look=look,
        holds=holds,
        suspend=suspend,
        final=final,
        alerts=alerts,
    )
    new_state = RolloutState(
        windows=state.windows + 1,
        stage=window.stage,
        look=look,
        holds=holds,
        ended=result if final else None,
        kpis=kpi_states,
    )
    return new_state, result


def _no_evidence(hyp: Hypothesis, reason: str) -> KpiReport:
    return KpiReport(
        key=hyp.key,
        category=hyp.kpi.category.value,
        verdict=Verdict.INCONCLUSIVE,
        triggers="none",
        reason=reason,
    )


def _score(
    plan: GatePlan, reports: Mapping[str, KpiReport], window: Window, stage: Stage, look: int
) -> tuple[Decision, tuple[str, ...], bool]:
    failing = {r.key: r for r in reports.values() if r.verdict is Verdict.FAIL}
    rollbacks = [f"{k}: {r.reason}" for k, r in failing.items() if r.triggers == "rollback"]
    if rollbacks:
        return Decision.ROLLBACK, tuple(rollbacks), False
    if window.stale:
        return Decision.HOLD, ("stale evidence: " + (window.note or "too old"),), False
    holding = [f"{k}: {r.reason}" for k, r in failing.items() if r.triggers == "hold"]
    if holding:
        return Decision.HOLD, tuple(holding), False
    if look < stage.looks:
        soaking = f"soaking: look {look} of {stage.looks} at {stage.traffic:g}%"
        return Decision.HOLD, (soaking,), False
    gating = [h.key for h in plan.hypotheses if h.kpi.is_gating]
    if stage.promote_when == "no_harm":
        # Judged means past burn-in with data this window; a failure would have returned above.
        waiting = [f"{k}: {reports[k].reason}" for k in gating if reports[k].ci is None]
        if not waiting:
            return Decision.PROMOTE, ("no gating KPI shows harm (stage gate: no_harm)",), False
        return Decision.HOLD, tuple(waiting), False
    waiting = [
        f"{k}: {reports[k].reason}" for k in gating if reports[k].verdict is not Verdict.PASS
    ]
    if not waiting:
        return Decision.PROMOTE, ("every gating KPI shown non-inferior",), False
    return Decision.HOLD, tuple(waiting), False

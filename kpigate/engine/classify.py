"""The classifier: one KPI hypothesis, one window -> updated evidence and a verdict.

Rollout-scope KPIs accumulate window-stratified sums and are judged by the anytime-valid tests of
sequential.py; window-scope KPIs are judged on the latest window alone; `method: sigma` judges by
the control limits instead. Missing, stale or uncomparable data give an inconclusive verdict
with the reason, never a pass or a fail. A KPI still short of non-inferiority says how many more
samples it needs and about how long that takes at the current rate (forecast_eta.certify_eta),
in its reason and as data (`needs_samples`, `eta_seconds`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from kpigate.engine import sequential as seq
from kpigate.engine.control import ControlLimits, center_and_spread, control_limits, ewma_update
from kpigate.engine.evidence import (
    ArmData,
    Comparison,
    NotComparable,
    Observation,
    Rate,
    compare,
    value_of,
)
from kpigate.engine.forecast_eta import certify_eta
from kpigate.engine.plan import (
    Cause,
    Hypothesis,
    KpiReport,
    KpiState,
    Scales,
    Verdict,
    pooled_tau2,
    scales_of,
)
from kpigate.policy import Kpi, Method, Policy, Scope

_DISPLAY_EWMA_LAMBDA = 0.3
_MAX_LOG_E = 690.0  # e-values are reported up to ~1e300
# A window whose variance is outside this range (absurd counts such as 1e308 trials) would make
# the running sums overflow; it is refused as not comparable instead.
_MIN_VARIANCE, _MAX_VARIANCE = 1e-200, 1e200


def _reference(kpi: Kpi, state: KpiState) -> float | None:
    """The baseline value a relative margin scales with: the policy's, else the evidence's."""
    if kpi.baseline_mean is not None or state.baseline is None:
        return kpi.baseline_mean
    try:
        return value_of(state.baseline, kpi.quantile, kpi.threshold)
    except NotComparable:
        return None


def _add(total: ArmData | None, more: ArmData) -> ArmData:
    return more if total is None else total + more  # type: ignore[operator]


def design_effect_of(state: KpiState, baseline: ArmData | None) -> float:
    """The design effect a look scales its KPI's evidence by, chosen before the look's candidate
    data are seen: the larger of the baseline's current one and the candidate's as of its
    previous window, floored at 1 (never below the binomial model). At the first look only the
    baseline's is known. A variance that grew when the candidate's current data looked worse
    would weigh its bad windows less; this one cannot.
    """
    current = baseline.deff if isinstance(baseline, Rate) else None
    return max(1.0, current or 0.0, state.candidate_deff or 0.0)


@dataclass(frozen=True, slots=True)
class Unused:
    """Why a window's data for one KPI added no evidence."""

    reason: str
    cause: Cause = Cause.NO_DATA


@dataclass(frozen=True, slots=True)
class Sizes:
    """A KPI's margin in its own units and the test scales that follow from it."""

    margin: float
    scales: Scales


def sizes_of(kpi: Kpi, policy: Policy, reference: float | None) -> Sizes | Unused:
    """The margin (absolute, or relative to the baseline value `reference`) and the scales of
    the harm and non-inferiority tests; Unused says why there are none. The gate and the
    forecast (forecast_sim.kpi_models) both size their tests here."""
    if kpi.margin_type == "absolute":
        margin = kpi.margin
    elif reference is None:
        return Unused("relative margin has no baseline value yet")
    else:
        margin = kpi.margin * abs(reference)
    scales = scales_of(kpi, policy, margin)
    if scales is None:
        # A relative margin of a baseline at exactly 0 leaves no harm scale to test with.
        return Unused(
            f"the relative margin is 0 because the baseline's value is 0; give `detect` or an "
            f"absolute margin for {kpi.name}"
        )
    return Sizes(margin, scales)


def _comparison(
    hyp: Hypothesis, candidate: ArmData, baseline: ArmData, earlier: ArmData | None
) -> Comparison | Unused:
    """compare() as every window of this KPI uses it, or why it cannot; the one place both a
    rollout window and a calibration window are read, so the two are on one scale."""
    kpi = hyp.kpi
    try:
        comparison = compare(
            candidate,
            baseline,
            kpi.quantile,
            earlier,
            span=kpi.margin if kpi.margin_type == "absolute" and kpi.margin > 0 else None,
            threshold=kpi.threshold,
            contrast=hyp.contrast,
        )
    except (NotComparable, ValueError, OverflowError, ZeroDivisionError) as exc:
        return Unused(f"not comparable: {exc}")
    if not (_MIN_VARIANCE < comparison.variance < _MAX_VARIANCE) or not math.isfinite(
        comparison.difference
    ):
        return Unused("not comparable: the window's variance is zero or out of range")
    return comparison


def between_window_variance(state: KpiState) -> float:
    """tau^2 for the next rollout window: the calibration windows and the rollout's earlier
    windows pooled as two groups, each around its own mean (plan.pooled_tau2)."""
    return pooled_tau2((state.calibration, state.spread))


def calibrate(hyp: Hypothesis, state: KpiState, obs: Observation | None) -> KpiState:
    """Take one A/A calibration window (two halves of the baseline, before the rollout) into
    the calibration spread: the halves' difference and its model variance, read exactly as a
    rollout window is, with the calibration's own earlier windows as the reference. Nothing
    else changes: no evidence, no look, no arm totals. A window that cannot be compared (or a
    window-scope KPI, which keeps the model variance) leaves the state as it was."""
    if hyp.kpi.scope is not Scope.ROLLOUT or obs is None:
        return state
    if obs.candidate is None or obs.baseline is None:
        return state
    comparison = _comparison(hyp, obs.candidate, obs.baseline, state.calibration_reference)
    if isinstance(comparison, Unused):
        return state
    both = _add(obs.candidate, obs.baseline)
    try:
        reference = _add(state.calibration_reference, both)
    except ValueError:  # histograms whose buckets changed: keep the earlier reference
        return state
    return replace(
        state,
        calibration=state.calibration.add(comparison.difference, comparison.variance),
        calibration_reference=reference,
    )


def update(
    hyp: Hypothesis, policy: Policy, state: KpiState, obs: Observation | None, last_stage: bool
) -> tuple[KpiState, Comparison | Unused]:
    """Add one window's data to the running sums; say why not if it cannot be used."""
    if obs is None or obs.candidate is None:
        return state, Unused("no candidate data in this window")
    reference = obs.baseline
    if reference is None:
        if last_stage and policy.holdback == 0 and state.baseline is not None:
            reference = state.baseline  # no concurrent baseline: its recorded history
        else:
            return state, Unused("no baseline data in this window")
    earlier = None
    if state.candidate is not None and state.baseline is not None:
        earlier = _add(state.candidate, state.baseline)
    kpi = hyp.kpi
    comparison = _comparison(hyp, obs.candidate, reference, earlier)
    if isinstance(comparison, Unused):
        return state, comparison
    # Accumulated evidence uses the window's model variance plus the between-window component
    # estimated from earlier windows only (the calibration windows before the rollout and the
    # rollout's earlier windows), so it is known before the window is seen (predictable). A
    # window-scope KPI asks whether this window alone differs: a transient spike is what it
    # is for, and must not widen the windows after it.
    variance = comparison.variance
    if kpi.scope is Scope.ROLLOUT:
        variance += between_window_variance(state)
    # Users recur and are what is randomised: the rollout-to-date design effect scales every
    # window's variance alike (evidence.Rate.deff), so it divides the running sums at the look
    # (classify()) rather than weighing this window against the earlier ones.
    deff = design_effect_of(state, obs.baseline)
    candidate_deff = obs.candidate.deff if isinstance(obs.candidate, Rate) else None
    improvement = hyp.sign * comparison.difference
    history = state.history
    if obs.baseline is not None and len(history) < 64:
        history = (*history, comparison.baseline)
    updated = replace(
        state,
        info=state.info + 1.0 / variance,
        weighted=state.weighted + improvement / variance,
        candidate=_add(state.candidate, obs.candidate),
        baseline=state.baseline if obs.baseline is None else _add(state.baseline, obs.baseline),
        history=history,
        ewma=ewma_update(
            state.ewma, comparison.candidate, policy.sigma.ewma_lambda or _DISPLAY_EWMA_LAMBDA
        ),
        looks=state.looks + 1,
        spread=state.spread.add(comparison.difference, comparison.variance),
        deff=deff,
        candidate_deff=state.candidate_deff if candidate_deff is None else candidate_deff,
    )
    return updated, replace(comparison, variance=variance * deff)


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


def classify(
    hyp: Hypothesis,
    policy: Policy,
    state: KpiState,
    comparison: Comparison,
    window_scope_samples: tuple[float, float],
    interval: float | None = None,
) -> KpiReport:
    """The KPI's verdict after this window; `interval` (seconds between looks at this stage)
    turns the samples a hold still needs into an expected time."""
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
        "calibration_windows": state.calibration.windows if kpi.scope is Scope.ROLLOUT else 0,
    }
    sizes = sizes_of(kpi, policy, _reference(kpi, state))
    if isinstance(sizes, Unused):
        return KpiReport(
            verdict=Verdict.INCONCLUSIVE,
            triggers="none",
            reason=sizes.reason,
            cause=sizes.cause,
            **common,
        )
    delta, scales = sizes.margin, sizes.scales
    common["margin"] = delta
    if min(samples) < kpi.min_samples:
        arm = "candidate" if samples[0] < samples[1] else "baseline"
        return KpiReport(
            verdict=Verdict.INCONCLUSIVE,
            triggers="none",
            reason=f"burn-in: {min(samples):g} of {kpi.min_samples} {arm} samples",
            cause=Cause.BURN_IN,
            **common,
        )

    rho, theta, delta_r = scales.rho, scales.theta, scales.delta_r
    evidence: dict[str, float]
    if kpi.scope is Scope.ROLLOUT:
        info, weighted = state.info / state.deff, state.weighted / state.deff
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
            # p-values of "no harm" and of "worse by the margin": small means evidence.
            "p_harm": seq.normal_sf((-estimate - delta_r) / sd),
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
            reason=f"candidate worse {worse}: improvement bound {upper:.4g} < {_num(-delta_r)}",
            cause=Cause.HARM,
            **common,
        )
    if lower > -delta:
        return KpiReport(
            verdict=Verdict.PASS,
            triggers="none",
            reason=f"non-inferior: improvement bound {lower:.4g} > {_num(-delta)}",
            cause=Cause.CERTIFIED,
            **common,
        )
    reason = f"not yet shown non-inferior (bound {lower:.4g}, margin {_num(-delta)})"
    if kpi.scope is Scope.ROLLOUT:
        # The evidence as the bounds above read it (`info`, `weighted`): the information one
        # more candidate sample adds so far, and the candidate samples a look brings now.
        per_sample = info / samples[0] if samples[0] > 0 else 0.0
        rate = window_scope_samples[0] / interval if interval else 0.0
        eta = certify_eta(
            info,
            weighted,
            delta,
            theta,
            hyp.log_noninferiority_threshold,
            per_sample,
            rate,
        )
        common["needs_samples"] = eta.samples if not math.isnan(eta.samples) else None
        common["eta_seconds"] = eta.seconds if math.isfinite(eta.seconds) else None
        kind = "labeled candidate samples" if kpi.needs_labels else "candidate samples"
        reason += f"; {eta.describe(kind)}"
    return KpiReport(
        verdict=Verdict.INCONCLUSIVE,
        triggers="none",
        reason=reason,
        **common,
    )


def _num(value: float) -> str:
    """A bound for a reason: 4 significant digits, and 0 never printed as -0."""
    return f"{value:.4g}" if value != 0 else "0"


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
            cause=Cause.HARM,
            **common,
        )
    return KpiReport(
        verdict=Verdict.PASS,
        triggers="none",
        reason=f"within mu +/- {policy.sigma.k:g} sigma: {shown:.4g} in [{lo:.4g}, {hi:.4g}]",
        cause=Cause.CERTIFIED,
        **common,
    )


def _samples(arm: ArmData | None) -> float:
    return 0.0 if arm is None else arm.samples


def _value(arm: ArmData | None, kpi: Kpi) -> float | None:
    if arm is None:
        return None
    try:
        return value_of(arm, kpi.quantile, kpi.threshold)
    except NotComparable:
        return None


def window_samples(obs: Observation | None) -> tuple[float, float]:
    if obs is None:
        return (0.0, 0.0)
    return (_samples(obs.candidate), _samples(obs.baseline))


def no_evidence(hyp: Hypothesis, unused: Unused) -> KpiReport:
    return KpiReport(
        key=hyp.key,
        category=hyp.kpi.category.value,
        verdict=Verdict.INCONCLUSIVE,
        triggers="none",
        reason=unused.reason,
        cause=unused.cause,
    )

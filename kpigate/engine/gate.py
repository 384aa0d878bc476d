"""The gate: fold one window into a rollout's state and decide PROMOTE, HOLD or ROLLBACK.

Pure: `judge(plan, state, window)` returns a new state and a decision and touches nothing
else, so the same code runs in `kpigate replay`, in the evaluate-gate step and in tests.
Per KPI (and segment) the classifier (classify.py) gives a verdict (pass, fail, inconclusive);
the scorer here combines the verdicts with the stage's soak and hold rules, as Kayenta splits
its judge.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace

from kpigate.engine.classify import (
    Unused,
    calibrate,
    classify,
    no_evidence,
    update,
    window_samples,
)
from kpigate.engine.evidence import Window
from kpigate.engine.plan import (
    Cause,
    Decision,
    GateDecision,
    GatePlan,
    KpiReport,
    KpiState,
    RolloutState,
    Verdict,
    compile_plan,
)
from kpigate.policy import Action, Stage, TimeoutAction

__all__ = [
    "Cause",
    "Decision",
    "GateDecision",
    "GatePlan",
    "KpiReport",
    "RolloutState",
    "UnknownStage",
    "Verdict",
    "compile_plan",
    "judge",
]


class UnknownStage(ValueError):
    """A window at a traffic share the policy has no stage for: the evidence is not this
    policy's, and judging it with made-up soak rules would promote after one look."""


def _stage(plan: GatePlan, traffic: float) -> Stage:
    stage = plan.policy.stage_for(traffic)
    if stage is None:
        known = ", ".join(f"{s.traffic:g}%" for s in plan.policy.stages)
        raise UnknownStage(f"a window at stage {traffic:g}%, which the policy lacks ({known})")
    return stage


def _clock(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _waiting(window: Window, stage: float | None = None) -> str:
    """The hold reason while labels mature."""
    where = f" served at {stage:g}%" if stage is not None else ""
    if window.pending is not None:
        return (
            f"waiting for labels: no cohort{where} has matured yet; the cohort of window "
            f"{window.pending.window} matures at {_clock(window.pending.matures_at)}"
        )
    return f"waiting for labels: no cohort{where} has matured yet"


def _calibration(
    plan: GatePlan, state: RolloutState, window: Window
) -> tuple[RolloutState, GateDecision]:
    """Take an A/A calibration window into each KPI's calibration spread, and decide nothing.

    Only before the rollout's first window: a calibration window afterwards would no longer
    precede the candidate's data (the variance would stop being predictable), so it is
    ignored, as are stale ones and every calibration window under `calibration.windows: 0`.
    The decision returned is a HOLD with cause `calibration`, look 0 and no KPI reports: not a
    look, and marked `calibration` so the evaluate-gate step and status skip it.
    """
    used = plan.policy.calibration.windows > 0 and state.windows == 0 and not window.stale
    kpi_states = dict(state.kpis)
    if used:
        for hyp in plan.hypotheses:
            previous = kpi_states.get(hyp.key, KpiState())
            kpi_states[hyp.key] = calibrate(hyp, previous, window.kpis.get(hyp.data))
        counted = state.calibration_windows + 1
        reason = f"calibration window {window.index}: A/A variance only ({counted} so far)"
    else:
        counted = state.calibration_windows
        why = (
            "calibration is off (calibration.windows: 0)"
            if plan.policy.calibration.windows <= 0
            else "it comes after the rollout's first window"
            if state.windows
            else "stale evidence"
        )
        reason = f"calibration window {window.index} ignored: {why}"
    decision = GateDecision(
        window=window.index,
        stage=window.stage,
        decision=Decision.HOLD,
        reasons=(reason,),
        kpis={},
        look=0,
        holds=0,
        cause=Cause.CALIBRATION,
        calibration=True,
    )
    return replace(state, kpis=kpi_states, calibration_windows=counted), decision


def judge(plan: GatePlan, state: RolloutState, window: Window) -> tuple[RolloutState, GateDecision]:
    """Fold one window into the rollout and decide. Never raises on data problems: it holds.

    A calibration window (before the rollout) only feeds the variance: see _calibration."""
    policy = plan.policy
    if window.calibration:
        return _calibration(plan, state, window)
    if state.ended is not None:
        ended = state.ended
        repeat = replace(
            ended,
            window=window.index,
            stage=window.stage,
            reasons=(f"rollout already ended at window {ended.window} ({ended.decision})",),
            cause=Cause.ENDED,
        )
        return replace(state, windows=state.windows + 1), repeat

    new_stage = window.stage != state.stage
    look = 1 if new_stage else state.look + 1
    holds = 0 if new_stage else state.holds
    stage = _stage(plan, window.stage)
    last_stage = window.stage >= 100

    # With delayed labels, label KPIs read the window's matured cohort, each cohort once.
    cohort = window.cohort if policy.labels is not None else None
    fresh_cohort = cohort is not None and (
        state.last_cohort is None or cohort.window > state.last_cohort
    )
    kpi_states = dict(state.kpis)
    reports: dict[str, KpiReport] = {}
    for hyp in plan.hypotheses:
        previous = kpi_states.get(hyp.key, KpiState())
        obs = window.kpis.get(hyp.data)
        if window.stale:
            stale = Unused("stale evidence: " + (window.note or "too old"), Cause.STALE)
            reports[hyp.key] = no_evidence(hyp, stale)
            continue
        if policy.labels is not None and hyp.kpi.needs_labels and not fresh_cohort:
            if cohort is None:
                unused = Unused(_waiting(window), Cause.WAITING_FOR_LABELS)
            else:
                unused = Unused(
                    f"cohort of window {cohort.window} comes after cohort {state.last_cohort}: "
                    "a cohort is judged once"
                )
            reports[hyp.key] = no_evidence(hyp, unused)
            continue
        updated, comparison = update(hyp, policy, previous, obs, last_stage)
        kpi_states[hyp.key] = updated
        if isinstance(comparison, Unused):
            reports[hyp.key] = no_evidence(hyp, comparison)
            continue
        reports[hyp.key] = classify(
            hyp, policy, updated, comparison, window_samples(obs), interval=stage.interval
        )

    last_cohort, cohort_stages = state.last_cohort, state.cohort_stages
    if cohort is not None and fresh_cohort:
        last_cohort = cohort.window
        if cohort.stage is not None:
            cohort_stages = cohort_stages | {cohort.stage}
    decision, reasons, cause = _score(plan, reports, window, stage, look)
    if (
        decision is Decision.PROMOTE
        and policy.labels is not None
        and window.stage not in cohort_stages
        and any(h.kpi.needs_labels and h.kpi.is_gating for h in plan.hypotheses)
    ):
        # Promotion rests on this stage's own matured cohorts, never on earlier stages' alone.
        decision, reasons = Decision.HOLD, (_waiting(window, window.stage),)
        cause = Cause.WAITING_FOR_LABELS
    suspend = False
    alerts = tuple(
        f"{key}: {r.reason}" for key, r in reports.items() if r.triggers == Action.ALERT.value
    )
    soaked = look >= stage.looks
    if decision is Decision.HOLD and soaked:
        holds += 1
        if holds > policy.max_holds:
            timeout = f"no decision after {holds - 1} holds past the soak (max_holds)"
            cause = Cause.TIMEOUT
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
        cause=cause,
    )
    new_state = RolloutState(
        windows=state.windows + 1,
        stage=window.stage,
        look=look,
        holds=holds,
        ended=result if final else None,
        kpis=kpi_states,
        last_cohort=last_cohort,
        cohort_stages=cohort_stages,
        calibration_windows=state.calibration_windows,
    )
    return new_state, result


def _score(
    plan: GatePlan, reports: Mapping[str, KpiReport], window: Window, stage: Stage, look: int
) -> tuple[Decision, tuple[str, ...], Cause]:
    failing = {r.key: r for r in reports.values() if r.verdict is Verdict.FAIL}
    rollbacks = [f"{k}: {r.reason}" for k, r in failing.items() if r.triggers == "rollback"]
    if rollbacks:
        return Decision.ROLLBACK, tuple(rollbacks), Cause.HARM
    if window.stale:
        return Decision.HOLD, ("stale evidence: " + (window.note or "too old"),), Cause.STALE
    holding = [f"{k}: {r.reason}" for k, r in failing.items() if r.triggers == "hold"]
    if holding:
        return Decision.HOLD, tuple(holding), Cause.HARM
    if look < stage.looks:
        soaking = f"soaking: look {look} of {stage.looks} at {stage.traffic:g}%"
        return Decision.HOLD, (soaking,), Cause.SOAKING
    gating = [reports[h.key] for h in plan.hypotheses if h.kpi.is_gating]
    if stage.promote_when == "no_harm":
        # Judged means past burn-in with data this window; a failure would have returned above.
        waiting = [r for r in gating if r.ci is None]
        if not waiting:
            return (
                Decision.PROMOTE,
                ("no gating KPI shows harm (stage gate: no_harm)",),
                (Cause.NO_HARM),
            )
    else:
        waiting = [r for r in gating if r.verdict is not Verdict.PASS]
        if not waiting:
            return Decision.PROMOTE, ("every gating KPI shown non-inferior",), Cause.CERTIFIED
    return Decision.HOLD, tuple(f"{r.key}: {r.reason}" for r in waiting), _blocking(waiting)


# When several KPIs keep a stage waiting, the decision names the most basic reason first.
_BLOCKING_ORDER = (Cause.STALE, Cause.NO_DATA, Cause.WAITING_FOR_LABELS, Cause.BURN_IN)


def _blocking(waiting: list[KpiReport]) -> Cause:
    causes = {r.cause for r in waiting}
    return next((c for c in _BLOCKING_ORDER if c in causes), Cause.EVIDENCE)

"""The gate: fold one window into a rollout's state and decide PROMOTE, HOLD or ROLLBACK.

Pure: `judge(plan, state, window)` returns a new state and a decision and touches nothing
else, so the same code runs in `kpigate replay`, in the evaluate-gate step and in tests.
Per KPI (and segment) the classifier (classify.py) gives a verdict (pass, fail, inconclusive);
the scorer here combines the verdicts with the stage's soak and hold rules, as Kayenta splits
its judge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from kpigate.engine.classify import classify, no_evidence, update, window_samples
from kpigate.engine.evidence import Window
from kpigate.engine.plan import (
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
    "Decision",
    "GateDecision",
    "GatePlan",
    "KpiReport",
    "RolloutState",
    "Verdict",
    "compile_plan",
    "judge",
]


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
            reports[hyp.key] = no_evidence(hyp, "stale evidence: " + (window.note or "too old"))
            continue
        updated, comparison, why_not = update(hyp, policy, previous, obs, last_stage)
        kpi_states[hyp.key] = updated
        if comparison is None:
            reports[hyp.key] = no_evidence(hyp, why_not)
            continue
        reports[hyp.key] = classify(hyp, policy, updated, comparison, window_samples(obs))

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

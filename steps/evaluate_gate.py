"""evaluate-gate: judge everything collected so far in this rollout; PROMOTE, HOLD or ROLLBACK.

Replays the rollout's evidence (every window of every stage) through the decision engine, the
same code as `kpigate replay`, and writes the latest decision with its explanation. The step
is a pure function of the evidence, so a retry or rerun gives the same answer.

Outputs (files under --out-dir): decision (promote|hold|rollback), cause (the decision's cause:
harm, soaking, timeout, operator, ...), suspend (true|false), looks (the windows this stage needs
for one more look, for the HOLD loop). With --operator promote|rollback (after a suspend), the
decision is the operator's, recorded with cause `operator`. The explanation (every
KPI's verdict and bounds) is printed as one JSON line in the log.
With --model-name, the decision is also notified (a hold on a failing KPI as a warning, a stage
passed as info, a rollback as critical; routine soaking looks send nothing), through Slack,
PagerDuty or the console as the environment says (kpigate/notify/factory.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

from kpigate.engine import Cause, Decision, GateDecision
from kpigate.evidence_record import WindowRecord
from kpigate.policy import Policy
from kpigate.replay import LineError, Replayer, decision_record, replay_records
from kpigate.steps.common import (
    DONE,
    StepError,
    read_policy,
    say,
    step_main,
    write_outputs,
)
from kpigate.steps.inputs import (
    BaselineVersion,
    CandidateVersion,
    EvidenceUri,
    ModelName,
    OutDir,
    PolicyFile,
    RolloutId,
    TrackingUri,
)
from kpigate.steps.soak_and_collect import stage_windows
from kpigate.steps.spec import StepInputs, add_flags, field, parse
from kpigate.store import open_store


def judge_evidence(policy: Policy, records: Sequence[WindowRecord], stage: float) -> GateDecision:
    """The latest decision over all windows; HOLD when this stage has no window yet."""
    replayer = Replayer(policy)
    decision: GateDecision | None = None
    for _, _, latest in replay_records(records, replayer):
        if not latest.calibration:  # A/A windows before the rollout decide nothing
            decision = latest
    if decision is None or decision.stage != stage:
        if decision is not None and decision.final:
            return decision  # the rollout already ended (e.g. rolled back earlier)
        return GateDecision(
            window=0 if decision is None else decision.window,
            stage=stage,
            decision=Decision.HOLD,
            reasons=(f"no evidence collected at {stage:g}% yet",),
            kpis={},
            look=0,
            holds=0,
        )
    return decision


class EvaluateGateInputs(StepInputs):
    policy: PolicyFile
    evidence: EvidenceUri
    stage: float = field(help="traffic percent of the stage", argo="{{inputs.parameters.stage}}")
    out_dir: OutDir
    model_name: ModelName = ""  # notify decisions about this model, and record them
    model_version: CandidateVersion
    baseline_version: BaselineVersion
    rollout_id: RolloutId
    grant_from: int = field(
        0,
        help="looks when an operator granted more (Argo)",
        argo="{{inputs.parameters.grant-from}}",
    )
    grant: int = field(
        0,
        help="looks granted: no suspend until they are taken",
        argo="{{inputs.parameters.grant}}",
    )
    # Passed only by the template `operator-decision`, after a suspend (wait-for-operator).
    operator: Literal["", "promote", "rollback"] = field(
        "",
        help="an operator's choice at a suspend: recorded as the stage's decision with cause "
        "operator, instead of the gate's",
    )
    tracking_uri: TrackingUri


AT_A_SUSPEND = "by an operator at the suspend"


def operator_decision(judged: GateDecision, action: str, by: str = AT_A_SUSPEND) -> GateDecision:
    """An operator's promote or rollback as the stage's decision: the gate's evidence (its
    KPIs, its window) kept, the cause `operator`, so the trail, the report and the
    notifications never present it as the gate's. Also the local runner's `kpigate abort` and
    `promote` (kpigate/runner.py), with who and why as `by`."""
    chosen = Decision(action)
    what = "stage passed" if chosen is Decision.PROMOTE else "rolled back"
    return replace(
        judged,
        decision=chosen,
        reasons=(f"{what} {by}", *judged.reasons),
        suspend=False,
        final=chosen is Decision.ROLLBACK or judged.stage >= 100,
        cause=Cause.OPERATOR,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, EvaluateGateInputs)


def suspends(decision: GateDecision, stage_windows: int, grant_from: int, grant: int) -> bool:
    """Whether to ask the operator: as the decision says, except during looks an operator
    granted at an earlier suspend (`continue` for `grant` more looks, from `grant_from`, the
    `looks` output of that suspend's evaluation: windows + 1)."""
    if grant <= 0:
        return decision.suspend
    return decision.suspend and stage_windows >= grant_from - 1 + grant


def run(namespace: argparse.Namespace) -> int:
    from kpigate.audit import audit_key_from_env

    args: EvaluateGateInputs = parse(EvaluateGateInputs, namespace)
    audit_key_from_env()  # a key too short or unreadable: exit 2 now, not after the decision
    policy = read_policy(args.policy)
    records = open_store(args.evidence, args.tracking_uri).read()
    try:
        decision = judge_evidence(policy, records, args.stage)
    except LineError as exc:
        raise StepError(f"evidence {args.evidence} is corrupt: {exc}") from None
    if args.operator:
        decision = operator_decision(decision, args.operator)
    windows = stage_windows(records, args.stage)  # looks so far: no calibration window
    write_outputs(
        args.out_dir,
        decision=decision.decision.value,
        cause=decision.cause.value,
        suspend=str(suspends(decision, windows, args.grant_from, args.grant)).lower(),
        looks=windows + 1,
    )
    # The explanation goes to the log only: as an output it bloated the workflow status.
    say(json.dumps(decision_record("", decision), separators=(",", ":")))
    say(f"{decision.decision.value.upper()} at {args.stage:g}% (window {decision.window}):")
    for reason in decision.reasons:
        say(f"  {reason}")
    if args.model_name and args.model_version and args.evidence.startswith("mlflow://"):
        record(args, policy, decision, records)
    elif args.model_name:
        notify(args, decision)
    return DONE


def record(
    args: EvaluateGateInputs,
    policy: Policy,
    decision: GateDecision,
    records: Sequence[WindowRecord],
) -> None:
    """The decision, now, into the rollout's trail beside the evidence, and notified; a retry
    finds it there and records nothing twice. A registry that fails here fails the step by its
    kind (a retry recomputes the same decision): the trail must not miss a decision."""
    from kpigate.audit import default_actor, policy_hash
    from kpigate.journal import Journal
    from kpigate.notify import dispatcher_from_env
    from kpigate.registry.mlflow import MlflowRegistry
    from kpigate.steps.trail import judged, key, rollout_trail

    rollout = args.rollout_id or f"{args.model_name}-{args.model_version}"
    registry = MlflowRegistry(args.tracking_uri)
    with rollout_trail(registry, args.model_name, args.model_version, rollout) as trail:
        if key(decision) in judged(trail):
            say(f"window {decision.window} at {decision.stage:g}% is already in the audit trail")
            return
        actor = default_actor()
        notifier = dispatcher_from_env(trail=trail, actor=actor)
        journal = Journal(trail, notifier, policy, policy_hash(args.policy), args.model_name,
                          rollout, actor, baseline_version=args.baseline_version or None,
                          candidate_version=args.model_version)  # fmt: skip
        window = next((r for r in reversed(records) if r.window == decision.window), None)
        journal.decision(decision, None if window is None else window.as_json())
        journal.flush()


def notify(args: EvaluateGateInputs, decision: GateDecision) -> None:
    """Never fails the step: the decision is already written."""
    from kpigate.notify import dispatcher_from_env, notify_decision

    rollout = args.rollout_id or f"{args.model_name}-{args.model_version}"
    try:
        dispatcher = dispatcher_from_env()
        notify_decision(dispatcher, rollout, decision, args.model_name, args.model_version)
        dispatcher.flush()
    except Exception as exc:
        say(f"warning: notification failed ({type(exc).__name__}: {exc})")


def main(argv: Sequence[str] | None = None) -> int:
    return step_main("evaluate_gate", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())

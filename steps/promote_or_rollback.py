"""promote-or-rollback: finish the rollout one way or the other.

promote   the candidate takes all traffic and the registry's `champion` alias moves to it
          (one alias update: the alias is never half-moved);
rollback  all traffic back to the baseline (weight 0), the candidate detached from serving,
          and the version tagged `kpigate.rollout=rolled_back` with the reason.

Both are idempotent: the workflow's exit handler may roll back a rollout that a gate already
rolled back, and a retry repeats nothing harmful.

Then the record: with --policy, the rollout's decisions are rebuilt from its evidence (the gate
is a pure function of it), written with this action to a hash-chained audit trail and attached
to the version in MLflow; the outcome is notified (Slack, PagerDuty or the console, from the
environment: see kpigate/notify/factory.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from kpigate.backends.base import TrafficBackend
from kpigate.backends.cli import BackendInputs, settings_from_args
from kpigate.backends.factory import make_backend
from kpigate.registry.base import CHAMPION, Registry
from kpigate.steps.common import DONE, ROLLED_BACK_BY_TAG, StepError, say, step_main
from kpigate.steps.inputs import (
    BaselineVersion,
    CandidateVersion,
    EvidenceUri,
    ModelName,
    PolicyFile,
    RolloutId,
    TrackingUri,
)
from kpigate.steps.spec import add_flags, field, parse
from kpigate.store import StoreError, open_store

OUTCOME_TAG = "kpigate.rollout"
REASON_TAG = "kpigate.rollout_reason"


@dataclass(frozen=True)
class Outcome:
    action: str
    version: str
    reason: str


def promote(backend: TrafficBackend, registry: Registry, name: str, version: str) -> Outcome:
    backend.set_mirror(False)
    backend.set_weight(100.0)
    registry.set_alias(name, CHAMPION, version)
    registry.set_tag(name, version, OUTCOME_TAG, "promoted")
    # A serving layer that resolves aliases itself (the kpigate router) switches its baseline
    # to the new champion; Kubernetes backends keep the candidate at 100% until redeployed.
    promoted = getattr(backend, "promoted", None)
    if callable(promoted):
        promoted()
    return Outcome("promote", version, f"version {version} is now {CHAMPION}")


def rollback(
    backend: TrafficBackend, registry: Registry | None, name: str, version: str, reason: str
) -> Outcome:
    # Traffic first: the baseline must serve everything even if the registry is down.
    backend.set_weight(0.0)
    backend.detach()
    if registry is not None and version:
        tag_rolled_back(registry, name, version, reason)
    return Outcome("rollback", version, reason)


def tag_rolled_back(
    registry: Registry, name: str, version: str, reason: str, rollout_id: str = ""
) -> None:
    registry.set_tag(name, version, OUTCOME_TAG, "rolled_back")
    registry.set_tag(name, version, REASON_TAG, reason[:4000])
    if rollout_id:
        registry.set_tag(name, version, ROLLED_BACK_BY_TAG, rollout_id)


def last_reason(evidence_uri: str, tracking_uri: str | None) -> str:
    """The reason of the last ROLLBACK/HOLD in the evidence, if it can be read."""
    if not evidence_uri:
        return "rolled back"
    try:
        records = open_store(evidence_uri, tracking_uri).read()
    except StoreError:
        return "rolled back (evidence unreadable)"
    return f"rolled back after window {records[-1].window}" if records else "rolled back"


class PromoteOrRollbackInputs(BackendInputs):
    action: Literal["promote", "rollback"] = field(
        help="promote: all traffic and the champion alias; rollback: weight 0, detach, tags",
        argo="{{inputs.parameters.action}}",
    )
    model_name: ModelName
    model_version: CandidateVersion
    evidence: EvidenceUri = ""
    reason: str = field("", help="why (default: from the evidence)")
    policy: PolicyFile = ""  # to record the rollout in its audit trail
    rollout_id: RolloutId
    baseline_version: BaselineVersion
    tracking_uri: TrackingUri
    # Passed only by the exit handler.
    if_deployed: bool = field(
        False,
        help="roll back only when --model-version names a deployed version (the exit handler)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, PromoteOrRollbackInputs)


def nothing_deployed(version: str) -> bool:
    """An empty version, or Argo's unresolved `{{workflow.outputs.parameters.deployed}}` (left
    as text when no deploy-stage ran: workflow/common/util.go SubstituteParams)."""
    return not version.strip() or version.lstrip().startswith("{{")


def run(namespace: argparse.Namespace) -> int:
    args: PromoteOrRollbackInputs = parse(PromoteOrRollbackInputs, namespace)
    if args.if_deployed and nothing_deployed(args.model_version):
        say("nothing was deployed by this rollout: nothing to roll back")
        return DONE
    from kpigate.registry.mlflow import MlflowRegistry

    if args.action == "promote" and not args.model_version:
        raise StepError("promote needs --model-version")
    backend = make_backend(settings_from_args(args, default_resource=args.model_name))
    if args.action == "promote":
        registry = MlflowRegistry(args.tracking_uri)
        outcome = promote(backend, registry, args.model_name, args.model_version)
    else:
        reason = args.reason or last_reason(args.evidence, args.tracking_uri)
        # Traffic first, before the registry is even reached: with MLflow down the baseline
        # still takes all traffic, and the retry (exit 1) only has the tags left to write.
        outcome = rollback(backend, None, args.model_name, args.model_version, reason)
        registry = MlflowRegistry(args.tracking_uri)
        if args.model_version:
            tag_rolled_back(registry, args.model_name, args.model_version, reason, args.rollout_id)
    say(f"{outcome.action.upper()}: {outcome.reason}")
    if args.policy and args.model_version:
        record(args, registry, outcome)
    return DONE


def record(args: PromoteOrRollbackInputs, registry: Registry, outcome: Outcome) -> None:
    """Audit trail and notification; a failure here is reported, never undoes the action.

    With MLflow evidence the trail is the one evaluate-gate appended to as it decided
    (steps/trail.py); windows it lacks (a local or file-evidence rollout, a lost upload) are
    replayed from the evidence now and marked `replayed`, with this moment's time."""
    from kpigate.audit import decision_event, default_actor, policy_hash
    from kpigate.journal import Journal
    from kpigate.notify import Severity, dispatcher_from_env
    from kpigate.policy import load_policy
    from kpigate.steps.evaluate_gate import judge_evidence
    from kpigate.steps.trail import judged, key, rollout_trail, scratch_trail

    rollout_id = args.rollout_id or f"{args.model_name}-{args.model_version}"
    try:
        policy = load_policy(args.policy)
        digest = policy_hash(args.policy)
        records = open_store(args.evidence, args.tracking_uri).read() if args.evidence else []
        kept = args.evidence.startswith("mlflow://")
        opened = (rollout_trail if kept else scratch_trail)(
            registry, args.model_name, args.model_version, rollout_id
        )
        with opened as trail:
            actor = default_actor()
            done = judged(trail)
            replayed = 0
            for end in range(1, len(records) + 1):
                decision = judge_evidence(policy, records[:end], float(records[end - 1].stage))
                if key(decision) in done:
                    continue
                done.add(key(decision))
                event = decision_event(
                    rollout_id,
                    decision,
                    policy,
                    digest,
                    args.model_name,
                    args.baseline_version or None,
                    args.model_version,
                    actor,
                    window=records[end - 1].as_json(),
                )
                trail.append({**event, "replayed": True})  # fmt: skip
                replayed += 1
            notifier = dispatcher_from_env(trail=trail, actor=actor)
            journal = Journal(trail, None, policy, digest, args.model_name, rollout_id, actor,
                              baseline_version=args.baseline_version or None,
                              candidate_version=args.model_version)  # fmt: skip
            journal.action(outcome.action, detail={"reason": outcome.reason})
            severity = Severity.CRITICAL if outcome.action == "rollback" else Severity.INFO
            notifier.post(severity, f"{args.model_name} v{args.model_version}: {outcome.action}",
                          {"rollout": rollout_id, "kind": outcome.action,
                           "reason": outcome.reason})  # fmt: skip
            notifier.flush()
        say(
            f"audit trail of {len(records)} windows attached to version {args.model_version}"
            f" ({replayed} replayed from the evidence)"
        )
    except Exception as exc:  # the action is done; its record must not turn it into a failure
        say(f"warning: could not record the rollout ({type(exc).__name__}: {exc})")


def main(argv: Sequence[str] | None = None) -> int:
    return step_main("promote_or_rollback", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())

"""registry-approval: may this model version start a rollout?

Checks, against the registry: the version resolves (number or alias); it is approved (the
`kpigate.approved=true` tag, or the policy's approval alias, `candidate` by default); its input
signature equals the champion's (the router feeds both the same features); its offline metrics
meet the policy's `registry.min_offline` / `registry.max_offline`.

Outputs (files under --out-dir): version, approved (true|false), reason, baseline-version (the
champion's version when the rollout starts, empty for a model's first version; a global output
of the workflow, for PromQL's {{ baseline_version }} and the audit trail). A rejection is an
answer, not a failure: the step exits 0 with approved=false and the workflow ends with the
reason. A registry that cannot be reached or answers 5xx exits 1 (retried); one that refuses the
credentials exits 3 (kpigate/errors.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from kpigate.policy import RegistryRules
from kpigate.registry.base import CHAMPION, ModelNotFound, Registry
from kpigate.steps.common import DONE, read_policy, say, step_main, write_outputs
from kpigate.steps.inputs import ModelName, ModelRef, OutDir, PolicyFile, TrackingUri
from kpigate.steps.spec import StepInputs, add_flags, parse


@dataclass(frozen=True)
class Approval:
    version: str
    approved: bool
    reason: str
    baseline: str = ""  # the champion's version, "" when the model has none


class RegistryApprovalInputs(StepInputs):
    model_name: ModelName
    model_version: ModelRef
    policy: PolicyFile
    tracking_uri: TrackingUri
    out_dir: OutDir


def baseline_version(registry: Registry, name: str) -> str:
    """The champion's version, the rollout's baseline; "" for a model's first version."""
    try:
        return registry.resolve(name, CHAMPION).version
    except ModelNotFound:
        return ""


def approve(registry: Registry, name: str, ref: str, rules: RegistryRules) -> Approval:
    """Every check, in order; the first failing one is the reason."""
    try:
        version = registry.resolve(name, ref or "candidate").version
    except ModelNotFound as exc:
        return Approval("", False, str(exc))
    if not registry.is_approved(name, version, alias=rules.approval_alias):
        how = f"the alias '{rules.approval_alias}' or " if rules.approval_alias else ""
        return Approval(
            version,
            False,
            f"version {version} is not approved: give it {how}the tag kpigate.approved=true",
        )
    if rules.require_signature_match:
        try:
            champion = registry.input_schema(name, CHAMPION)
        except ModelNotFound:
            champion = None  # the first version of a model has nothing to match
        candidate = registry.input_schema(name, version)
        if champion is not None and _columns(champion) != _columns(candidate):
            missing = sorted(_columns(champion) - _columns(candidate))
            extra = sorted(_columns(candidate) - _columns(champion))
            return Approval(
                version,
                False,
                f"input signature differs from the champion's: "
                f"missing {missing}, unexpected {extra}",
            )
    metrics = registry.offline_metrics(name, version)
    for metric, floor in rules.min_offline.items():
        if metric not in metrics:
            return Approval(version, False, f"offline metric '{metric}' was not logged")
        if metrics[metric] < floor:
            return Approval(version, False, f"offline {metric} {metrics[metric]:.4g} < {floor:g}")
    for metric, ceiling in rules.max_offline.items():
        if metric not in metrics:
            return Approval(version, False, f"offline metric '{metric}' was not logged")
        if metrics[metric] > ceiling:
            return Approval(version, False, f"offline {metric} {metrics[metric]:.4g} > {ceiling:g}")
    return Approval(version, True, f"version {version} approved", baseline_version(registry, name))


def _columns(schema: list[dict[str, object]]) -> set[tuple[str, str]]:
    return {(str(c.get("name")), str(c.get("type"))) for c in schema}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, RegistryApprovalInputs)


def run(namespace: argparse.Namespace) -> int:
    from kpigate.registry.mlflow import MlflowRegistry

    args: RegistryApprovalInputs = parse(RegistryApprovalInputs, namespace)
    rules = read_policy(args.policy).registry
    registry = MlflowRegistry(args.tracking_uri)
    result = approve(registry, args.model_name, args.model_version, rules)
    write_outputs(
        args.out_dir,
        version=result.version,
        approved=str(result.approved).lower(),
        reason=result.reason,
        baseline_version=result.baseline,
    )
    say(("APPROVED: " if result.approved else "REJECTED: ") + result.reason)
    return DONE


def main(argv: Sequence[str] | None = None) -> int:
    return step_main("registry_approval", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())

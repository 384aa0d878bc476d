"""deploy-stage: give the candidate its traffic share for the stage through a traffic backend.

Backends: the kpigate router (admin API), KServe, Seldon Core v1 and Istio (kpigate/backends/).
Idempotent: setting the weight the backend already has changes nothing.

Output (file under --out-dir): deployed, the version, written before traffic changes: it is
what the exit handler rolls back (only what this workflow deployed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kpigate.backends.base import TrafficBackend
from kpigate.backends.cli import BackendInputs, settings_from_args
from kpigate.backends.factory import make_backend
from kpigate.steps.common import (
    DONE,
    StepError,
    refuse_if_rolled_back,
    say,
    step_main,
    write_outputs,
)
from kpigate.steps.inputs import (
    CandidateVersion,
    ModelName,
    OutDir,
    RolloutId,
    TrackingUri,
    TrafficMode,
)
from kpigate.steps.spec import add_flags, field, parse


def deploy(backend: TrafficBackend, weight: float, mode: str) -> float:
    """Set mirror mode first so the new weight never reaches clients in the wrong mode."""
    backend.set_mirror(mode == "shadow")
    backend.set_weight(weight)
    return backend.get_weight()


class DeployStageInputs(BackendInputs):
    weight: float = field(help="candidate share, percent", argo="{{inputs.parameters.weight}}")
    mode: TrafficMode
    # The backend's resource when --resource is empty (kserve, seldon, istio).
    model_name: ModelName = ""
    model_version: CandidateVersion  # the output `deployed`, what the exit handler rolls back
    rollout_id: RolloutId  # refuse (exit 3) to deploy a rollout that was rolled back
    tracking_uri: TrackingUri
    out_dir: OutDir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, DeployStageInputs)


def run(namespace: argparse.Namespace) -> int:
    args: DeployStageInputs = parse(DeployStageInputs, namespace)
    if not 0 <= args.weight <= 100:
        raise StepError(f"--weight must be in [0, 100], got {args.weight:g}")
    backend = make_backend(settings_from_args(args, default_resource=args.model_name))
    if args.rollout_id and args.model_version:
        from kpigate.registry.mlflow import MlflowRegistry

        registry = MlflowRegistry(args.tracking_uri)
        refuse_if_rolled_back(registry, args.model_name, args.model_version, args.rollout_id)
    write_outputs(args.out_dir, deployed=args.model_version)
    applied = deploy(backend, args.weight, args.mode)
    say(f"candidate weight {applied:g}% ({args.mode}) on {args.backend}")
    return DONE


def main(argv: Sequence[str] | None = None) -> int:
    return step_main("deploy_stage", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())

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
from kpigate.backends.cli import add_backend_arguments, settings_from_args
from kpigate.backends.factory import make_backend
from kpigate.steps.common import (
    DONE,
    StepError,
    add_out_dir,
    refuse_if_rolled_back,
    say,
    step_main,
    write_outputs,
)


def deploy(backend: TrafficBackend, weight: float, mode: str) -> float:
    """Set mirror mode first so the new weight never reaches clients in the wrong mode."""
    backend.set_mirror(mode == "shadow")
    backend.set_weight(weight)
    return backend.get_weight()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weight", type=float, required=True, help="candidate share, percent")
    parser.add_argument(
        "--mode",
        choices=["canary", "shadow"],
        default="canary",
        help="canary: the candidate answers its share; shadow: it scores a copy",
    )
    parser.add_argument("--model-name", default="", help="default resource name for Kubernetes")
    parser.add_argument("--model-version", default="", help="the version (output: deployed)")
    parser.add_argument(
        "--rollout-id", default="", help="refuse to deploy if this rollout was rolled back"
    )
    parser.add_argument("--tracking-uri", default=None, help="MLflow (with --rollout-id)")
    add_backend_arguments(parser)
    add_out_dir(parser)


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.weight <= 100:
        raise StepError(f"--weight must be in [0, 100], got {args.weight}")
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

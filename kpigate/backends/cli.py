"""The backend command-line flags the pipeline steps share (deploy-stage, promote-or-rollback).

The WorkflowTemplate passes exactly these flags (workflows/progressive_delivery.py,
BACKEND_ARGS); empty values mean "the default", because Argo passes empty arguments as "".
"""

from __future__ import annotations

import argparse

from kpigate.backends.base import BackendSettings
from kpigate.backends.factory import BACKENDS
from kpigate.backends.kserve import FORMS


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    d = BackendSettings()
    group = parser.add_argument_group("traffic backend")
    add = group.add_argument
    add("--backend", choices=list(BACKENDS), default=d.kind, help="default: %(default)s")
    add("--router-url", default=d.router_url, help="kpigate router base URL (%(default)s)")
    add("--namespace", default="", help="namespace of the resource (default: the pod's)")
    add("--resource", default="", help="InferenceService/SeldonDeployment/VirtualService name")
    add("--baseline", default=d.baseline, help="Seldon predictor / Istio subset of the baseline")
    add("--candidate", default=d.candidate, help="Seldon predictor / Istio subset of the candidate")
    add("--baseline-host", default="", help="Istio: baseline service host, if not a subset")
    add("--candidate-host", default="", help="Istio: candidate service host, if not a subset")
    add("--route", default="", help="Istio: http route name (default: the one with both arms)")
    add("--kserve-form", choices=list(FORMS), default=d.kserve_form, help="default: %(default)s")
    add("--dry-run", action="store_true", help="Kubernetes server-side dry run (dryRun=All)")


def settings_from_args(args: argparse.Namespace, default_resource: str = "") -> BackendSettings:
    """`default_resource` (e.g. the model name) stands in for an empty --resource."""
    return BackendSettings(
        kind=args.backend,
        router_url=args.router_url,
        namespace=args.namespace or None,
        resource=args.resource or default_resource or None,
        dry_run=args.dry_run,
        kserve_form=args.kserve_form,
        baseline=args.baseline,
        candidate=args.candidate,
        baseline_host=args.baseline_host or None,
        candidate_host=args.candidate_host or None,
        route=args.route or None,
    )

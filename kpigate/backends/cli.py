"""The traffic backend's inputs, defined once, for the steps that move traffic (deploy-stage,
promote-or-rollback): the same pydantic model gives their flags and what the WorkflowTemplate
passes (kpigate/steps/spec.py). Empty values mean "the default", because Argo passes empty
arguments as "".
"""

from __future__ import annotations

import argparse
from typing import Any

from kpigate.backends.base import BackendSettings
from kpigate.backends.factory import BACKENDS
from kpigate.backends.kserve import FORMS
from kpigate.steps.inputs import RouterUrl
from kpigate.steps.spec import StepInputs, add_flags, field, wf

_D = BackendSettings()


class BackendInputs(StepInputs):
    """Where the candidate is served (kpigate.backends.base.BackendSettings)."""

    backend: str = field(
        _D.kind,
        help="traffic backend (default: router)",
        argo=wf("backend"),
        choices=list(BACKENDS),
    )
    router_url: RouterUrl = _D.router_url
    namespace: str = field(
        "",
        help="namespace of the InferenceService/SeldonDeployment/VirtualService (default: the "
        "pod's)",
        argo=wf("backend-namespace"),
    )
    resource: str = field(
        "",
        help="InferenceService/SeldonDeployment/VirtualService name (default: the model name)",
        argo=wf("backend-resource"),
    )
    baseline: str = field(
        _D.baseline,
        help="Seldon predictor / Istio subset of the baseline",
        argo=wf("backend-baseline"),
    )
    candidate: str = field(
        _D.candidate,
        help="Seldon predictor / Istio subset of the candidate",
        argo=wf("backend-candidate"),
    )
    baseline_host: str = field("", help="Istio: baseline service host, if not a subset")
    candidate_host: str = field("", help="Istio: candidate service host, if not a subset")
    route: str = field("", help="Istio: http route name (default: the one with both arms)")
    kserve_form: str = field(
        _D.kserve_form,
        help="KServe: canaryTrafficPercent (spec.predictor) or canary (the v0.20 spec.canary list)",
        argo=wf("kserve-form"),
        choices=FORMS,
    )
    dry_run: bool = field(False, help="Kubernetes server-side dry run (dryRun=All)")


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, BackendInputs)


def settings_from_args(args: Any, default_resource: str = "") -> BackendSettings:
    """From a step's parsed inputs (or an argparse namespace with the same names);
    `default_resource` (e.g. the model name) stands in for an empty --resource."""
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

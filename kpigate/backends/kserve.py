"""KServe InferenceService: the candidate's share through `canaryTrafficPercent` or `spec.canary`.

Two forms are supported (BackendSettings.kserve_form):
- "canaryTrafficPercent": the classic form. The candidate is the latest predictor revision and
  `spec.predictor.canaryTrafficPercent` is its share; the previous ready revision takes the rest.
- "canary": the v0.20 form. `spec.canary` is a list of {predictor, trafficPercent}; the first
  entry is the candidate and `spec.predictor` the baseline.
KServe cannot mirror traffic; put Istio (the istio backend) or the kpigate router in front.
"""

from __future__ import annotations

from typing import Any

from kpigate.backends.base import BackendError, UnsupportedOperation, integer_percent
from kpigate.backends.kube import KubernetesBackend, ResourceKind
from kpigate.backends.patching import Patch, Resource

KIND = ResourceKind("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService")
FORMS = ("canaryTrafficPercent", "canary")


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise BackendError(f"unknown KServe form {form!r}: use one of {', '.join(FORMS)}")


def _spec(resource: Resource) -> dict[str, Any]:
    spec = resource.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("predictor"), dict):
        name = resource.get("metadata", {}).get("name", "?")
        raise BackendError(f"InferenceService {name} has no spec.predictor")
    return spec


def _canary_entries(resource: Resource) -> list[dict[str, Any]]:
    entries = _spec(resource).get("canary") or []
    return [e for e in entries if isinstance(e, dict)]


def read_weight(resource: Resource, form: str = "canaryTrafficPercent") -> float:
    _check_form(form)
    if form == "canary":
        entries = _canary_entries(resource)
        return float(entries[0].get("trafficPercent", 0)) if entries else 0.0
    # Without canaryTrafficPercent the latest revision (the candidate) takes all traffic.
    return float(_spec(resource)["predictor"].get("canaryTrafficPercent", 100))


def _first_canary(resource: Resource) -> dict[str, Any]:
    entries = _canary_entries(resource)
    if not entries:
        name = resource.get("metadata", {}).get("name", "?")
        raise BackendError(
            f"InferenceService {name} has no spec.canary entry: add the candidate as "
            "spec.canary[0] = {predictor: ..., trafficPercent: 0}, or use the "
            "canaryTrafficPercent form"
        )
    return entries[0]


def weight_patch(resource: Resource, percent: float, form: str = "canaryTrafficPercent") -> Patch:
    _check_form(form)
    value = integer_percent(percent, "KServe")
    if form == "canary":
        entry = _first_canary(resource)
        # The test guards the index: if someone replaced the canary since we read it, the
        # API server refuses the patch instead of re-weighting a different model.
        return Patch(
            "json",
            [
                {"op": "test", "path": "/spec/canary/0/predictor", "value": entry["predictor"]},
                {"op": "add", "path": "/spec/canary/0/trafficPercent", "value": value},
            ],
        )
    return Patch("merge", {"spec": {"predictor": {"canaryTrafficPercent": value}}})


def mirror_patch(resource: Resource, on: bool, form: str = "canaryTrafficPercent") -> Patch:
    _check_form(form)
    if not on:
        return Patch("merge", {})
    raise UnsupportedOperation(
        "KServe InferenceService cannot mirror traffic: run shadow stages with the istio "
        "backend (VirtualService mirror) or the kpigate router, or use mode canary"
    )


def detach_patch(resource: Resource, form: str = "canaryTrafficPercent") -> Patch:
    """All traffic back to the baseline; in the canary form the candidate entry is removed."""
    _check_form(form)
    if form == "canary":
        entries = _canary_entries(resource)
        if not entries:
            return Patch("json", [])
        guard = {"op": "test", "path": "/spec/canary/0/predictor", "value": entries[0]["predictor"]}
        return Patch("json", [guard, {"op": "remove", "path": "/spec/canary/0"}])
    # The candidate revision stays deployed with no traffic: the previous spec is not known
    # here, so reverting the predictor is left to whoever owns the InferenceService.
    return Patch("merge", {"spec": {"predictor": {"canaryTrafficPercent": 0}}})


class KServeBackend(KubernetesBackend):
    KIND = KIND

    @property
    def form(self) -> str:
        return self.settings.kserve_form

    def read_weight(self, resource: Resource) -> float:
        return read_weight(resource, self.form)

    def weight_patch(self, resource: Resource, percent: float) -> Patch:
        return weight_patch(resource, percent, self.form)

    def mirror_patch(self, resource: Resource, on: bool) -> Patch:
        return mirror_patch(resource, on, self.form)

    def detach_patch(self, resource: Resource) -> Patch:
        return detach_patch(resource, self.form)

"""Seldon Core v1 SeldonDeployment: predictors' `traffic` split and `shadow: true` mirroring.

The baseline and candidate are two predictors named by BackendSettings.baseline/.candidate.
Seldon sends a shadow predictor a copy of all traffic (there is no mirrored share), so in
shadow mode the baseline carries 100% and get_weight reports 100.
"""

from __future__ import annotations

from typing import Any

from kpigate.backends.base import BackendError, integer_percent
from kpigate.backends.kube import KubernetesBackend, ResourceKind
from kpigate.backends.patching import Patch, Resource

KIND = ResourceKind("machinelearning.seldon.io", "v1", "seldondeployments", "SeldonDeployment")


def _predictors(resource: Resource) -> list[dict[str, Any]]:
    predictors = resource.get("spec", {}).get("predictors")
    if not isinstance(predictors, list):
        name = resource.get("metadata", {}).get("name", "?")
        raise BackendError(f"SeldonDeployment {name} has no spec.predictors")
    return predictors


def _index(resource: Resource, name: str, role: str, required: bool = True) -> int | None:
    predictors = _predictors(resource)
    for i, predictor in enumerate(predictors):
        if predictor.get("name") == name:
            return i
    if not required:
        return None
    names = ", ".join(str(p.get("name")) for p in predictors) or "none"
    raise BackendError(
        f"SeldonDeployment {resource.get('metadata', {}).get('name', '?')} has no {role} "
        f"predictor named {name!r} (predictors: {names}); set --{role} to its name"
    )


def _guard(i: int, name: str) -> dict[str, Any]:
    # Guards the index: the patch fails if the predictor list changed since it was read.
    return {"op": "test", "path": f"/spec/predictors/{i}/name", "value": name}


def read_weight(resource: Resource, baseline: str, candidate: str) -> float:
    _index(resource, baseline, "baseline")
    i = _index(resource, candidate, "candidate", required=False)
    if i is None:
        return 0.0
    predictor = _predictors(resource)[i]
    if predictor.get("shadow"):
        return 100.0
    return float(predictor.get("traffic", 0))


def _split(b: int, c: int, baseline: str, candidate: str, candidate_traffic: int) -> list[Any]:
    return [
        _guard(b, baseline),
        _guard(c, candidate),
        {"op": "add", "path": f"/spec/predictors/{b}/traffic", "value": 100 - candidate_traffic},
        {"op": "add", "path": f"/spec/predictors/{c}/traffic", "value": candidate_traffic},
    ]


def weight_patch(resource: Resource, percent: float, baseline: str, candidate: str) -> Patch:
    value = integer_percent(percent, "Seldon predictor traffic")
    b = _index(resource, baseline, "baseline")
    c = _index(resource, candidate, "candidate")
    assert b is not None and c is not None
    if _predictors(resource)[c].get("shadow"):
        # A shadow sees all traffic and serves none: the split stays 100/0.
        value = 0
    return Patch("json", _split(b, c, baseline, candidate, value))


def mirror_patch(resource: Resource, on: bool, baseline: str, candidate: str) -> Patch:
    b = _index(resource, baseline, "baseline")
    c = _index(resource, candidate, "candidate")
    assert b is not None and c is not None
    ops = _split(b, c, baseline, candidate, 0)
    shadow_path = f"/spec/predictors/{c}/shadow"
    if on:
        ops.append({"op": "add", "path": shadow_path, "value": True})
    elif "shadow" in _predictors(resource)[c]:
        ops.append({"op": "remove", "path": shadow_path})
    return Patch("json", ops)


def detach_patch(resource: Resource, baseline: str, candidate: str) -> Patch:
    """The baseline takes 100% and the candidate predictor is removed."""
    b = _index(resource, baseline, "baseline")
    c = _index(resource, candidate, "candidate", required=False)
    assert b is not None
    if c is None:
        if _predictors(resource)[b].get("traffic", 100) == 100:
            return Patch("json", [])
        return Patch("json", [_guard(b, baseline), _set_traffic(b, 100)])
    return Patch(
        "json",
        [
            _guard(b, baseline),
            _guard(c, candidate),
            _set_traffic(b, 100),
            {"op": "remove", "path": f"/spec/predictors/{c}"},
        ],
    )


def _set_traffic(i: int, value: int) -> dict[str, Any]:
    return {"op": "add", "path": f"/spec/predictors/{i}/traffic", "value": value}


class SeldonBackend(KubernetesBackend):
    KIND = KIND

    def read_weight(self, resource: Resource) -> float:
        return read_weight(resource, self.settings.baseline, self.settings.candidate)

    def weight_patch(self, resource: Resource, percent: float) -> Patch:
        return weight_patch(resource, percent, self.settings.baseline, self.settings.candidate)

    def mirror_patch(self, resource: Resource, on: bool) -> Patch:
        return mirror_patch(resource, on, self.settings.baseline, self.settings.candidate)

    def detach_patch(self, resource: Resource) -> Patch:
        return detach_patch(resource, self.settings.baseline, self.settings.candidate)

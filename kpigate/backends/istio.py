"""Istio VirtualService: http route weights for canary, `mirror` + `mirrorPercentage` for shadow.

The baseline and candidate are destinations of one http route, found by subset name
(BackendSettings.baseline/.candidate) and, where the arms are separate services, by host
(baseline_host/candidate_host). The route is the one named by BackendSettings.route, else the
first http route that has both destinations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kpigate.backends.base import BackendError, BackendSettings, check_percent, integer_percent
from kpigate.backends.kube import KubernetesBackend, ResourceKind
from kpigate.backends.patching import Patch, Resource

KIND = ResourceKind("networking.istio.io", "v1", "virtualservices", "VirtualService")


@dataclass(frozen=True)
class Arms:
    """Where the two arms sit: http route index and destination indices within it."""

    http: int
    baseline: int
    candidate: int | None


def _matches(destination: dict[str, Any], subset: str, host: str | None) -> bool:
    if host is not None and destination.get("host") != host:
        return False
    if host is not None and "subset" not in destination:
        return True
    return destination.get("subset") == subset


def _destinations(route: dict[str, Any]) -> list[dict[str, Any]]:
    return [r.get("destination", {}) for r in route.get("route", [])]


def _find(destinations: list[dict[str, Any]], subset: str, host: str | None) -> int | None:
    return next((i for i, d in enumerate(destinations) if _matches(d, subset, host)), None)


def locate(resource: Resource, settings: BackendSettings, need_candidate: bool = True) -> Arms:
    http = resource.get("spec", {}).get("http") or []
    name = resource.get("metadata", {}).get("name", "?")
    s = settings
    for i, route in enumerate(http):
        if s.route is not None and route.get("name") != s.route:
            continue
        dests = _destinations(route)
        b = _find(dests, s.baseline, s.baseline_host)
        c = _find(dests, s.candidate, s.candidate_host)
        if b is not None and (c is not None or not need_candidate):
            return Arms(i, b, c)
        if s.route is not None:
            break
    which = f"http route {s.route!r}" if s.route else "any http route"
    raise BackendError(
        f"VirtualService {name}: {which} has no destinations for both arms "
        f"(baseline subset {s.baseline!r}, candidate subset {s.candidate!r}); set --baseline/"
        "--candidate to the DestinationRule subsets, or --baseline-host/--candidate-host"
    )


def _guards(resource: Resource, arms: Arms) -> list[dict[str, Any]]:
    http = resource["spec"]["http"][arms.http]
    ops = []
    for j in (arms.baseline, arms.candidate):
        if j is not None:
            path = f"/spec/http/{arms.http}/route/{j}/destination"
            ops.append({"op": "test", "path": path, "value": http["route"][j]["destination"]})
    return ops


def _weights(arms: Arms, candidate_weight: int) -> list[dict[str, Any]]:
    base = f"/spec/http/{arms.http}/route"
    ops = [{"op": "add", "path": f"{base}/{arms.baseline}/weight", "value": 100 - candidate_weight}]
    if arms.candidate is not None:
        path = f"{base}/{arms.candidate}/weight"
        ops.append({"op": "add", "path": path, "value": candidate_weight})
    return ops


def _mirroring(resource: Resource, arms: Arms) -> bool:
    return "mirror" in resource["spec"]["http"][arms.http]


def read_weight(resource: Resource, settings: BackendSettings) -> float:
    arms = locate(resource, settings, need_candidate=False)
    http = resource["spec"]["http"][arms.http]
    if _mirroring(resource, arms):
        return float(http.get("mirrorPercentage", {}).get("value", 100.0))
    if arms.candidate is None:
        return 0.0
    routes = http["route"]
    default = 100 if len(routes) == 1 else 0
    return float(routes[arms.candidate].get("weight", default))


def weight_patch(resource: Resource, percent: float, settings: BackendSettings) -> Patch:
    arms = locate(resource, settings)
    ops = _guards(resource, arms)
    if _mirroring(resource, arms):
        value = check_percent(percent)
        path = f"/spec/http/{arms.http}/mirrorPercentage"
        ops.append({"op": "add", "path": path, "value": {"value": value}})
    else:
        ops += _weights(arms, integer_percent(percent, "Istio route weight"))
    return Patch("json", ops)


def mirror_patch(resource: Resource, on: bool, settings: BackendSettings) -> Patch:
    """Switch mode keeping the share: canary w% <-> mirror w% (baseline serving 100%)."""
    arms = locate(resource, settings)
    assert arms.candidate is not None
    mirroring = _mirroring(resource, arms)
    if on == mirroring:
        return Patch("json", [])
    http = resource["spec"]["http"][arms.http]
    share = read_weight(resource, settings)
    ops = _guards(resource, arms)
    base = f"/spec/http/{arms.http}"
    if on:
        destination = dict(http["route"][arms.candidate]["destination"])
        ops += _weights(arms, 0)
        ops.append({"op": "add", "path": f"{base}/mirror", "value": destination})
        ops.append({"op": "add", "path": f"{base}/mirrorPercentage", "value": {"value": share}})
    else:
        ops += _weights(arms, integer_percent(share, "Istio route weight"))
        ops.append({"op": "remove", "path": f"{base}/mirror"})
        if "mirrorPercentage" in http:
            ops.append({"op": "remove", "path": f"{base}/mirrorPercentage"})
    return Patch("json", ops)


def detach_patch(resource: Resource, settings: BackendSettings) -> Patch:
    """The baseline takes 100%, mirroring stops, and the candidate destination is removed."""
    arms = locate(resource, settings, need_candidate=False)
    http = resource["spec"]["http"][arms.http]
    base = f"/spec/http/{arms.http}"
    ops = _guards(resource, arms)
    ops.append({"op": "add", "path": f"{base}/route/{arms.baseline}/weight", "value": 100})
    for field in ("mirror", "mirrorPercentage"):
        if field in http:
            ops.append({"op": "remove", "path": f"{base}/{field}"})
    if arms.candidate is not None:
        ops.append({"op": "remove", "path": f"{base}/route/{arms.candidate}"})
    elif http["route"][arms.baseline].get("weight") == 100 and len(ops) == 2:
        return Patch("json", [])
    return Patch("json", ops)


class IstioBackend(KubernetesBackend):
    KIND = KIND

    def read_weight(self, resource: Resource) -> float:
        return read_weight(resource, self.settings)

    def weight_patch(self, resource: Resource, percent: float) -> Patch:
        return weight_patch(resource, percent, self.settings)

    def mirror_patch(self, resource: Resource, on: bool) -> Patch:
        return mirror_patch(resource, on, self.settings)

    def detach_patch(self, resource: Resource) -> Patch:
        return detach_patch(resource, self.settings)

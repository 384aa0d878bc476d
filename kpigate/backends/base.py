"""The traffic backend interface: one small method set, one module per serving layer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from kpigate.errors import KpigateError

# The namespace a pod runs in, as Kubernetes mounts it for every service account.
_POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class BackendError(KpigateError):
    """A traffic change that could not be made; the message says what to check or change.
    Bad settings by default; the backend module marks an unreachable or 5xx serving layer
    UNAVAILABLE (retried) and a 401/403 REFUSED."""


class UnsupportedOperation(BackendError):
    """The serving layer cannot do this at all (for example mirroring on KServe)."""


@runtime_checkable
class TrafficBackend(Protocol):
    """What the pipeline needs from a serving layer.

    `percent` is the candidate's share of traffic (0-100). In mirror (shadow) mode the
    baseline answers every request and the candidate scores a copy of `percent` of them, where
    the serving layer can mirror a share (Istio, the kpigate router); Seldon mirrors everything.
    """

    def set_weight(self, percent: float) -> None: ...

    def get_weight(self) -> float: ...

    def set_mirror(self, on: bool) -> None: ...

    def detach(self) -> None: ...


@dataclass(frozen=True)
class BackendSettings:
    """Where the candidate is served and how to find it; each backend reads what it needs."""

    kind: str = "router"
    # kpigate router
    router_url: str = "http://127.0.0.1:8080"
    admin_token: str | None = None  # default: KPIGATE_ADMIN_TOKEN
    timeout_s: float = 10.0
    # Kubernetes backends (kserve, seldon, istio)
    namespace: str | None = None  # default: the pod's namespace, else "default"
    resource: str | None = None  # InferenceService / SeldonDeployment / VirtualService name
    dry_run: bool = False  # server-side dry run (dryRun=All): validated, not persisted
    # kserve: "canaryTrafficPercent" (spec.predictor) or "canary" (the v0.20 spec.canary list)
    kserve_form: str = "canaryTrafficPercent"
    # seldon: predictor names; istio: destination subsets (and hosts when they differ)
    baseline: str = "baseline"
    candidate: str = "candidate"
    baseline_host: str | None = None
    candidate_host: str | None = None
    route: str | None = None  # istio: the http route's name (default: the one with both arms)

    def resolved_namespace(self) -> str:
        if self.namespace:
            return self.namespace
        try:
            return _POD_NAMESPACE_FILE.read_text().strip() or "default"
        except OSError:
            return "default"

    def require_resource(self) -> str:
        if not self.resource:
            raise BackendError(
                f"the {self.kind} backend needs the name of the resource to change: "
                "pass --resource (the workflow argument backend-resource)"
            )
        return self.resource


def check_percent(percent: float) -> float:
    if isinstance(percent, bool) or not 0.0 <= float(percent) <= 100.0:
        raise BackendError(f"a traffic weight is a percentage in [0, 100], got {percent!r}")
    return float(percent)


def integer_percent(percent: float, where: str) -> int:
    """Kubernetes serving layers take whole percents; refuse to round silently."""
    value = check_percent(percent)
    if value != round(value):
        raise BackendError(
            f"{where} takes whole percents, got {percent:g}: use integer stage weights "
            "(and an integer holdback) with this backend"
        )
    return round(value)

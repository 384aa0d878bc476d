"""Choose a traffic backend by name; each backend module is imported only when chosen."""

from __future__ import annotations

import importlib
from typing import Any

from kpigate.backends.base import BackendError, BackendSettings, TrafficBackend

# name -> (module, class)
BACKENDS: dict[str, tuple[str, str]] = {
    "router": ("kpigate.backends.router", "RouterBackend"),
    "kserve": ("kpigate.backends.kserve", "KServeBackend"),
    "seldon": ("kpigate.backends.seldon", "SeldonBackend"),
    "istio": ("kpigate.backends.istio", "IstioBackend"),
}


def make_backend(settings: BackendSettings, client: Any = None) -> TrafficBackend:
    """`client`: an httpx.Client for the router, a CustomObjectsApi for the others."""
    try:
        module_name, class_name = BACKENDS[settings.kind]
    except KeyError:
        raise BackendError(
            f"unknown traffic backend {settings.kind!r}: choose one of {', '.join(BACKENDS)}"
        ) from None
    cls = getattr(importlib.import_module(module_name), class_name)
    backend: TrafficBackend = cls(settings, client)
    return backend

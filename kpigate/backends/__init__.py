"""Traffic backends: set the candidate's share, mirror, detach; one module per serving layer."""

from kpigate.backends.base import (
    BackendError,
    BackendSettings,
    TrafficBackend,
    UnsupportedOperation,
)
from kpigate.backends.factory import BACKENDS, make_backend

__all__ = [
    "BACKENDS",
    "BackendError",
    "BackendSettings",
    "TrafficBackend",
    "UnsupportedOperation",
    "make_backend",
]

"""Model registry access: a small interface (base) and one module per backend (mlflow)."""

from kpigate.registry.base import (
    APPROVAL_TAG,
    CANDIDATE,
    CHAMPION,
    FLAVOR_TAG,
    THRESHOLD_TAG,
    ModelNotFound,
    ModelVersionRef,
    Registry,
    RegistryError,
    RegistryUnavailable,
)

__all__ = [
    "APPROVAL_TAG",
    "CANDIDATE",
    "CHAMPION",
    "FLAVOR_TAG",
    "THRESHOLD_TAG",
    "ModelNotFound",
    "ModelVersionRef",
    "Registry",
    "RegistryError",
    "RegistryUnavailable",
]

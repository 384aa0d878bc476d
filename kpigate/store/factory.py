"""Open an evidence store from its URI: mlflow://models/... or a file path."""

from __future__ import annotations

from kpigate.store.base import EvidenceStore
from kpigate.store.file import FileStore


def open_store(uri: str, tracking_uri: str | None = None) -> EvidenceStore:
    if uri.startswith("mlflow://"):
        from kpigate.registry.mlflow import MlflowRegistry
        from kpigate.store.mlflow import MlflowStore

        return MlflowStore(uri, MlflowRegistry(tracking_uri))
    return FileStore(uri.removeprefix("file://"))

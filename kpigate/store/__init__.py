"""Evidence stores: where a rollout's windows live between steps, retries and reruns."""

from kpigate.store.base import EvidenceStore, StoreError
from kpigate.store.factory import open_store

__all__ = ["EvidenceStore", "StoreError", "open_store"]

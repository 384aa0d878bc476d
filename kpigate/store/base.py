"""The evidence-store interface: an append-only list of window records (evidence_record.py)."""

from __future__ import annotations

from typing import Protocol

from kpigate.errors import KpigateError
from kpigate.evidence_record import WindowRecord


class StoreError(KpigateError):
    """The evidence could not be read or written; nothing was lost (appends are atomic).
    Its kind is the cause's: a registry that is down is worth a retry, a bad URI is not."""


class EvidenceStore(Protocol):
    uri: str

    def read(self) -> list[WindowRecord]:
        """Every window recorded so far, in order ([] when none); a record that does not follow
        the schema is a StoreError naming its line and field."""

    def append(self, record: WindowRecord) -> None:
        """Add one window; after it returns, read() includes it."""

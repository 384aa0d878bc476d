"""The evidence-store interface: an append-only list of windows in the replay format."""

from __future__ import annotations

from typing import Any, Protocol

from kpigate.errors import KpigateError


class StoreError(KpigateError):
    """The evidence could not be read or written; nothing was lost (appends are atomic).
    Its kind is the cause's: a registry that is down is worth a retry, a bad URI is not."""


class EvidenceStore(Protocol):
    uri: str

    def read(self) -> list[dict[str, Any]]:
        """Every window recorded so far, in order ([] when none)."""

    def append(self, record: dict[str, Any]) -> None:
        """Add one window; after it returns, read() includes it."""

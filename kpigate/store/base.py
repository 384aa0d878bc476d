"""The evidence-store interface: an append-only list of windows in the replay format."""

from __future__ import annotations

from typing import Any, Protocol


class StoreError(RuntimeError):
    """The evidence could not be read or written; nothing was lost (appends are atomic)."""


class EvidenceStore(Protocol):
    uri: str

    def read(self) -> list[dict[str, Any]]:
        """Every window recorded so far, in order ([] when none)."""

    def append(self, record: dict[str, Any]) -> None:
        """Add one window; after it returns, read() includes it."""

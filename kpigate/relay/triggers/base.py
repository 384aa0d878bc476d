"""The trigger interface: start the rollout of one model version, say where to follow it."""

from __future__ import annotations

from typing import Protocol


class TriggerError(RuntimeError):
    """The rollout could not be started; the relay answers 502 with this message."""


class Trigger(Protocol):
    name: str

    def start(self, model_name: str, model_version: str) -> str:
        """Start the rollout; returns an id or link for it."""

"""What the relay does with an approved model version: one module per way to start a rollout."""

from kpigate.relay.triggers.base import Trigger, TriggerError

__all__ = ["Trigger", "TriggerError"]

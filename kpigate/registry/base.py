"""The registry interface the workflow steps and the router use, independent of MLflow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from kpigate.errors import Kind, KpigateError

# Aliases kpigate moves. `champion` serves the baseline arm, `candidate` the challenger.
CHAMPION = "champion"
CANDIDATE = "candidate"
# The tag an approver (human or CI) sets on a version to let the rollout start.
APPROVAL_TAG = "kpigate.approved"
# Tags written at registration so the router and the gates need no training code.
# Plain "threshold": the router's loader (kpigate.serve.loader) reads the same tag.
THRESHOLD_TAG = "threshold"
FLAVOR_TAG = "kpigate.flavor"


class RegistryError(KpigateError):
    """A registry problem a user can act on; the message says what and what to do."""


class RegistryUnavailable(RegistryError):
    """The registry server could not be reached (or answered 5xx): worth retrying."""

    default_kind = Kind.UNAVAILABLE


class ModelNotFound(RegistryError):
    """No registered model, version or alias by that name."""


@dataclass(frozen=True)
class ModelVersionRef:
    """One resolved version of a registered model."""

    name: str
    version: str
    run_id: str | None
    source: str
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@runtime_checkable
class Registry(Protocol):
    """What kpigate needs from a model registry: resolve, approve, move aliases, keep evidence."""

    def resolve(self, name: str, ref: str) -> ModelVersionRef:
        """A version by alias (`champion`) or number (`3`); raises ModelNotFound."""
        ...

    def get_aliases(self, name: str) -> dict[str, str]:
        """alias -> version for the registered model."""
        ...

    def set_alias(self, name: str, alias: str, version: str) -> None: ...

    def delete_alias(self, name: str, alias: str) -> None: ...

    def get_tags(self, name: str, version: str) -> dict[str, str]: ...

    def set_tag(self, name: str, version: str, key: str, value: str) -> None: ...

    def is_approved(self, name: str, version: str, *, alias: str | None = None) -> bool:
        """True if the version carries the approval tag (or, when given, holds `alias`)."""
        ...

    def offline_metrics(self, name: str, ref: str) -> dict[str, float]:
        """Metrics logged by the training run of the version."""
        ...

    def input_schema(self, name: str, ref: str) -> list[dict[str, Any]]:
        """The signature's input columns as [{'name': ..., 'type': ...}]."""
        ...

    def log_text(self, name: str, ref: str, text: str, artifact_file: str) -> None:
        """Attach evidence (a decision record, a report) to the version's training run."""
        ...

    def log_dict(self, name: str, ref: str, data: dict[str, Any], artifact_file: str) -> None: ...

    def download_artifact(self, name: str, ref: str, artifact_path: str, dst_dir: str) -> str:
        """Download one artifact of the version's run; returns the local path."""
        ...

"""The rollout's audit trail, kept with the candidate version in MLflow and appended by each step
as it acts, so each decision is recorded when it was made (kpigate/audit.py chains the records
and stamps their time; `attach_to_registry` uploads the trail and moves its head tag)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kpigate.audit import ARTIFACT_TAG, ROLLOUT_TAG, AuditTrail, attach_to_registry
from kpigate.engine import Cause, GateDecision
from kpigate.registry.base import Registry


@contextmanager
def rollout_trail(
    registry: Registry, model_name: str, version: str, rollout_id: str
) -> Iterator[AuditTrail]:
    """This rollout's trail so far (empty for a new rollout), attached again on exit."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        tags = registry.get_tags(model_name, version)
        if tags.get(ROLLOUT_TAG) == rollout_id and tags.get(ARTIFACT_TAG):
            got = registry.download_artifact(model_name, version, tags[ARTIFACT_TAG], f"{tmp}/in")
            shutil.copyfile(got, path)
        yield AuditTrail(path)
        if path.exists():
            attach_to_registry(registry, model_name, version, path, rollout_id)


@contextmanager
def scratch_trail(
    registry: Registry, model_name: str, version: str, rollout_id: str
) -> Iterator[AuditTrail]:
    """A new trail, attached on exit: for evidence outside MLflow, where no trail was kept."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        yield AuditTrail(path)
        if path.exists():
            attach_to_registry(registry, model_name, version, path, rollout_id)


Key = tuple[int, float, bool]  # window, stage, whether an operator decided


def judged(trail: AuditTrail) -> set[Key]:
    """The key of every decision already in the trail: a retried step skips them. An
    operator's decision at a suspend shares its window with the gate's HOLD before it."""
    records: list[dict[str, Any]] = trail.records() if trail.path.exists() else []
    return {
        (int(r["window"]), float(r["stage"]), r.get("cause") == Cause.OPERATOR.value)
        for r in records
        if r.get("type") == "decision" and "window" in r and "stage" in r
    }


def key(decision: GateDecision) -> Key:
    return int(decision.window), float(decision.stage), decision.cause is Cause.OPERATOR

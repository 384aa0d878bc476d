"""Evidence as an artifact of the candidate version's MLflow run.

Every step of a rollout on Argo can reach the registry, and the evidence then stays with the
model version it judged: it survives pods, retries, `argo retry` and operator reruns. The
artifact is rewritten whole on each append (windows are few: tens per rollout).
URI: mlflow://models/<model-name>/<model-version>/<rollout-id>
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from kpigate.registry.base import ModelNotFound, Registry, RegistryError
from kpigate.store.base import StoreError

ARTIFACT_DIR = "kpigate/evidence"


def parse_uri(uri: str) -> tuple[str, str, str]:
    parts = uri.removeprefix("mlflow://").split("/")
    if len(parts) != 4 or parts[0] != "models" or not all(parts):
        raise StoreError(
            f"{uri!r} is not an MLflow evidence URI: mlflow://models/<model>/<version>/<rollout>"
        )
    return parts[1], parts[2], parts[3]


class MlflowStore:
    def __init__(self, uri: str, registry: Registry) -> None:
        self.uri = uri
        self.model, self.version, self.rollout = parse_uri(uri)
        self.registry = registry
        self.artifact = f"{ARTIFACT_DIR}/{self.rollout}.jsonl"

    def read(self) -> list[dict[str, Any]]:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.registry.download_artifact(self.model, self.version, self.artifact, tmp)
            except ModelNotFound as exc:
                if self.artifact in str(exc):
                    return []  # no window recorded yet
                raise StoreError(f"cannot read evidence {self.uri}: {exc}", kind=exc.kind) from exc
            except RegistryError as exc:
                raise StoreError(f"cannot read evidence {self.uri}: {exc}", kind=exc.kind) from exc
            text = Path(path).read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def append(self, record: dict[str, Any]) -> None:
        records = [*self.read(), record]
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        try:
            self.registry.log_text(self.model, self.version, text, self.artifact)
        except RegistryError as exc:
            raise StoreError(f"cannot write evidence {self.uri}: {exc}", kind=exc.kind) from exc

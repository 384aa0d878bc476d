"""Evidence as an artifact of the candidate version's MLflow run.

Every step of a rollout on Argo can reach the registry, and the evidence then stays with the
model version it judged: it survives pods, retries, `argo retry` and operator reruns. The
artifact is rewritten whole on each append (windows are few: tens per rollout).
URI: mlflow://models/<model-name>/<model-version>/<rollout-id>
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from kpigate.evidence_record import RecordError, WindowRecord, parse_record
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

    def read(self) -> list[WindowRecord]:
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
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(parse_record(line))
            except RecordError as exc:
                raise StoreError(f"evidence {self.uri}: line {number}: {exc}") from None
        return records

    def append(self, record: WindowRecord) -> None:
        records = [*self.read(), record]
        text = "".join(r.to_json_line() + "\n" for r in records)
        try:
            self.registry.log_text(self.model, self.version, text, self.artifact)
        except RegistryError as exc:
            raise StoreError(f"cannot write evidence {self.uri}: {exc}", kind=exc.kind) from exc

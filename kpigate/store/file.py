"""Evidence in a JSON Lines file (local runs, or a volume mounted into every step)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from kpigate.errors import Kind
from kpigate.evidence_record import RecordError, WindowRecord, record_of
from kpigate.store.base import StoreError


class FileStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.uri = str(self.path)

    def read(self) -> list[WindowRecord]:
        if not self.path.exists():
            return []
        records = []
        with self.path.open() as source:
            for number, line in enumerate(source, start=1):
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                except json.JSONDecodeError:
                    # A torn last line is a write cut short by a crash: it was never appended.
                    if source.readline() == "":
                        break
                    raise StoreError(f"{self.path}: line {number} is not JSON") from None
                try:
                    records.append(record_of(data))
                except RecordError as exc:
                    raise StoreError(f"{self.path}: line {number}: {exc}") from None
        return records

    def append(self, record: WindowRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (record.to_json_line() + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            kind = Kind.REFUSED if isinstance(exc, PermissionError) else Kind.UNAVAILABLE
            raise StoreError(f"cannot append to {self.path}: {exc.strerror}", kind=kind) from exc

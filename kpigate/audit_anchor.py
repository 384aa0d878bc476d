"""Anchors: the trail's head kept outside the trail file after every append, so a trail that
was cut, extended or replaced no longer matches what the anchor saw.

Two kinds: the model version's `kpigate.audit.head` tag in MLflow (through the registry's
public API; the version's `kpigate.rollout.id` tag says which rollout it anchors), and a local
file holding the whole trail's head (one host, tests, or a file on storage the writer of the
trail cannot rewrite).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kpigate.registry.base import Registry

HEAD_TAG = "kpigate.audit.head"
ROLLOUT_TAG = "kpigate.rollout.id"
WHOLE_TRAIL = "*"  # an anchor's scope: every record of the file, whatever its rollout


@dataclass(frozen=True)
class AnchoredHead:
    """A head seen outside the file: after it, no record of `rollout` may follow.

    rollout None: the rollout of the record the head points at; WHOLE_TRAIL: any record.
    """

    head: str
    seq: int | None = None
    rollout: str | None = None


class Anchor(Protocol):
    def record(self, record: Mapping[str, Any]) -> None:
        """Called after each append (under the trail's lock) with the record just written."""
        ...

    def read(self) -> AnchoredHead | None: ...


def parse_head(text: str) -> AnchoredHead:
    """`HASH` or `SEQ:HASH`, as `--head` takes it."""
    seq, sep, head = text.strip().rpartition(":")
    if sep and seq.isdigit():
        return AnchoredHead(head, int(seq))
    return AnchoredHead(text.strip())


class FileAnchor:
    """The whole trail's head in a small JSON file, replaced atomically at every append."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def record(self, record: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = json.dumps({"seq": record["seq"], "head": record["hash"]}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def read(self) -> AnchoredHead | None:
        try:
            data = json.loads(self.path.read_bytes())
            return AnchoredHead(str(data["head"]), int(data["seq"]), WHOLE_TRAIL)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{self.path}: not an audit anchor file ({exc})") from None


class RegistryAnchor:
    """The head as a tag on the model version, set after every append of its rollout."""

    def __init__(self, registry: Registry, model_name: str, version: str, rollout: str) -> None:
        self.registry, self.model_name, self.version = registry, model_name, version
        self.rollout = rollout
        self._rollout_tagged = False

    def record(self, record: Mapping[str, Any]) -> None:
        if not self._rollout_tagged:  # once: the scope of every head tag that follows
            self.registry.set_tag(self.model_name, self.version, ROLLOUT_TAG, self.rollout)
            self._rollout_tagged = True
        self.registry.set_tag(self.model_name, self.version, HEAD_TAG, str(record["hash"]))

    def read(self) -> AnchoredHead | None:
        tags = self.registry.get_tags(self.model_name, self.version)
        if not tags.get(HEAD_TAG):
            return None
        return AnchoredHead(tags[HEAD_TAG], None, tags.get(ROLLOUT_TAG) or None)

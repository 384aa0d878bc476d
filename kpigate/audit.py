"""The audit trail: a keyed, hash-chained JSON Lines log of every decision and action of a rollout.

Each line is one record: `seq` (1, 2, ...), `time` (UTC), `prev` (the previous record's hash)
and `hash`. With a key (KPIGATE_AUDIT_KEY or KPIGATE_AUDIT_KEY_FILE) the hash is an HMAC and
the record says `mac: hmac-sha256:<key id>` (kpigate/audit_chain.py): editing, deleting,
reordering or fabricating records breaks the chain for anyone without the key, and `verify`
says where. Without a key the hash is plain sha256, and verify says loudly that such a trail
only detects accidents. After every append an anchor outside the file (kpigate/audit_anchor.py:
an MLflow tag on the model version, or a local file) records the new head, so records cut off
the end, appended after the anchored head or a whole replaced trail are caught as well.

Appends are crash-safe: one O_APPEND write per record, then fsync, under an exclusive flock
so concurrent writers (a runner and a relay) cannot interleave. A crash mid-write leaves at
most a torn last line; earlier records are never touched, and the next append repairs the
tail before chaining onto the last complete record.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kpigate.audit_anchor import (
    HEAD_TAG,
    ROLLOUT_TAG,
    Anchor,
    AnchoredHead,
    FileAnchor,
    RegistryAnchor,
)
from kpigate.audit_chain import (
    FROM_ENV,
    GENESIS,
    AuditError,
    AuditKey,
    KeyArg,
    audit_key_from_env,
    canonical,
    hash_checks,
    jsonable,
    parse_record,
    record_hash,
    resolve_key,
)
from kpigate.audit_events import (
    action_event,
    decision_event,
    default_actor,
    is_routine_soak,
    notification_event,
)
from kpigate.audit_verify import Verification, verify, verify_evidence
from kpigate.registry.base import Registry

__all__ = [
    "ARTIFACT_TAG", "GENESIS", "HEAD_TAG", "RECORDS_TAG", "ROLLOUT_TAG", "VERIFIED_TAG",
    "Anchor", "AnchoredHead", "AuditError", "AuditKey", "AuditTrail", "FileAnchor",
    "RegistryAnchor", "Verification", "action_event", "attach_to_registry",
    "audit_key_from_env", "canonical", "decision_event", "default_actor", "is_routine_soak",
    "notification_event", "policy_hash", "read_records", "record_hash", "verify",
    "verify_evidence",
]  # fmt: skip

log = logging.getLogger(__name__)

_RESERVED = ("seq", "time", "prev", "hash", "mac")
_CHUNK = 65536


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _line(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")


# --- appending ---------------------------------------------------------------------------------


def _rfind_newline(fd: int, before: int) -> int:
    """Offset of the last b"\\n" strictly before `before`, or -1."""
    end = before
    while end > 0:
        start = max(0, end - _CHUNK)
        chunk = os.pread(fd, end - start, start)
        at = chunk.rfind(b"\n")
        if at >= 0:
            return start + at
        end = start
    return -1


class AuditTrail:
    """One trail file. `append` is safe across threads and processes on one host.

    `key`: the HMAC key; by default KPIGATE_AUDIT_KEY / KPIGATE_AUDIT_KEY_FILE (None: unkeyed).
    `anchor`: told the new head after every append (an MLflow tag, a local file). A failing
    anchor never loses the record: it is logged and counted in `anchor_failures`, and the next
    append anchors a head that covers this record too.
    """

    def __init__(
        self, path: str | Path, *, key: KeyArg = FROM_ENV, anchor: Anchor | None = None
    ) -> None:
        self.path = Path(path)
        self.key = resolve_key(key)
        self.anchor = anchor
        self.anchor_failures = 0

    def append(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Chain `event` onto the trail and return the record as written (with seq and hash)."""
        clash = [k for k in _RESERVED if k in event]
        if clash:
            raise ValueError(f"audit events cannot set {clash}: the trail assigns them")
        body = jsonable(event)
        created = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot open the audit trail ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            last = self._repaired_tail(fd)
            record: dict[str, Any] = {
                "seq": 1 if last is None else int(last["seq"]) + 1,
                "time": _now(),
                "prev": GENESIS if last is None else str(last["hash"]),
            }
            if self.key is not None:
                record["mac"] = self.key.mac_field
            record.update(body)
            record["hash"] = record_hash(record, self.key)
            data = _line(record)
            written = 0
            while written < len(data):  # a regular file rarely writes short, but it may
                written += os.write(fd, data[written:])
            os.fsync(fd)
            self._anchor(record)  # under the lock: anchors see heads in trail order
        finally:
            os.close(fd)  # also releases the flock
        if created:
            self._sync_directory()
        return record

    def _anchor(self, record: Mapping[str, Any]) -> None:
        if self.anchor is None:
            return
        try:
            self.anchor.record(record)
        except Exception as exc:  # a registry blip must not lose or fail the decision itself
            self.anchor_failures += 1
            log.warning(
                "%s: seq %s written but its head was not anchored (%s: %s); the next append "
                "anchors again, and until then verify reports the record as unanchored",
                self.path, record["seq"], type(exc).__name__, exc,
            )  # fmt: skip

    def _repaired_tail(self, fd: int) -> dict[str, Any] | None:
        """The last complete record; a torn last line is completed or cut off first."""
        size = os.fstat(fd).st_size
        if size == 0:
            return None
        end = size
        if os.pread(fd, 1, size - 1) != b"\n":
            start = _rfind_newline(fd, size) + 1
            torn = os.pread(fd, size - start, start)
            whole = parse_record(torn)
            # A keyed record under another key cannot be checked; whole JSON is whole enough.
            if whole is not None and "hash" in whole and hash_checks(whole, self.key) is not False:
                # Only the newline was lost: the record itself is complete and intact.
                os.write(fd, b"\n")
                os.fsync(fd)
                return whole
            log.warning(
                "%s: cutting a torn last line (%d bytes) left by an interrupted append",
                self.path,
                len(torn),
            )
            os.ftruncate(fd, start)
            os.fsync(fd)
            end = start
        if end == 0:
            return None
        start = _rfind_newline(fd, end - 1) + 1
        last = parse_record(os.pread(fd, end - 1 - start, start))
        if last is None or not isinstance(last.get("seq"), int) or "hash" not in last:
            raise AuditError(
                f"{self.path}: the last record is not a valid trail record, so nothing can be "
                "chained onto it; run `kpigate audit verify` on it and start a new trail"
            )
        return last

    def _sync_directory(self) -> None:
        # A new file's directory entry must reach the disk too, or a crash can lose the file.
        try:
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.path)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every complete, parseable record in file order (no verification: see `verify`)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AuditError(f"{path}: cannot read the audit trail ({exc.strerror})") from None
    lines = data.split(b"\n")[:-1]  # the last piece is empty or a torn line
    return [r for r in (parse_record(line) for line in lines if line.strip()) if r is not None]


def policy_hash(path: str | Path) -> str:
    """sha256 of the policy file's bytes: which rules judged, exactly."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise AuditError(f"{path}: cannot read the policy to hash it ({exc.strerror})") from None


# --- the registry --------------------------------------------------------------------------------

RECORDS_TAG = "kpigate.audit.records"
ARTIFACT_TAG = "kpigate.audit.artifact"
VERIFIED_TAG = "kpigate.audit.verified"


def attach_to_registry(
    registry: Registry, model_name: str, version: str, path: str | Path, rollout_id: str
) -> Verification:
    """Log the trail as an artifact of the version's run and tag the version with its head.

    The head tag is the rollout's anchor (RegistryAnchor sets it after every append; this sets
    it once more, to the rollout's last record): `kpigate audit verify TRAIL --head <tag>` or
    `--from-mlflow`. A trail that does not verify is still attached, tagged
    kpigate.audit.verified=false, so the evidence is kept either way.
    """
    result = verify(path)
    data = Path(path).read_bytes()
    complete = data[: data.rfind(b"\n") + 1].decode("utf-8", errors="replace")
    safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in rollout_id) or "rollout"
    artifact = f"kpigate/audit/{safe_id}.jsonl"
    registry.log_text(model_name, version, complete, artifact)
    own = [r for r in read_records(path) if r.get("rollout") == rollout_id]
    tags = {
        RECORDS_TAG: str(result.records),
        HEAD_TAG: str(own[-1]["hash"]) if own else result.head or "",
        ROLLOUT_TAG: rollout_id,
        ARTIFACT_TAG: artifact,
        VERIFIED_TAG: str(result.ok).lower(),
    }
    for key, value in tags.items():
        registry.set_tag(model_name, version, key, value)
    return result

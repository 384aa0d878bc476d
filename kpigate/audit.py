"""The audit trail: a hash-chained JSON Lines log of every decision and action of a rollout.

Each line is one record: `seq` (1, 2, ...), `time` (UTC), `prev` (the previous record's hash)
and `hash`, the sha256 of the record's canonical JSON without `hash`. Editing, deleting or
reordering a record breaks the chain, and `verify` says where. Removing records from the end
is only visible against a head kept elsewhere: `attach_to_registry` stores it as an MLflow
tag, and `verify(path, expect_head=...)` checks it.

Appends are crash-safe: one O_APPEND write per record, then fsync, under an exclusive flock
so concurrent writers (a runner and a relay) cannot interleave. A crash mid-write leaves at
most a torn last line; earlier records are never touched, and the next append repairs the
tail before chaining onto the last complete record.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import logging
import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kpigate.engine import Cause, GateDecision
from kpigate.engine.evidence import NotComparable, value_of
from kpigate.policy import Policy
from kpigate.registry.base import Registry

log = logging.getLogger(__name__)

GENESIS = "0" * 64  # `prev` of the first record
_RESERVED = ("seq", "time", "prev", "hash")
_CHUNK = 65536


class AuditError(Exception):
    """The trail cannot be appended to or read; the message says which file and why."""


# --- records and hashes ------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    # JSON has no NaN or infinity; strings keep the record hashable and honest about it.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def canonical(record: Mapping[str, Any]) -> bytes:
    """The bytes that are hashed: sorted keys, no spaces, UTF-8."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def record_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _line(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


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
    """One trail file. `append` is safe across threads and processes on one host."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Chain `event` onto the trail and return the record as written (with seq and hash)."""
        clash = [k for k in _RESERVED if k in event]
        if clash:
            raise ValueError(f"audit events cannot set {clash}: the trail assigns them")
        body = _jsonable(event)
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
            record.update(body)
            record["hash"] = record_hash(record)
            data = _line(record)
            written = 0
            while written < len(data):  # a regular file rarely writes short, but it may
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)  # also releases the flock
        if created:
            self._sync_directory()
        return record

    def _repaired_tail(self, fd: int) -> dict[str, Any] | None:
        """The last complete record; a torn last line is completed or cut off first."""
        size = os.fstat(fd).st_size
        if size == 0:
            return None
        end = size
        if os.pread(fd, 1, size - 1) != b"\n":
            start = _rfind_newline(fd, size) + 1
            torn = os.pread(fd, size - start, start)
            whole = _parse(torn)
            if whole is not None and whole.get("hash") == record_hash(whole):
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
        last = _parse(os.pread(fd, end - 1 - start, start))
        if last is None or "seq" not in last or "hash" not in last:
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
    return [r for r in (_parse(line) for line in lines if line.strip()) if r is not None]


# --- verification ------------------------------------------------------------------------------


@dataclass
class Verification:
    ok: bool
    records: int  # complete, parseable records
    problems: list[str] = field(default_factory=list)
    head: str | None = None  # hash of the last complete record
    torn: bool = False


def _short(digest: Any) -> str:
    return f"{str(digest)[:12]}…"


def verify(path: str | Path, expect_head: str | None = None) -> Verification:
    """Check every record's hash, the seq order and the prev links; say what broke, where.

    `expect_head`: a head hash kept elsewhere (the MLflow tag), to catch a cut-off end.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return Verification(False, 0, [f"{path}: cannot read ({exc.strerror})"])
    pieces = data.split(b"\n")
    torn_piece = pieces.pop()  # b"" when the file ends with a newline
    problems: list[str] = []
    parsed: list[tuple[int, dict[str, Any]]] = []  # (line number, record)
    for number, raw in enumerate(pieces, start=1):
        if not raw.strip():
            problems.append(f"line {number}: blank line (the trail never writes one: edited)")
            continue
        record = _parse(raw)
        if record is None:
            problems.append(f"line {number}: not valid JSON (edited or corrupted)")
        elif not all(isinstance(record.get(k), t) for k, t in (("seq", int), ("prev", str))):
            problems.append(f"line {number}: not a trail record (no integer seq / prev)")
        elif not isinstance(record.get("hash"), str):
            problems.append(f"line {number}: not a trail record (no hash)")
        else:
            parsed.append((number, record))

    by_seq: dict[int, tuple[int, dict[str, Any]]] = {}
    for number, record in parsed:
        seq = record["seq"]
        if seq in by_seq:
            problems.append(
                f"line {number}: seq {seq} also on line {by_seq[seq][0]}: a record was "
                "duplicated or replayed"
            )
            continue
        by_seq[seq] = (number, record)
        computed = record_hash(record)
        if computed != record["hash"]:
            problems.append(
                f"line {number} (seq {seq}): hash mismatch: the record was changed after it "
                f"was written (stored {_short(record['hash'])}, content hashes to "
                f"{_short(computed)})"
            )

    problems.extend(_gaps(by_seq))
    problems.extend(_disorder(parsed))
    for seq, (number, record) in sorted(by_seq.items()):
        if seq == 1 and record["prev"] != GENESIS:
            problems.append(
                f"line {number} (seq 1): prev is not the genesis value: the start of the "
                "trail was replaced"
            )
        elif seq > 1 and seq - 1 in by_seq:
            before_line, before = by_seq[seq - 1]
            if record["prev"] != before["hash"]:
                problems.append(
                    f"line {number} (seq {seq}): prev {_short(record['prev'])} is not the hash "
                    f"of seq {seq - 1} (line {before_line}, {_short(before['hash'])}): seq "
                    f"{seq - 1} was rewritten and re-hashed, or records were spliced in"
                )

    head = by_seq[max(by_seq)][1]["hash"] if by_seq else None
    torn = bool(torn_piece)
    if torn:
        problems.append(
            f"line {len(pieces) + 1}: torn last line ({len(torn_piece)} bytes, no newline): an "
            "append was interrupted or the file was cut; the records before it are intact and "
            "the next append repairs the tail"
        )
    if expect_head is not None and expect_head != head:
        hashes = {r["hash"]: s for s, (_, r) in by_seq.items()}
        if expect_head not in hashes:
            problems.append(
                f"the recorded head {_short(expect_head)} is not in the trail: records were "
                "removed from its end, or the trail was replaced"
            )
    return Verification(not problems, len(parsed), problems, head, torn)


def _gaps(by_seq: Mapping[int, tuple[int, dict[str, Any]]]) -> list[str]:
    if not by_seq:
        return []
    problems = []
    missing = [s for s in range(1, max(by_seq) + 1) if s not in by_seq]
    runs: list[list[int]] = []
    for seq in missing:
        if runs and runs[-1][-1] == seq - 1:
            runs[-1].append(seq)
        else:
            runs.append([seq])
    for run in runs:
        first, last = run[0], run[-1]
        which = f"seq {first}" if first == last else f"seqs {first}-{last}"
        after = f"seq {first - 1} (line {by_seq[first - 1][0]})" if first > 1 else "the start"
        problems.append(
            f"{which} missing: the trail jumps from {after} to seq {last + 1} "
            f"(line {by_seq[last + 1][0]}): record(s) were deleted"
        )
    return problems


def _disorder(parsed: list[tuple[int, dict[str, Any]]]) -> list[str]:
    seen: set[int] = set()
    ordered = []
    for number, record in parsed:  # duplicates are reported elsewhere
        if record["seq"] not in seen:
            seen.add(record["seq"])
            ordered.append((number, record["seq"]))
    expected = sorted(seq for _, seq in ordered)
    misplaced = [
        f"line {number} holds seq {seq}"
        for (number, seq), want in zip(ordered, expected, strict=True)
        if seq != want
    ]
    if not misplaced:
        return []
    return [f"records out of order: {', '.join(misplaced)} (seq must increase line by line)"]


# --- event builders ----------------------------------------------------------------------------


def policy_hash(path: str | Path) -> str:
    """sha256 of the policy file's bytes: which rules judged, exactly."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise AuditError(f"{path}: cannot read the policy to hash it ({exc.strerror})") from None


def default_actor(env: Mapping[str, str] | None = None) -> str:
    """KPIGATE_ACTOR (e.g. `argo:<workflow>`), else `kpigate-runner@<host>` with the user."""
    env = os.environ if env is None else env
    if env.get("KPIGATE_ACTOR"):
        return env["KPIGATE_ACTOR"]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        user = "uid" + str(os.getuid())
    return f"kpigate-runner:{user}@{socket.gethostname()}"


def is_routine_soak(record: Mapping[str, Any]) -> bool:
    """A HOLD only because the stage is still soaking: expected, not worth an alert."""
    return (
        record.get("decision") == "hold"
        and not record.get("suspend")
        and record.get("cause") == Cause.SOAKING.value
    )


def _kpi_rules(policy: Policy) -> dict[str, dict[str, Any]]:
    rules = {}
    for kpi in policy.kpis:
        rule = {
            "direction": kpi.direction.value,
            "margin": kpi.margin,
            "margin_type": kpi.margin_type,
            "action": kpi.action.value,
            "scope": kpi.scope.value,
            "gating": kpi.is_gating,
            "fail_beyond_margin": kpi.fail_beyond_margin,
            "min_samples": kpi.min_samples,
        }
        for key in kpi.hypotheses():
            rules[key] = rule
    return rules


def _window_values(policy: Policy, window: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per KPI, each arm's value in this window alone (the figures plot them)."""
    from kpigate.engine import compile_plan
    from kpigate.replay import LineError, parse_line, to_window

    try:
        parsed = to_window(parse_line(json.dumps(window)), compile_plan(policy))
    except (LineError, ValueError, TypeError):
        return {}
    quantiles = {key: kpi.quantile for kpi in policy.kpis for key in kpi.hypotheses()}
    values: dict[str, dict[str, float]] = {}
    for key, obs in parsed.kpis.items():
        for arm_name, arm in (("candidate", obs.candidate), ("baseline", obs.baseline)):
            if arm is None:
                continue
            try:
                values.setdefault(key, {})[arm_name] = value_of(arm, quantiles.get(key))
            except (NotComparable, ValueError, ZeroDivisionError):
                continue
    return values


def decision_event(
    rollout_id: str,
    decision: GateDecision,
    policy: Policy,
    policy_hash: str,
    model_name: str,
    baseline_version: str | None,
    candidate_version: str,
    actor: str,
    *,
    window: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of one gate decision: all KPI evidence, the rules it was judged by, who.

    `window`: the evidence record of the decision's window (as the evidence store holds it);
    when given, each KPI also gets its per-window values, which the report plots.
    """
    body = decision.as_dict()
    rules = _kpi_rules(policy)
    per_window = _window_values(policy, window) if window is not None else {}
    for key, kpi in body["kpis"].items():
        kpi["rule"] = rules.get(key)
        if key in per_window:
            kpi["window_values"] = per_window[key]
    stage = policy.stage_for(decision.stage)
    return {
        "type": "decision",
        "rollout": rollout_id,
        "actor": actor,
        "model": {
            "name": model_name,
            "baseline": baseline_version,
            "candidate": candidate_version,
        },
        "policy": {
            "name": policy.name,
            "hash": policy_hash,
            "method": policy.method.value,
            "alpha": policy.alpha,
            "promotion_alpha": policy.promotion_alpha,
            "max_holds": policy.max_holds,
            "on_max_holds": policy.on_max_holds.value,
        },
        "stage_rules": None
        if stage is None
        else {
            "traffic": stage.traffic,
            "candidate_weight": policy.candidate_weight(stage),
            "soak_s": stage.soak,
            "interval_s": stage.interval,
            "looks": stage.looks,
            "promote_when": stage.promote_when,
        },
        **body,
    }


def action_event(
    rollout_id: str,
    action: str,
    *,
    actor: str,
    model_name: str,
    candidate_version: str,
    baseline_version: str | None = None,
    stage: float | None = None,
    ok: bool = True,
    detail: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Something done to the world: start, deploy (set weight), promote, rollback, suspend,
    resume, approve, reject. `ok=False` with detail["error"] records an attempt that failed."""
    return {
        "type": "action",
        "rollout": rollout_id,
        "action": action,
        "actor": actor,
        "model": {
            "name": model_name,
            "baseline": baseline_version,
            "candidate": candidate_version,
        },
        "stage": stage,
        "ok": ok,
        "detail": dict(detail or {}),
    }


def notification_event(
    severity: str, message: str, fields: Mapping[str, str], actor: str
) -> dict[str, Any]:
    return {
        "type": "notification",
        "rollout": fields.get("rollout", ""),
        "severity": severity,
        "message": message,
        "fields": dict(fields),
        "actor": actor,
    }


# --- the registry --------------------------------------------------------------------------------

RECORDS_TAG = "kpigate.audit.records"
HEAD_TAG = "kpigate.audit.head"
ROLLOUT_TAG = "kpigate.rollout.id"
ARTIFACT_TAG = "kpigate.audit.artifact"
VERIFIED_TAG = "kpigate.audit.verified"


def attach_to_registry(
    registry: Registry, model_name: str, version: str, path: str | Path, rollout_id: str
) -> Verification:
    """Log the trail as an artifact of the version's run and tag the version with its head.

    The head tag is the anchor that makes a cut-off end detectable later
    (`kpigate audit verify TRAIL --head <tag value>`). A trail that does not verify is still
    attached, tagged kpigate.audit.verified=false, so the evidence is kept either way.
    """
    result = verify(path)
    data = Path(path).read_bytes()
    complete = data[: data.rfind(b"\n") + 1].decode("utf-8", errors="replace")
    safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in rollout_id) or "rollout"
    artifact = f"kpigate/audit/{safe_id}.jsonl"
    registry.log_text(model_name, version, complete, artifact)
    tags = {
        RECORDS_TAG: str(result.records),
        HEAD_TAG: result.head or "",
        ROLLOUT_TAG: rollout_id,
        ARTIFACT_TAG: artifact,
        VERIFIED_TAG: str(result.ok).lower(),
    }
    for key, value in tags.items():
        registry.set_tag(model_name, version, key, value)
    return result

"""Verify an audit trail: every record's MAC or hash, seq order, prev links, anchored heads,
and the evidence its decisions were judged on; each problem says what broke and where."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kpigate.audit_anchor import WHOLE_TRAIL, AnchoredHead
from kpigate.audit_chain import (
    FROM_ENV,
    GENESIS,
    KEY_ENV,
    MAC_SCHEME,
    AuditError,
    KeyArg,
    evidence_digest,
    hash_checks,
    parse_record,
    record_hash,
    resolve_key,
)


@dataclass
class Verification:
    ok: bool
    records: int  # complete, parseable records
    problems: list[str] = field(default_factory=list)
    head: str | None = None  # hash of the last complete record
    torn: bool = False
    keyed: bool = False  # every record's MAC checked under the key
    warnings: list[str] = field(default_factory=list)  # true, but no sign of tampering


def _short(digest: Any) -> str:
    return f"{str(digest)[:12]}…"


def _lines_of(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:5])
    return shown + (f" and {len(numbers) - 5} more" if len(numbers) > 5 else "")


UNKEYED_WARNING = (
    "UNKEYED TRAIL: its hashes are plain sha256, so anyone who can write the file can rewrite "
    f"records and recompute the whole chain undetected; set {KEY_ENV} or {KEY_ENV}_FILE for "
    "the writers and for verify, and anchor the head outside the file"
)


def verify(
    path: str | Path,
    expect_head: str | None = None,
    *,
    key: KeyArg = FROM_ENV,
    anchors: Sequence[AnchoredHead] = (),
) -> Verification:
    """Check every record's MAC or hash, the seq order and the prev links, and each anchored
    head; say what broke, where.

    `expect_head`: a head hash kept elsewhere (the MLflow tag), the same as one anchor.
    `key`: by default from KPIGATE_AUDIT_KEY(_FILE). With a key, an unkeyed record is a
    problem (a fabricated trail is unkeyed); without one, a keyed record cannot be checked.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return Verification(False, 0, [f"{path}: cannot read ({exc.strerror})"])
    try:
        audit_key = resolve_key(key)
    except AuditError as exc:
        return Verification(False, 0, [str(exc)])
    pieces = data.split(b"\n")
    torn_piece = pieces.pop()  # b"" when the file ends with a newline
    problems: list[str] = []
    parsed: list[tuple[int, dict[str, Any]]] = []  # (line number, record)
    for number, raw in enumerate(pieces, start=1):
        if not raw.strip():
            problems.append(f"line {number}: blank line (the trail never writes one: edited)")
            continue
        record = parse_record(raw)
        if record is None:
            problems.append(f"line {number}: not valid JSON (edited or corrupted)")
        elif not all(isinstance(record.get(k), t) for k, t in (("seq", int), ("prev", str))):
            problems.append(f"line {number}: not a trail record (no integer seq / prev)")
        elif not isinstance(record.get("hash"), str):
            problems.append(f"line {number}: not a trail record (no hash)")
        else:
            parsed.append((number, record))

    by_seq: dict[int, tuple[int, dict[str, Any]]] = {}
    unkeyed: list[int] = []
    unchecked: dict[str, list[int]] = {}  # mac field -> lines: keyed, but not with our key
    for number, record in parsed:
        seq = record["seq"]
        if seq in by_seq:
            problems.append(
                f"line {number}: seq {seq} also on line {by_seq[seq][0]}: a record was "
                "duplicated or replayed"
            )
            continue
        by_seq[seq] = (number, record)
        mac = record.get("mac")
        if mac is None:
            unkeyed.append(number)
        elif not (isinstance(mac, str) and mac.startswith(MAC_SCHEME + ":")):
            problems.append(f"line {number} (seq {seq}): unknown mac scheme {str(mac)[:40]!r}")
            continue
        checks = hash_checks(record, audit_key)
        if checks is None:
            unchecked.setdefault(str(mac), []).append(number)
        elif not checks:
            problems.append(
                f"line {number} (seq {seq}): hash mismatch: the record was changed after it "
                f"was written (stored {_short(record['hash'])}, content hashes to "
                f"{_short(record_hash(record, audit_key if mac else None))})"
            )

    warnings: list[str] = []
    if audit_key is not None and unkeyed:
        problems.append(
            f"{len(unkeyed)} record(s) without a MAC (lines {_lines_of(unkeyed)}) in a trail "
            "checked with the key: written by someone without the key (forged or fabricated) "
            f"or by a writer missing {KEY_ENV}"
        )
    elif unkeyed:
        warnings.append(UNKEYED_WARNING)
    for mac, numbers in unchecked.items():
        key_id = mac.partition(":")[2]
        if audit_key is None:
            problems.append(
                f"{len(numbers)} record(s) keyed with key id {key_id} (lines "
                f"{_lines_of(numbers)}) cannot be checked: set {KEY_ENV} or {KEY_ENV}_FILE"
            )
        else:
            problems.append(
                f"{len(numbers)} record(s) keyed with key id {key_id}, not this key "
                f"({audit_key.key_id}) (lines {_lines_of(numbers)}): another key, or forged"
            )

    problems.extend(_gaps(by_seq))
    problems.extend(_disorder(parsed))
    problems.extend(_links(by_seq))

    head = by_seq[max(by_seq)][1]["hash"] if by_seq else None
    torn = bool(torn_piece)
    if torn:
        problems.append(
            f"line {len(pieces) + 1}: torn last line ({len(torn_piece)} bytes, no newline): an "
            "append was interrupted or the file was cut; the records before it are intact and "
            "the next append repairs the tail"
        )
    every = [*anchors, *([AnchoredHead(expect_head)] if expect_head is not None else [])]
    for anchored in every:
        problems.extend(_anchor_problems(anchored, by_seq))
    keyed = audit_key is not None and not unkeyed and not unchecked and bool(by_seq)
    return Verification(not problems, len(parsed), problems, head, torn, keyed, warnings)


def _links(by_seq: Mapping[int, tuple[int, dict[str, Any]]]) -> list[str]:
    problems = []
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
    return problems


def _anchor_problems(
    anchored: AnchoredHead, by_seq: Mapping[int, tuple[int, dict[str, Any]]]
) -> list[str]:
    at = next((s for s, (_, r) in by_seq.items() if r["hash"] == anchored.head), None)
    if at is None:
        return [
            f"the anchored head {_short(anchored.head)} is not in the trail: records were "
            "removed from its end, rewritten, or the trail was replaced"
        ]
    if anchored.seq is not None and anchored.seq != at:
        return [f"the anchored head {_short(anchored.head)} was seq {anchored.seq}, not {at}"]
    scope = anchored.rollout if anchored.rollout is not None else by_seq[at][1].get("rollout")
    after = [
        (seq, number)
        for seq, (number, record) in sorted(by_seq.items())
        if seq > at and (scope == WHOLE_TRAIL or record.get("rollout") == scope)
    ]
    if not after:
        return []
    whose = "records" if scope == WHOLE_TRAIL else f"records of rollout {scope!r}"
    return [
        f"{len(after)} {whose} after the anchored head (seq {at}), from seq {after[0][0]} "
        f"(line {after[0][1]}): appended without updating the anchor, i.e. forged, or the "
        "anchor update failed (the writer logged it)"
    ]


def verify_evidence(
    records: Sequence[Mapping[str, Any]], windows: Sequence[Mapping[str, Any]]
) -> list[str]:
    """Problems where a decision's `evidence_sha256` does not match the evidence store's window
    (same rollout, stage and window): the evidence was changed after it was judged."""
    stored = {
        (str(w.get("rollout")), w.get("stage"), w.get("window")): evidence_digest(w)
        for w in windows
    }
    problems = []
    for record in records:
        digest = record.get("evidence_sha256")
        if record.get("type") != "decision" or digest is None:
            continue
        where = (str(record.get("rollout")), record.get("stage"), record.get("window"))
        found = stored.get(where)
        label = f"seq {record.get('seq')} (rollout {where[0]}, window {where[2]} @ {where[1]}%)"
        if found is None:
            problems.append(f"{label}: its evidence window is not in the evidence store")
        elif found != digest:
            problems.append(
                f"{label}: the evidence window differs from the one judged (digest "
                f"{_short(found)}, judged {_short(digest)}): the evidence was rewritten"
            )
    return problems


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

"""Check and read an audit trail (keyed, hash-chained JSON Lines written by the rollout).

  kpigate audit verify TRAIL [--head H] [--anchor-file F] [--from-mlflow MODEL:VERSION]
                             [--evidence STORE] [--require-key]
  kpigate audit show TRAIL [--rollout ID]    the decision trail, one line per record
  kpigate audit show TRAIL --follow          and then each new record as it is written

The key comes from KPIGATE_AUDIT_KEY or KPIGATE_AUDIT_KEY_FILE (a file holding it), never from
argv. With it, verify checks every record's HMAC, and a record without one (forged, or a trail
fabricated by someone without the key) is a problem; without it an unkeyed trail verifies with
a loud warning, and a keyed one cannot be checked. Anchors are heads kept outside the file
(--head, the model version's kpigate.audit.head tag via --from-mlflow, or a local anchor file):
records cut off the end, appended after the anchored head, or a replaced trail fail.
--follow (like `argo logs --follow`) waits for new records; with --rollout it ends when that
rollout is promoted, rolled back, rejected or suspended, otherwise on Ctrl-C.
Exit status: 0 intact (verify) or shown (show), 1 tampered or torn, 2 unreadable or no key.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kpigate.audit import (
    AnchoredHead,
    AuditError,
    AuditKey,
    FileAnchor,
    audit_key_from_env,
    is_routine_soak,
    read_records,
    verify,
    verify_evidence,
)
from kpigate.audit_anchor import parse_head


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", metavar="{verify,show}", required=True)
    check = sub.add_parser(
        "verify",
        help="check the keyed hash chain and its anchors; exit 1 on any problem",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("trail", help="audit trail file (JSON Lines)")
    check.add_argument(
        "--head",
        action="append",
        default=[],
        help="an anchored head, HASH or SEQ:HASH (the kpigate.audit.head tag); repeatable",
    )
    check.add_argument(
        "--anchor-file", action="append", default=[], help="a local anchor file; repeatable"
    )
    check.add_argument(
        "--from-mlflow",
        action="append",
        default=[],
        metavar="MODEL:VERSION",
        help="read the anchor from this model version's tags in MLflow; repeatable",
    )
    check.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"),
        help="MLflow for --from-mlflow and --evidence ($MLFLOW_TRACKING_URI)",
    )
    check.add_argument(
        "--evidence", help="evidence store (file or mlflow://...): check each judged window"
    )
    check.add_argument(
        "--require-key",
        action="store_true",
        help="exit 2 unless KPIGATE_AUDIT_KEY or KPIGATE_AUDIT_KEY_FILE is set",
    )
    show = sub.add_parser("show", help="print the decision trail")
    show.add_argument("trail", help="audit trail file (JSON Lines)")
    show.add_argument("--rollout", help="only this rollout id")
    show.add_argument(
        "--kpis", action="store_true", help="list every KPI's verdict under each decision"
    )
    show.add_argument(
        "--follow", "-f", action="store_true", help="keep printing records as they are written"
    )
    show.add_argument(
        "--poll", type=float, default=1.0, help="seconds between reads with --follow (1)"
    )


def run(args: argparse.Namespace) -> int:
    if args.audit_command == "verify":
        return _verify(args)
    if args.follow:
        return follow(args.trail, args.rollout, args.kpis, args.poll)
    return _show(args.trail, args.rollout, args.kpis)


def _anchors(args: argparse.Namespace) -> list[AnchoredHead]:
    """Every anchor given; ValueError/RegistryError with the message on one that cannot be read."""
    anchors = [parse_head(text) for text in args.head]
    for path in args.anchor_file:
        anchored = FileAnchor(path).read()
        if anchored is None:
            raise ValueError(f"{path}: no such anchor file")
        anchors.append(anchored)
    refs = []
    for ref in args.from_mlflow:  # all checked before MLflow is asked
        model, sep, version = ref.rpartition(":")
        if not sep or not model or not version:
            raise ValueError(f"--from-mlflow {ref!r}: expected MODEL:VERSION")
        refs.append((model, version))
    if refs:
        from kpigate.audit import RegistryAnchor
        from kpigate.registry.mlflow import MlflowRegistry

        registry = MlflowRegistry(args.tracking_uri)
        for model, version in refs:
            anchored = RegistryAnchor(registry, model, version, "").read()
            if anchored is None:
                raise ValueError(f"{model} version {version} has no kpigate.audit.head tag")
            anchors.append(anchored)
    return anchors


def _verify(args: argparse.Namespace) -> int:
    from kpigate.registry.base import RegistryError

    trail = args.trail
    if not Path(trail).is_file():
        print(f"kpigate audit: {trail}: no such file (give the trail's path)", file=sys.stderr)
        return 2
    try:
        key: AuditKey | None = audit_key_from_env()
        anchors = _anchors(args)
    except (AuditError, ValueError, RegistryError) as exc:
        print(f"kpigate audit: {exc}", file=sys.stderr)
        return 2
    if args.require_key and key is None:
        print(
            "kpigate audit: --require-key: set KPIGATE_AUDIT_KEY or KPIGATE_AUDIT_KEY_FILE",
            file=sys.stderr,
        )
        return 2
    result = verify(trail, key=key, anchors=anchors)
    if args.evidence:
        from kpigate.store.factory import open_store

        try:
            windows = open_store(args.evidence, args.tracking_uri).read()
        except Exception as exc:  # any store: the message is what the operator needs
            print(
                f"kpigate audit: cannot read the evidence {args.evidence}: {exc}", file=sys.stderr
            )
            return 2
        found = verify_evidence(read_records(trail), [w.as_json() for w in windows])
        result.problems.extend(found)
        result.ok = result.ok and not found
    for warning in result.warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    if result.ok:
        how = f"keyed (key id {key.key_id})" if result.keyed and key else "UNKEYED (sha256 only)"
        checked = f", {len(anchors)} anchor(s) checked" if anchors else ", no anchor checked"
        print(f"{trail}: intact, {result.records} records, {how}{checked}, head {result.head}")
        return 0
    print(
        f"{trail}: NOT intact ({result.records} readable records, "
        f"{len(result.problems)} problem(s)):",
        file=sys.stderr,
    )
    for problem in result.problems:
        print(f"  - {problem}", file=sys.stderr)
    return 1


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:+.4g}" if isinstance(value, float) else str(value)


def format_record(record: Mapping[str, Any], with_kpis: bool = False) -> list[str]:
    """Readable lines for one record: a headline and indented detail."""
    head = f"#{record.get('seq', '?'):<4} {record.get('time', '')}  {record.get('rollout', '')}"
    kind = record.get("type")
    actor = f"  by {record.get('actor')}" if record.get("actor") else ""
    if kind == "decision":
        decision = str(record.get("decision", "?")).upper()
        if record.get("suspend"):
            decision += " (suspended)"
        if record.get("final"):
            decision += " (final)"
        stage = record.get("stage")
        lines = [f"{head}  window {record.get('window')} @ {stage:g}%  {decision}{actor}"]
        lines += [f"      {reason}" for reason in record.get("reasons", [])]
        lines += [f"      alert: {alert}" for alert in record.get("alerts", [])]
        if with_kpis:
            for key, kpi in (record.get("kpis") or {}).items():
                ci = kpi.get("ci")
                ci_text = f"[{_num(ci[0])}, {_num(ci[1])}]" if ci else "-"
                lines.append(
                    f"        {key:<18} {kpi.get('verdict', '?'):<12} "
                    f"estimate {_num(kpi.get('estimate'))} CI {ci_text}"
                )
        return lines
    if kind == "action":
        ok = "" if record.get("ok", True) else "  FAILED"
        stage = record.get("stage")
        where = f" @ {stage:g}%" if isinstance(stage, int | float) else ""
        detail = record.get("detail") or {}
        extra = "  " + ", ".join(f"{k}={v}" for k, v in detail.items()) if detail else ""
        return [f"{head}  {str(record.get('action', '?')).upper()}{where}{ok}{actor}{extra}"]
    if kind == "notification":
        return [
            f"{head}  notified {record.get('severity')}: {record.get('message')}{actor}",
        ]
    return [f"{head}  {kind or 'record'}{actor}"]


def _show(trail: str, rollout: str | None, with_kpis: bool) -> int:
    try:
        records = read_records(trail)
    except AuditError as exc:
        print(f"kpigate audit: {exc}", file=sys.stderr)
        return 2
    if rollout is not None:
        records = [r for r in records if r.get("rollout") == rollout]
        if not records:
            print(f"kpigate audit: no records of rollout {rollout!r} in {trail}", file=sys.stderr)
            return 2
    skipped = 0
    for record in records:
        if record.get("type") == "decision" and is_routine_soak(record) and not with_kpis:
            skipped += 1  # soaking looks say nothing new; --kpis shows every look
            continue
        for line in format_record(record, with_kpis):
            print(line)
    if skipped:
        print(f"({skipped} routine soaking looks not shown; --kpis shows them)")
    result = verify(trail)
    status = "intact" if result.ok else f"NOT intact: run `kpigate audit verify {trail}`"
    print(f"chain: {status}")
    return 0


# Actions after which a rollout writes nothing more (until an operator reruns it).
ENDING_ACTIONS = frozenset({"promote", "rollback", "reject", "suspend"})


def follow(
    trail: str,
    rollout: str | None,
    with_kpis: bool,
    poll_s: float = 1.0,
    sleep: Any = time.sleep,
    max_polls: int | None = None,
) -> int:
    """Print the trail's records, then each new one; the trail may not exist yet (a rollout
    about to start). Appends only ever add records, so the count read so far is the cursor."""
    seen = 0
    polls = 0
    while True:
        try:
            records = read_records(trail) if Path(trail).exists() else []
        except AuditError as exc:
            print(f"kpigate audit: {exc}", file=sys.stderr)
            return 2
        for record in records[seen:]:
            if rollout is not None and record.get("rollout") != rollout:
                continue
            if record.get("type") == "decision" and is_routine_soak(record) and not with_kpis:
                continue
            for line in format_record(record, with_kpis):
                print(line, flush=True)
            if rollout is not None and record.get("action") in ENDING_ACTIONS:
                return 0
        seen = len(records)
        polls += 1
        if max_polls is not None and polls >= max_polls:
            return 0
        sleep(poll_s)

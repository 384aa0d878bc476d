"""Check and read an audit trail (hash-chained JSON Lines written by the rollout).

  kpigate audit verify TRAIL [--head HASH]   exit 0 when intact, 1 listing each problem
  kpigate audit show TRAIL [--rollout ID]    the decision trail, one line per record
  kpigate audit show TRAIL --follow          and then each new record as it is written

--head is the trail head recorded elsewhere (the model version's kpigate.audit.head tag in
MLflow); with it, verify also catches records cut off the end of the file. --follow (like
`argo logs --follow`) waits for new records; with --rollout it ends when that rollout is promoted,
rolled back, rejected or suspended, otherwise on Ctrl-C.
Exit status: 0 intact (verify) or shown (show), 1 tampered or torn, 2 unreadable.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kpigate.audit import AuditError, is_routine_soak, read_records, verify


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", metavar="{verify,show}", required=True)
    check = sub.add_parser("verify", help="check the hash chain; exit 1 on any problem")
    check.add_argument("trail", help="audit trail file (JSON Lines)")
    check.add_argument("--head", help="expected head hash (the kpigate.audit.head tag)")
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
        return _verify(args.trail, args.head)
    if args.follow:
        return follow(args.trail, args.rollout, args.kpis, args.poll)
    return _show(args.trail, args.rollout, args.kpis)


def _verify(trail: str, head: str | None) -> int:
    if not Path(trail).is_file():
        print(f"kpigate audit: {trail}: no such file (give the trail's path)", file=sys.stderr)
        return 2
    result = verify(trail, expect_head=head)
    if result.ok:
        print(f"{trail}: intact, {result.records} records, head {result.head}")
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

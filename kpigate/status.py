"""Where a rollout stands, per KPI: estimate, interval, verdict, samples and what it waits for.

The status is not a copy of what the runner printed: the rollout's evidence (a local file, or
the MLflow run artifacts an Argo rollout writes) is replayed through the decision engine, the
same code as evaluate-gate, so what you see is what the gate will decide at this point.

  kpigate status --policy P --model-name M             newest local evidence in --state-dir
  kpigate status --policy P --evidence FILE|mlflow://models/M/V/ROLLOUT [--tracking-uri URI]
  kpigate status ... --watch [--every 5]               redraw as new windows arrive (Ctrl-C)
  kpigate status ... --metrics                         the same state in Prometheus' text format
  kpigate status ... --serve-metrics 9108              serve it on :9108/metrics for a scrape

With --model-name, a pause an operator asked for (kpigate pause) is shown too.
Exit status: 0 shown, 2 bad input (no evidence found, corrupt evidence, bad policy).
Environment: MLFLOW_TRACKING_URI when --tracking-uri is not given (mlflow:// evidence).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from kpigate.engine import GateDecision, KpiReport, Verdict
from kpigate.policy import Policy, PolicyError, load_policy


class StatusError(ValueError):
    """The status cannot be computed as asked; the message says what to change."""


@dataclass(frozen=True)
class GateStatus:
    """One rollout's state as the gate sees it now."""

    rollout: str
    evidence: str
    decision: GateDecision
    windows: int  # windows of evidence in the store
    max_holds: int
    pending: Mapping[str, Any] | None = None  # the last window's label cohort still maturing
    paused_by: str | None = None


def find_evidence(state_dir: str | Path, model: str) -> Path:
    """The newest `<model>-<version>.jsonl` the local runner wrote (kpigate/runner.py)."""
    found = sorted(
        Path(state_dir).glob(f"{model}-*.jsonl"), key=lambda p: (p.stat().st_mtime, p.name)
    )
    if not found:
        raise StatusError(
            f"no evidence of {model!r} in {state_dir}/ (the runner writes "
            f"{state_dir}/{model}-<version>.jsonl); pass --evidence FILE or mlflow://..."
        )
    return found[-1]


def read_status(
    policy: Policy,
    evidence: str,
    tracking_uri: str | None = None,
    rollout: str | None = None,
) -> GateStatus:
    """Replay the evidence through the engine and return the latest decision with context."""
    from kpigate.replay import LineError
    from kpigate.steps.evaluate_gate import judge_evidence
    from kpigate.store import StoreError, open_store

    try:
        records = open_store(evidence, tracking_uri).read()
    except StoreError as exc:
        raise StatusError(str(exc)) from None
    ids = list(dict.fromkeys(r.rollout_id for r in records))
    if rollout is not None:
        records = [r for r in records if r.rollout_id == rollout]
    elif len(ids) > 1:
        raise StatusError(f"{evidence} holds rollouts {', '.join(ids)}: pick one with --rollout")
    if not records:
        raise StatusError(f"{evidence}: no windows of evidence yet" + (
            f" for rollout {rollout!r}" if rollout else ""))  # fmt: skip
    stage = float(records[-1].stage)
    try:
        decision = judge_evidence(policy, records, stage)
    except LineError as exc:
        raise StatusError(f"{evidence} is corrupt: {exc}") from None
    return GateStatus(
        rollout=rollout or ids[0],
        evidence=evidence,
        decision=decision,
        windows=len(records),
        max_holds=policy.max_holds,
        pending=None if records[-1].pending is None else records[-1].pending.as_json(),
    )


# --- text ------------------------------------------------------------------------------------


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:+.4g}" if value != 0 else "+0"  # never "-0"


def waits_for(report: KpiReport) -> str:
    """What would settle this KPI: nothing once it passed or failed, else the engine's reason
    (burn-in counts, the bound still short of the margin, stale data)."""
    if report.verdict is Verdict.INCONCLUSIVE:
        return report.reason
    return "-"


def _headline(status: GateStatus) -> str:
    d = status.decision
    state = d.decision.value.upper()
    if d.suspend:
        state += " (suspended: resume or abort)"
    elif d.final:
        state += " (final)"
    return (
        f"rollout {status.rollout}: stage {d.stage:g}%, window {d.window} "
        f"(look {d.look} of the stage, {d.holds} of {status.max_holds} holds), {state}"
    )


def render_text(status: GateStatus, now: float | None = None) -> str:
    d = status.decision
    lines = [_headline(status)]
    if status.paused_by is not None:
        lines.append(f"  PAUSED by {status.paused_by or 'an operator'}: `kpigate resume` goes on")
    lines += [f"  {reason}" for reason in d.reasons]
    lines += [f"  alert: {alert}" for alert in d.alerts]
    if status.pending:
        matures = status.pending.get("matures_at")
        when = ""
        if isinstance(matures, int | float):
            left = matures - (time.time() if now is None else now)
            when = f" in {left:.0f}s" if left > 0 else " (due now)"
        lines.append(f"  labels of window {status.pending.get('window', '?')} are maturing{when}")
    rows = [("KPI", "verdict", "estimate", "interval", "margin", "samples c/b", "waits for")]
    for key, report in d.kpis.items():
        ci = f"[{_num(report.ci[0])}, {_num(report.ci[1])}]" if report.ci else "-"
        margin = "-" if report.margin is None else f"{report.margin:.4g}"
        samples = f"{report.samples[0]:g}/{report.samples[1]:g}"
        rows.append((key, report.verdict.value, _num(report.estimate), ci, margin, samples,
                     waits_for(report)))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    for row in rows:
        cells = [cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in
                 enumerate(zip(row, widths, strict=False))]  # fmt: skip
        lines.append("  " + "  ".join([*cells, row[6]]).rstrip())
    calibrated = [
        f"{k} {r.calibration_windows}" for k, r in d.kpis.items() if r.calibration_windows
    ]
    if calibrated:
        lines.append(
            "  between-window variance from A/A calibration windows before the rollout: "
            + ", ".join(calibrated)
        )
    plural = "" if status.windows == 1 else "s"
    lines.append(f"  evidence: {status.evidence} ({status.windows} window{plural})")
    return "\n".join(lines)


# --- the command -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--policy", required=True, help="the rollout's policy YAML")
    add("--evidence", default="", help="evidence file or mlflow://models/<m>/<v>/<rollout>")
    add("--model-name", default="", help="find its newest evidence in --state-dir")
    add("--state-dir", default=".kpigate", help="the local runner's --state-dir (.kpigate)")
    add("--tracking-uri", default=None, help="MLflow, for mlflow:// evidence")
    add("--rollout", default=None, help="rollout id, when the evidence holds several")
    add("--watch", action="store_true", help="redraw every --every seconds until Ctrl-C")
    add("--every", type=float, default=5.0, help="seconds between redraws (%(default)s)")
    add("--metrics", action="store_true", help="print the Prometheus text format instead")
    add("--serve-metrics", type=int, default=0, metavar="PORT",
        help="serve the state on 127.0.0.1:PORT/metrics, re-read at each scrape")  # fmt: skip
    add("--json", action="store_true", help="one JSON object (the decision record)")


def _status_reader(args: argparse.Namespace, policy: Policy) -> Callable[[], GateStatus]:
    def read() -> GateStatus:
        evidence = args.evidence or (
            str(find_evidence(args.state_dir, args.model_name)) if args.model_name else ""
        )
        if not evidence:
            raise StatusError("give --evidence FILE|mlflow://... or --model-name M")
        status = read_status(policy, evidence, args.tracking_uri, args.rollout)
        if args.model_name:
            from kpigate.control import ControlError, read_order

            try:
                order = read_order(args.state_dir, args.model_name)
            except ControlError as exc:
                raise StatusError(str(exc)) from None
            if order is not None and order.command == "pause":
                status = replace(status, paused_by=order.actor)
        return status

    return read


def _show(status: GateStatus, args: argparse.Namespace, out: TextIO) -> None:
    if args.metrics:
        from kpigate.observability.gate_metrics import exposition

        out.write(exposition([status]))
    elif args.json:
        from kpigate.replay import decision_record

        out.write(json.dumps(decision_record(status.rollout, status.decision)) + "\n")
    else:
        out.write(render_text(status) + "\n")
    out.flush()


def watch(
    read: Callable[[], GateStatus],
    show: Callable[[GateStatus], None],
    every_s: float,
    sleep: Callable[[float], None] = time.sleep,
    max_draws: int | None = None,
) -> None:
    """Redraw when the evidence moved; stop once the gate's decision is final."""
    last: tuple[int, int, str | None] | None = None
    draws = 0
    while True:
        status = read()
        key = (status.windows, status.decision.window, status.paused_by)
        if key != last:
            show(status)
            draws += 1
            last = key
        if status.decision.final or (max_draws is not None and draws >= max_draws):
            return
        sleep(every_s)


def run(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        print(f"kpigate status: bad policy:\n{exc}", file=sys.stderr)
        return 2
    read = _status_reader(args, policy)
    try:
        if args.serve_metrics:
            from kpigate.observability.gate_metrics import serve

            serve(read, args.serve_metrics)
            return 0
        if args.watch:
            clear = "" if args.metrics or args.json or not sys.stdout.isatty() else "\x1b[H\x1b[2J"

            def show(status: GateStatus) -> None:
                sys.stdout.write(clear + time.strftime("%H:%M:%S  "))
                _show(status, args, sys.stdout)

            watch(read, show, args.every)
            return 0
        _show(read(), args, sys.stdout)
    except StatusError as exc:
        print(f"kpigate status: {exc}", file=sys.stderr)
        return 2
    return 0

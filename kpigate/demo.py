"""Replay the bundled fraud case study through the gate and print each decision with its evidence.

Two recorded rollouts (kpigate/examples/fraud-rollout.jsonl, judged with
kpigate/examples/policy.yaml):
  good  a LightGBM candidate with higher recall; a latency spike at 50% holds the rollout
        until it clears, then it reaches 100%
  bad   a candidate 5pp worse on recall, rolled back as soon as the evidence allows
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from typing import TextIO

from kpigate.engine import Decision, GateDecision, KpiReport, Verdict
from kpigate.policy import PolicyError, load_policy
from kpigate.replay import LineError, Replayer, replay_lines

_MARK = {Decision.PROMOTE: "PROMOTE", Decision.HOLD: "hold", Decision.ROLLBACK: "ROLLBACK"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario",
        choices=["good", "bad", "all"],
        default="all",
        help="which recorded rollout to replay (default: all)",
    )
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="print the KPI table at every window"
    )


def _kpi_line(key: str, report: KpiReport) -> str:
    if report.ci is None or report.estimate is None:
        return f"      {key:<16} {report.verdict.value:<12} {report.reason}"
    lo, hi = report.ci
    return (
        f"      {key:<16} {report.verdict.value:<12} diff {report.estimate:+.4g} "
        f"ci [{lo:+.4g}, {hi:+.4g}] margin {report.margin:g}"
    )


def _print_decision(rollout: str, decision: GateDecision, verbose: bool, out: TextIO) -> None:
    print(
        f"  {rollout:<5} window {decision.window:>2}  stage {decision.stage:>5g}%  "
        f"{_MARK[decision.decision]:<8}  {decision.reasons[0]}",
        file=out,
    )
    for extra in decision.reasons[1:]:
        print(f"{'':>42}{extra}", file=out)
    for alert in decision.alerts:
        print(f"{'':>42}alert: {alert}", file=out)
    interesting = decision.decision is not Decision.HOLD or decision.look == 1
    if verbose or interesting:
        for key, report in decision.kpis.items():
            if verbose or report.verdict is not Verdict.INCONCLUSIVE or decision.final:
                print(_kpi_line(key, report), file=out)


def run(args: argparse.Namespace) -> int:
    out = sys.stdout
    examples = resources.files("kpigate") / "examples"
    try:
        policy = load_policy(str(examples / "policy.yaml"))
    except PolicyError as exc:
        print(f"kpigate demo: {exc}", file=sys.stderr)
        return 2
    print(
        f"kpigate demo: replaying the recorded fraud case study with policy '{policy.name}' "
        f"({policy.method.value}, alpha {policy.alpha:g} per rollout)\n",
        file=out,
    )
    replayer = Replayer(policy)
    trail: dict[str, list[GateDecision]] = {}
    lines = (examples / "fraud-rollout.jsonl").read_text().splitlines()
    try:
        for _, rollout, decision in replay_lines(lines, replayer):
            if args.scenario not in ("all", rollout):
                continue
            trail.setdefault(rollout, []).append(decision)
            _print_decision(rollout, decision, args.verbose, out)
    except LineError as exc:
        print(f"kpigate demo: bundled example is malformed: {exc}", file=sys.stderr)
        return 2
    print("\ndecision trail:", file=out)
    for rollout, decisions in trail.items():
        steps = [
            f"w{d.window}@{d.stage:g}% {d.decision.value}"
            for d in decisions
            if d.decision is not Decision.HOLD or d.reasons[0].split(":")[0] != "soaking"
        ]
        outcome = decisions[-1]
        result = (
            "promoted to 100%: the candidate becomes champion"
            if outcome.final and outcome.decision is Decision.PROMOTE
            else "rolled back: the baseline keeps serving"
            if outcome.decision is Decision.ROLLBACK
            else "still open"
        )
        print(f"  {rollout}: {' -> '.join(steps)}  => {result}", file=out)
    return 0

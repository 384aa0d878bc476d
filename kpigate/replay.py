"""Replay recorded KPI windows through the decision gate, one JSON decision per input line.

Input: JSON Lines, one evaluation window per line, in order:

  {"rollout": "r1", "window": 1, "stage": 5,
   "kpis": {"recall": {"baseline": {"successes": 8731, "trials": 9966},
                       "candidate": {"successes": 451, "trials": 512}}}}

`rollout` is optional; each rollout id is judged independently. Optional: "stale": true
(the collector marked this window's data too old), "note": "...", "time": "...",
"served_from" / "served_to" (Unix seconds: the interval this window's traffic was served in).
With delayed labels (a policy `labels` section) the label KPIs of a line belong to a matured
cohort, named by "cohort": {"window": 3, "stage": 5, "matured_at": 1764590400.0} (the serving
window, its stage or null if it straddles two, Unix seconds); a line without a cohort carries
only immediate KPIs and may say what it waits for: "pending": {"window": 4, "matures_at": ...}.
A/A calibration windows (the baseline's traffic before the rollout in two halves by user,
"baseline" one half and "candidate" the other) come first, with "calibration": true and
negative window numbers (-24 .. -1); they feed the variance only and give a line with
"calibration": true and cause "calibration", never a look (docs/engine.md).
The schema is kpigate/evidence_record.py (WindowRecord; docs/prediction-log.md). Each arm of a
KPI is one of (by KPI type; null means no data from that arm):
  rate      {"successes": S, "trials": N}, optionally "deff": D (>= 0, the arm's design
            effect over the rollout so far with the user as the unit; docs/engine.md)
  quantile  {"buckets": {"0.05": 10, "0.1": 40, "+Inf": 50}}   cumulative counts per bound
  auc       {"positives": {<buckets>}, "negatives": {<buckets>}}  score histograms per class
  gap       {"a": {"successes": S, "trials": N}, "b": {...}}      rate in two segments

Output: one JSON object per input line: rollout, window, stage, decision
(promote|hold|rollback), reasons, and per KPI its estimate (candidate - baseline),
anytime-valid ci, verdict (pass|fail|inconclusive), margin, evidence and action.

Without --policy every KPI is a rate where higher is better, margin 0.01 (absolute),
action rollback, alpha 0.05 for the whole rollout, stages 5/25/50/100 each soaking six
windows. With --method sigma and no policy, mu and sigma come from the baseline's first three
windows of each KPI (mean and sample standard deviation of its per-window values).
Exit status: 0 on success, 2 on a malformed line (its number and the problem are printed)
or a bad policy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, TextIO

from kpigate.engine import (
    GateDecision,
    GatePlan,
    RolloutState,
    UnknownStage,
    Window,
    compile_plan,
    judge,
)
from kpigate.evidence_record import RecordError, WindowRecord, parse_record
from kpigate.policy import Method, Policy, PolicyError, default_policy, load_policy


class LineError(ValueError):
    """A malformed input line; the message says what is wrong."""


# --- parsing: the window record's schema (kpigate/evidence_record.py) --------------------------


def parse_line(text: str) -> WindowRecord:
    try:
        return parse_record(text)
    except RecordError as exc:
        raise LineError(str(exc)) from None


def to_window(record: WindowRecord, plan: GatePlan) -> Window:
    try:
        return record.to_window(plan.kpi_types)
    except RecordError as exc:
        raise LineError(str(exc)) from None


# --- replay --------------------------------------------------------------------------------------


@dataclass
class _Rollout:
    plan: GatePlan
    state: RolloutState
    last_window: int


class Replayer:
    """Keeps one gate state per rollout id; policies are compiled once and shared."""

    def __init__(
        self,
        policy: Policy | None,
        method: Method | None = None,
        alpha: float | None = None,
        margin: float | None = None,
    ) -> None:
        self._policy = policy
        self._method, self._alpha, self._margin = method, alpha, margin
        self._plans: dict[tuple[str, ...], GatePlan] = {}
        self._fixed_plan = self._compile(policy) if policy is not None else None
        self.rollouts: dict[str, _Rollout] = {}

    def _compile(self, policy: Policy) -> GatePlan:
        update: dict[str, Any] = {}
        if self._method is not None:
            update["method"] = self._method
        if self._alpha is not None:
            update["alpha"] = self._alpha
        if self._margin is not None:
            update["kpis"] = tuple(
                k.model_copy(update={"margin": self._margin}) for k in policy.kpis
            )
        return compile_plan(policy.model_copy(update=update) if update else policy)

    def _plan_for(self, record: WindowRecord, known: tuple[str, ...] = ()) -> GatePlan:
        """The policy's plan, or the default one over the KPIs named so far (`known`, then
        this record's)."""
        if self._fixed_plan is not None:
            return self._fixed_plan
        names = tuple(dict.fromkeys((*known, *record.kpis)))
        plan = self._plans.get(names)
        if plan is None:
            if not names:
                raise LineError("the first window of a rollout must name its KPIs")
            plan = self._compile(default_policy(names))
            self._plans[names] = plan
        return plan

    def feed(self, record: WindowRecord) -> GateDecision:
        name = record.rollout_id
        rollout = self.rollouts.get(name)
        if rollout is None:
            plan = self._plan_for(record)
            rollout = _Rollout(plan, RolloutState(), record.window - 1)
            self.rollouts[name] = rollout
        elif record.window <= rollout.last_window:
            raise LineError(
                f"window {record.window} of rollout {name!r} comes after window "
                f"{rollout.last_window}: windows must be in increasing order"
            )
        elif self._fixed_plan is None and rollout.state.windows == 0 and not record.calibration:
            # Without --policy the first records name the KPIs; calibration records leave out
            # some (error_rate), and the rollout's first window may add them: no evidence has
            # been summed yet, so the default plan can still grow (calibration spreads stay).
            known = tuple(h.kpi.name for h in rollout.plan.hypotheses)
            rollout.plan = self._plan_for(record, known)
        window = to_window(record, rollout.plan)
        try:
            rollout.state, decision = judge(rollout.plan, rollout.state, window)
        except UnknownStage as exc:
            raise LineError(f"{exc}; replay it with the policy it was collected under") from None
        rollout.last_window = record.window
        return decision


def decision_record(rollout: str, decision: GateDecision) -> dict[str, Any]:
    record: dict[str, Any] = {"rollout": rollout} if rollout else {}
    record.update(decision.as_dict())
    return record


def replay_lines(
    lines: Iterable[str], replayer: Replayer
) -> Iterator[tuple[int, str, GateDecision]]:
    """(line number, rollout, decision) per non-blank line; LineError carries the number."""
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            record = parse_line(text)
            yield number, record.rollout_id, replayer.feed(record)
        except LineError as exc:
            raise LineError(f"line {number}: {exc}") from None


def replay_records(
    records: Iterable[WindowRecord], replayer: Replayer
) -> Iterator[tuple[int, str, GateDecision]]:
    """As replay_lines, for records already read (from an evidence store)."""
    for number, record in enumerate(records, start=1):
        try:
            yield number, record.rollout_id, replayer.feed(record)
        except LineError as exc:
            raise LineError(f"record {number}: {exc}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("windows", help="JSON Lines file of windows, or - for standard input")
    parser.add_argument("--policy", help="rollout policy YAML (default: see above)")
    parser.add_argument(
        "--method",
        choices=[m.value for m in Method],
        help="override the policy's method (sigma = the paper's mu +/- k sigma rule)",
    )
    parser.add_argument(
        "--alpha", type=float, help="false-rollback budget for each rollout (default 0.05)"
    )
    parser.add_argument(
        "--margin", type=float, help="absolute non-inferiority margin for every KPI (0.01)"
    )
    parser.add_argument("--output", "-o", help="write decisions here instead of stdout")
    parser.add_argument(
        "--summary", action="store_true", help="print a summary of outcomes to stderr at the end"
    )


def run(args: argparse.Namespace) -> int:
    if args.alpha is not None and not 0 < args.alpha < 1:
        print(f"kpigate replay: --alpha must be in (0, 1), got {args.alpha}", file=sys.stderr)
        return 2
    if args.margin is not None and args.margin < 0:
        print(f"kpigate replay: --margin must be >= 0, got {args.margin}", file=sys.stderr)
        return 2
    try:
        policy = load_policy(args.policy) if args.policy else None
        method = Method(args.method) if args.method else None
        replayer = Replayer(policy, method, args.alpha, args.margin)
    except PolicyError as exc:
        print(f"kpigate replay: bad policy:\n{exc}", file=sys.stderr)
        return 2
    try:
        source: IO[str] = sys.stdin if args.windows == "-" else open(args.windows)  # noqa: SIM115
    except OSError as exc:
        print(f"kpigate replay: cannot read {args.windows}: {exc.strerror}", file=sys.stderr)
        return 2
    sink: TextIO = open(args.output, "w") if args.output else sys.stdout  # noqa: SIM115
    started = time.perf_counter()
    count = 0
    try:
        with source:
            for _, rollout, decision in replay_lines(source, replayer):
                sink.write(json.dumps(decision_record(rollout, decision)) + "\n")
                count += 1
    except LineError as exc:
        sink.flush()
        print(f"kpigate replay: {args.windows}: {exc}", file=sys.stderr)
        return 2
    finally:
        if sink is not sys.stdout:
            sink.close()
    if args.summary:
        outcomes = Counter(
            r.state.ended.decision.value if r.state.ended else "open"
            for r in replayer.rollouts.values()
        )
        rollouts, open_rollouts = len(replayer.rollouts), outcomes["open"]
        print(
            f"replayed {count} windows of {rollouts} rollouts in "
            f"{time.perf_counter() - started:.1f} s: {outcomes['promote']} promoted to 100%, "
            f"{outcomes['rollback']} rolled back, {open_rollouts} still open",
            file=sys.stderr,
        )
    return 0

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
Each arm of a KPI is one of (by KPI type; null means no data from that arm):
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
import itertools
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, TextIO

from kpigate.engine import (
    ArmData,
    Cohort,
    GateDecision,
    GatePlan,
    Histogram,
    Observation,
    Pending,
    Rate,
    RolloutState,
    ScoreHistograms,
    SegmentRates,
    UnknownStage,
    Window,
    compile_plan,
    judge,
)
from kpigate.policy import (
    KpiType,
    Method,
    Policy,
    PolicyError,
    default_policy,
    load_policy,
)

_TOP_LEVEL = {
    *("rollout", "window", "stage", "kpis", "stale", "note", "time", "cohort", "pending"),
    *("served_from", "served_to"),
}


class LineError(ValueError):
    """A malformed input line; the message says what is wrong."""


# --- parsing -----------------------------------------------------------------------------------


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LineError(f"{where} must be a finite number, got {json.dumps(value)}")
    if value < 0:
        raise LineError(f"{where} must not be negative, got {value}")
    return float(value)


def _rate(data: Any, where: str) -> Rate:
    if not isinstance(data, dict) or not (
        {"successes", "trials"} <= set(data) <= {"successes", "trials", "deff"}
    ):
        raise LineError(f'{where} must be {{"successes": S, "trials": N}} (optionally "deff")')
    successes = _number(data["successes"], f"{where}.successes")
    trials = _number(data["trials"], f"{where}.trials")
    if successes > trials:
        raise LineError(f"{where}: successes ({successes:g}) exceed trials ({trials:g})")
    deff = data.get("deff")
    return Rate(successes, trials, None if deff is None else _number(deff, f"{where}.deff"))


def _buckets(data: Any, where: str) -> Histogram:
    if not isinstance(data, dict) or not data:
        raise LineError(f"{where} must map bucket upper bounds to cumulative counts")
    pairs = []
    for bound_text, count in data.items():
        try:
            bound = float(bound_text)
        except ValueError:
            raise LineError(f"{where}: bucket bound {bound_text!r} is not a number") from None
        pairs.append((bound, _number(count, f"{where}[{bound_text}]")))
    pairs.sort()
    if not math.isinf(pairs[-1][0]):
        raise LineError(f'{where} needs a "+Inf" bucket holding the total count')
    counts = [c for _, c in pairs]
    if any(b < a for a, b in itertools.pairwise(counts)):
        raise LineError(f"{where}: counts must be cumulative (non-decreasing with the bound)")
    return Histogram(tuple(b for b, _ in pairs), tuple(counts))


def _arm(kpi_type: KpiType, data: Any, where: str) -> ArmData | None:
    if data is None:
        return None
    if kpi_type is KpiType.RATE:
        return _rate(data, where)
    if not isinstance(data, dict):
        raise LineError(f"{where} must be an object")
    if kpi_type in (KpiType.QUANTILE, KpiType.EXCEEDANCE):
        if set(data) != {"buckets"}:
            raise LineError(f'{where} of a quantile KPI must be {{"buckets": {{...}}}}')
        return _buckets(data["buckets"], f"{where}.buckets")
    if kpi_type is KpiType.AUC:
        if set(data) != {"positives", "negatives"}:
            raise LineError(f'{where} of an auc KPI needs "positives" and "negatives"')
        positives = _buckets(data["positives"], f"{where}.positives")
        negatives = _buckets(data["negatives"], f"{where}.negatives")
        if positives.bounds != negatives.bounds:
            raise LineError(f"{where}: positives and negatives need the same buckets")
        return ScoreHistograms(positives, negatives)
    if set(data) != {"a", "b"}:
        raise LineError(f'{where} of a gap KPI needs segments "a" and "b"')
    return SegmentRates(_rate(data["a"], f"{where}.a"), _rate(data["b"], f"{where}.b"))


def _window_index(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise LineError(f"{where} must be a window number (an integer >= 0)")
    return value


def _cohort(data: Any) -> Cohort | None:
    if data is None:
        return None
    if not isinstance(data, dict) or set(data) != {"window", "stage", "matured_at"}:
        raise LineError('"cohort" must be {"window": W, "stage": S or null, "matured_at": T}')
    stage = None if data["stage"] is None else _number(data["stage"], '"cohort.stage"')
    if stage is not None and not 0 < stage <= 100:
        raise LineError(f'"cohort.stage" is a traffic percentage in (0, 100], got {stage:g}')
    return Cohort(
        _window_index(data["window"], '"cohort.window"'),
        stage,
        _number(data["matured_at"], '"cohort.matured_at"'),
    )


def _pending(data: Any) -> Pending | None:
    if data is None:
        return None
    if not isinstance(data, dict) or set(data) != {"window", "matures_at"}:
        raise LineError('"pending" must be {"window": W, "matures_at": T}')
    return Pending(
        _window_index(data["window"], '"pending.window"'),
        _number(data["matures_at"], '"pending.matures_at"'),
    )


@dataclass(frozen=True, slots=True)
class RawWindow:
    rollout: str
    index: int
    stage: float
    kpis: Mapping[str, Any]
    stale: bool
    note: str
    cohort: Cohort | None = None
    pending: Pending | None = None


def parse_line(text: str) -> RawWindow:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LineError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(data, dict):
        raise LineError("each line must be a JSON object")
    unknown = set(data) - _TOP_LEVEL
    if unknown:
        raise LineError(f"unknown field(s) {sorted(unknown)}; expected {sorted(_TOP_LEVEL)}")
    for required in ("window", "stage", "kpis"):
        if required not in data:
            raise LineError(f'missing field "{required}"')
    index = data["window"]
    if isinstance(index, bool) or not isinstance(index, int):
        raise LineError(f'"window" must be an integer, got {json.dumps(index)}')
    stage = _number(data["stage"], '"stage"')
    if not 0 < stage <= 100:
        raise LineError(f'"stage" is a traffic percentage in (0, 100], got {stage:g}')
    kpis = data["kpis"]
    if not isinstance(kpis, dict):
        raise LineError('"kpis" must be an object of KPI name -> {baseline, candidate}')
    for name, arms in kpis.items():
        if not isinstance(arms, dict) or not set(arms) <= {"baseline", "candidate"}:
            raise LineError(f'kpis.{name} must be {{"baseline": ..., "candidate": ...}}')
    stale = data.get("stale", False)
    if not isinstance(stale, bool):
        raise LineError('"stale" must be true or false')
    served = [_number(data[k], f'"{k}"') for k in ("served_from", "served_to") if k in data]
    if len(served) == 2 and served[1] < served[0]:
        raise LineError('"served_to" is before "served_from"')
    rollout = data.get("rollout", "")
    if not isinstance(rollout, str | int):
        raise LineError('"rollout" must be a string')
    return RawWindow(
        str(rollout),
        index,
        stage,
        kpis,
        stale,
        str(data.get("note", "")),
        _cohort(data.get("cohort")),
        _pending(data.get("pending")),
    )


def to_window(raw: RawWindow, plan: GatePlan) -> Window:
    types = plan.kpi_types
    unknown = [name for name in raw.kpis if name not in types]
    if unknown:
        raise LineError(
            f"KPI(s) {unknown} not in the policy (known: {sorted(types)}); "
            "declare them in the policy, or keep every window's KPIs the same as the first"
        )
    observations = {
        name: Observation(
            baseline=_arm(types[name], arms.get("baseline"), f"kpis.{name}.baseline"),
            candidate=_arm(types[name], arms.get("candidate"), f"kpis.{name}.candidate"),
        )
        for name, arms in raw.kpis.items()
    }
    return Window(raw.index, raw.stage, observations, raw.stale, raw.note, raw.cohort, raw.pending)


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

    def _plan_for(self, raw: RawWindow) -> GatePlan:
        if self._fixed_plan is not None:
            return self._fixed_plan
        names = tuple(raw.kpis)
        plan = self._plans.get(names)
        if plan is None:
            if not names:
                raise LineError("the first window of a rollout must name its KPIs")
            plan = self._compile(default_policy(names))
            self._plans[names] = plan
        return plan

    def feed(self, raw: RawWindow) -> GateDecision:
        rollout = self.rollouts.get(raw.rollout)
        if rollout is None:
            plan = self._plan_for(raw)
            rollout = _Rollout(plan, RolloutState(), raw.index - 1)
            self.rollouts[raw.rollout] = rollout
        elif raw.index <= rollout.last_window:
            raise LineError(
                f"window {raw.index} of rollout {raw.rollout!r} comes after window "
                f"{rollout.last_window}: windows must be in increasing order"
            )
        window = to_window(raw, rollout.plan)
        try:
            rollout.state, decision = judge(rollout.plan, rollout.state, window)
        except UnknownStage as exc:
            raise LineError(f"{exc}; replay it with the policy it was collected under") from None
        rollout.last_window = raw.index
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
            raw = parse_line(text)
            yield number, raw.rollout, replayer.feed(raw)
        except LineError as exc:
            raise LineError(f"line {number}: {exc}") from None


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

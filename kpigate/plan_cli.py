"""Forecast a rollout before it starts: per stage and KPI, how long until it can decide.

For an identical candidate, the median and 90th percentile time from each stage's start until
each KPI is certified non-inferior and until the stage promotes; with --drop, how fast a
candidate that much worse on one KPI is rolled back. It warns, naming the stage and the KPI,
when a stage cannot decide within its soak plus max_holds x interval: the stall you would
otherwise meet in production. Rollouts are simulated on the engine's sufficient statistics
with the policy's own boundaries, soak, burn-in, label horizon and max_holds (docs/forecast.md).

Traffic: --rps is requests per second reaching the router (both arms). For each KPI,
--kpi-base says which share of requests are its trials (recall: the fraud prevalence;
precision: the share flagged; fpr: the share legitimate) and --kpi-value its baseline value
(a rate in [0, 1], an AUC in [0.5, 1)); for an AUC, --kpi-base is the share of positives.
A KPI with segments takes them per key (--kpi-base 'recall{eu}=0.01'). Unknown ones are
assumed and listed under notes: every request a trial (far too optimistic for a rare event
such as fraud), an AUC's positives half the requests, a value of 0.5 (the largest binomial
variance). Give them for the KPIs that matter.
Quantile and gap KPIs and scope window are not forecast (the notes say so).

example:
  kpigate plan --policy policy.yaml --rps 50 \\
      --kpi-base recall=0.02 --kpi-value recall=0.876 --drop recall=0.05

Exit status: 0 the forecast was printed (warnings included), 2 bad input (a bad policy, a
KPI name the policy lacks, a value that is not a number in range).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from kpigate.engine.forecast import (
    Forecast,
    ForecastError,
    Spread,
    StageForecast,
    Traffic,
    forecast,
    format_duration,
)
from kpigate.policy import Policy, PolicyError, load_policy


class _BadInput(ValueError):
    pass


def _pair(text: str, flag: str) -> tuple[str, float]:
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise _BadInput(f"{flag} {text!r}: write NAME=NUMBER, e.g. {flag} recall=0.02")
    try:
        value = float(raw)
    except ValueError:
        raise _BadInput(f"{flag} {text!r}: {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise _BadInput(f"{flag} {text!r}: the number must be finite")
    return name.strip(), value


def _pairs(items: list[str], flag: str, policy: Policy) -> dict[str, float]:
    known = {k.name for k in policy.kpis} | {key for k in policy.kpis for key in k.hypotheses()}
    out: dict[str, float] = {}
    for item in items:
        name, value = _pair(item, flag)
        if name not in known:
            raise _BadInput(
                f"{flag} {item!r}: the policy has no KPI {name!r} "
                f"(its KPIs: {', '.join(k.name for k in policy.kpis)})"
            )
        out[name] = value
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", required=True, help="rollout policy YAML")
    parser.add_argument(
        "--rps", required=True, type=float, help="requests per second at the router, both arms"
    )
    parser.add_argument(
        "--kpi-base",
        action="append",
        default=[],
        metavar="NAME=SHARE",
        help="share of requests that are the KPI's trials, in (0, 1] (repeatable)",
    )
    parser.add_argument(
        "--kpi-value",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="the KPI's baseline value (repeatable; default its baseline_mean, else 0.5)",
    )
    parser.add_argument(
        "--drop",
        metavar="NAME=SIZE",
        help="also forecast catching a candidate this much worse on one KPI, in its units",
    )
    parser.add_argument("--paths", type=int, default=4000, help="simulated rollouts (default 4000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--json", action="store_true", help="one JSON object for machines")


def _inputs(args: argparse.Namespace) -> tuple[Policy, Traffic, tuple[str, float] | None]:
    policy = load_policy(args.policy)
    if not (args.rps > 0 and math.isfinite(args.rps)):
        raise _BadInput(f"--rps must be a positive number of requests per second, got {args.rps}")
    base = _pairs(args.kpi_base, "--kpi-base", policy)
    for name, share in base.items():
        if not 0 < share <= 1:
            raise _BadInput(f"--kpi-base {name}={share:g}: a share of requests is in (0, 1]")
    value = _pairs(args.kpi_value, "--kpi-value", policy)
    drop = _pairs([args.drop], "--drop", policy) if args.drop else {}
    return policy, Traffic(args.rps, base, value), next(iter(drop.items()), None)


def run(args: argparse.Namespace) -> int:
    try:
        policy, traffic, drop = _inputs(args)
        result = forecast(policy, traffic, drop, paths=args.paths, seed=args.seed)
    except PolicyError as exc:
        print(f"kpigate plan: bad policy:\n{exc}", file=sys.stderr)
        return 2
    except (_BadInput, ForecastError) as exc:
        print(f"kpigate plan: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(render(result, policy))
    return 0


def _spread(spread: Spread, never: str = "not within the stage") -> str:
    if not math.isfinite(spread.median):
        return never
    p90 = format_duration(spread.p90) if math.isfinite(spread.p90) else "beyond"
    return f"{format_duration(spread.median)} / {p90}"


def _stage_lines(stage: StageForecast, policy: Policy, drop: bool) -> list[str]:
    rule = policy.stage_for(stage.traffic)
    gate = rule.promote_when if rule is not None else "noninferior"
    lines = [
        f"stage {stage.traffic:g}%: every {format_duration(stage.interval)}, must decide within "
        f"{format_duration(stage.deadline)} (promote_when {gate}); reached by "
        f"{stage.reached:.0%} of identical candidates",
        f"  promoted after (median / p90): {_spread(stage.promote)}; "
        f"times out: {stage.timed_out:.0%}"
        + (f"; drop caught here: {stage.caught:.0%}" if drop else ""),
        f"  {'KPI':24s} {'info/window':>12s}  certified after (median / p90)   certified here",
    ]
    for kpi in stage.kpis:
        lines.append(
            f"  {kpi.key:24s} {kpi.info_per_window:12.4g}  {_spread(kpi.certify):30s}  "
            f"{kpi.certified:.0%}"
        )
    return lines


def render(result: Forecast, policy: Policy) -> str:
    lines = [
        f"Forecast for policy {result.policy} at {result.rps:g} requests/s "
        f"({result.paths} simulated rollouts, seed {result.seed}). Times are from each "
        "stage's start.",
        "",
    ]
    for stage in result.stages:
        lines += [*_stage_lines(stage, policy, result.drop is not None), ""]
    whole = _spread(result.promote_all, "most never")
    lines.append(
        f"identical candidate, whole rollout: promoted to 100% in {result.promoted:.0%} "
        f"(median / p90 from the start: {whole}), falsely rolled back "
        f"in {result.false_rollback:.1%}"
    )
    if result.drop is not None:
        d = result.drop
        lines.append(
            f"{d.key} worse by {d.drop:g}: rolled back in {d.rolled_back:.0%} "
            f"(median / p90 from the start: {_spread(d.rollback, 'most never')})"
        )
    if result.warnings:
        lines += ["", "warnings:", *(f"  - {w}" for w in result.warnings)]
    if result.notes:
        lines += ["", "notes:", *(f"  - {n}" for n in result.notes)]
    return "\n".join(lines)

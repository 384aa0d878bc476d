"""The report of bench/robust.py: its table, the early-stage risk and the section it writes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import simulate as sim  # bench/simulate.py (the script's folder is on sys.path)
from machine import describe

if TYPE_CHECKING:
    from robust import Result


def table(results: list[Result]) -> str:
    """One row per setting: how its rollouts ended and how fast a FAIL came."""
    lines = [
        "| scenario | setting | candidate | rollouts | rolled back | past 5% | past 25% | "
        "promoted at 100% | suspended (max_holds) | mean looks to rollback | mean candidate "
        "samples to rollback | FAIL within 3 looks | mean look of first FAIL | looks with a FAIL |",
        "|:---|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r.setting
        lines.append(
            f"| {s.scenario} | {s.label} | {s.candidate} | {s.rollouts} | {sim.fmt(r.rollback)} "
            f"| {sim.fmt(r.promoted_any)} | {sim.fmt(r.past_25)} | {sim.fmt(r.promoted)} "
            f"| {sim.fmt(r.suspended)} | {sim.fmt(r.looks_to_rollback, 2)} "
            f"| {sim.fmt(r.samples_to_rollback, 0)} | {sim.fmt(r.fail_within_3)} "
            f"| {sim.fmt(r.first_fail, 2)} | {sim.fmt(r.looks_failing)} |"
        )
    return "\n".join(lines)


def report(
    results: list[Result],
    checks: list[tuple[str, bool, str]],
    intro: list[str],
    command: str,
    elapsed: float,
) -> str:
    """The section: `intro` (what was simulated), the table, the targets, machine, command."""
    return "\n".join(
        [
            "## Real traffic (bench/robust.py)",
            "",
            *intro,
            table(results),
            "",
            "| target | holds | measured |",
            "|---|:---:|---|",
            *(f"| {name} | {'yes' if ok else '**NO**'} | {value} |" for name, ok, value in checks),
            "",
            *_early(results),
            f"Machine: {describe('numpy', shared=True)}; {len(results)} settings in "
            f"{elapsed:.0f} s.",
            "",
            f"Command: `{command}`.",
        ]
    )


def _early(results: list[Result]) -> list[str]:
    """The early-stage risk (no target: the numbers docs/policy.md states)."""
    early = [r for r in results if r.setting.scenario == "early"]
    parts = [
        f"`{r.setting.early}` moved it past 5% in {r.promoted_any:.1%} and past 25% in "
        f"{r.past_25:.1%} of rollouts"
        for r in early
    ]
    if not parts:
        return []
    return [
        "Early stages (no target): with a 2pp-worse candidate at 50 positives per window, "
        + "; ".join(parts)
        + ".",
        "",
    ]

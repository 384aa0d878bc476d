"""Render one rollout from its audit trail as a self-contained HTML page.

  kpigate report TRAIL [--rollout ID] [--kpi recall] -o report.html

The page needs nothing but itself: inline CSS, figures as inline SVG. It shows the model and
versions, the policy hash, the outcome and whether the trail's hash chain is intact; a table
of decisions per stage; every KPI of the final decision with its estimate, confidence
interval and verdict; the KPI's progression across stages and its control chart (the paper's
Figures 1 and 2); alerts and actions. Exit status: 0 written, 2 bad input.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from kpigate.audit import AuditError, Verification, is_routine_soak, read_records, verify
from kpigate.cause import HARM, OPERATOR, TIMEOUT, record_cause


class ReportError(ValueError):
    """The trail cannot be reported on as asked; the message says what to change."""


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:72rem;
color:#1f2328;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;
border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
table{border-collapse:collapse;width:100%;margin:.5rem 0}
th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.promote,.pass{color:#1a7f37;font-weight:600}.rollback,.fail{color:#cf222e;font-weight:600}
.hold,.inconclusive{color:#9a6700;font-weight:600}
.meta td:first-child{width:12rem;color:#57606a}.bad{background:#ffebe9}.ok{background:#dafbe1}
figure{margin:1rem 0}figure svg{max-width:100%;height:auto}
code{font-size:.85em;word-break:break-all}ul{padding-left:1.2rem}
"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _fmt(value: Any, signed: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "–" if value is None else _e(value)
    if value == 0:
        value = 0.0  # -0.0 printed "-0", a harmful-looking sign on nothing
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def _detail(detail: Any) -> str:
    """An action's detail as `key=value, ...` text (not a Python dict's repr)."""
    if not isinstance(detail, Mapping):
        return _e(detail)
    return _e(", ".join(f"{key}={_plain(value)}" for key, value in detail.items()))


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return _fmt(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}={_plain(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value)
    return str(value)


def _ci(ci: Any) -> str:
    if not isinstance(ci, Sequence) or len(ci) != 2:
        return "–"
    return f"[{_fmt(ci[0], True)}, {_fmt(ci[1], True)}]"


def _badge(text: Any) -> str:
    return f'<span class="{_e(text)}">{_e(text)}</span>'


def select_rollout(records: Sequence[Mapping[str, Any]], rollout: str | None) -> str:
    ids = list(dict.fromkeys(str(r.get("rollout")) for r in records if r.get("type") == "decision"))
    if not ids:
        raise ReportError("the trail holds no decision records: nothing to report")
    if rollout is None:
        if len(ids) > 1:
            raise ReportError(f"the trail holds rollouts {', '.join(ids)}: pick one with --rollout")
        return ids[0]
    if rollout not in ids:
        raise ReportError(f"no decisions of rollout {rollout!r} (the trail has: {', '.join(ids)})")
    return rollout


def _outcome(last: Mapping[str, Any], actions: Sequence[Mapping[str, Any]]) -> str:
    stage = f"{float(last.get('stage', 0)):g}%"
    if last.get("final") and last.get("decision") == "rollback":
        cause = record_cause(last)
        why = {HARM: "for harm: a KPI worse than the baseline", TIMEOUT: "for lack of evidence: "
               "max_holds ran out", OPERATOR: "by an operator"}.get(cause, cause)  # fmt: skip
        text = f"rolled back at {stage} (window {last.get('window')}) {why}"
    elif last.get("final") and last.get("decision") == "promote":
        text = "promoted to 100%"
    elif last.get("suspend"):
        text = f"suspended at {stage}, waiting for an operator"
    else:
        text = f"in progress at {stage}"
    done = [a for a in actions if a.get("action") in {"promote", "rollback"}]
    if done:
        state = "" if done[-1].get("ok", True) else " (FAILED)"
        text += f"; last action: {done[-1].get('action')}{state}"
    return text


def _header(
    decisions: Sequence[Mapping[str, Any]],
    actions: Sequence[Mapping[str, Any]],
    rollout: str,
    check: Verification | None,
) -> str:
    first, last = decisions[0], decisions[-1]
    model = last.get("model") or {}
    policy = last.get("policy") or {}
    actors = sorted({str(r.get("actor")) for r in [*decisions, *actions] if r.get("actor")})
    rows = [
        ("Model", model.get("name")),
        ("Baseline version", model.get("baseline")),
        ("Candidate version", model.get("candidate")),
        ("Policy", f"{policy.get('name', '')} ({policy.get('method', '')})"),
        ("Policy sha256", policy.get("hash")),
        ("Outcome", _outcome(last, actions)),
        ("From – to", f"{first.get('time', '')} – {last.get('time', '')}"),
        ("Acted", ", ".join(actors)),
    ]
    body = "".join(
        f"<tr><td>{_e(k)}</td><td>{'<code>' + _e(v) + '</code>' if 'sha' in k else _e(v)}</td></tr>"
        for k, v in rows
    )
    if check is not None:
        if check.ok:
            status = f"intact: {check.records} records, head <code>{_e(check.head)}</code>"
            body += f'<tr class="ok"><td>Audit chain</td><td>{status}</td></tr>'
        else:
            items = "".join(f"<li>{_e(p)}</li>" for p in check.problems)
            body += f'<tr class="bad"><td>Audit chain</td><td>NOT intact<ul>{items}</ul></td></tr>'
    outcome = _outcome(last, actions).split(";")[0]
    return (
        f"<h1>Rollout {_e(rollout)}: {_e(model.get('name'))} v{_e(model.get('candidate'))}</h1>"
        f"<p>{_e(outcome)}</p><table class='meta'>{body}</table>"
    )


def _stages(decisions: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for stage, group in itertools.groupby(decisions, key=lambda r: r.get("stage")):
        looks = list(group)
        end = looks[-1]
        windows = f"{looks[0].get('window')}–{end.get('window')} ({len(looks)})"
        decision = str(end.get("decision"))
        holds = sum(1 for r in looks if r.get("decision") == "hold" and not is_routine_soak(r))
        reasons = "".join(f"<li>{_e(x)}</li>" for x in end.get("reasons") or [])
        label = _badge(decision) + (" (open)" if decision == "hold" else "")
        rows.append(
            f"<tr><td class='num'>{_fmt(stage)}%</td><td>{_e(windows)}</td><td>{label}</td>"
            f"<td><ul>{reasons}</ul></td><td class='num'>{holds}</td></tr>"
        )
    return (
        "<h2>Decisions per stage</h2><table><tr><th>Stage</th><th>Windows (looks)</th>"
        "<th>Decision</th><th>Reasons (last look)</th><th>Holds</th></tr>"
        + "".join(rows)
        + "</table><p>Holds counts looks held for a KPI, stale data or missing evidence, "
        "not the routine soak.</p>"
    )


def _calibrated(kpi: Mapping[str, Any]) -> str:
    """How many A/A calibration windows (before the rollout) the KPI's variance rests on."""
    n = kpi.get("calibration_windows")
    if not isinstance(n, int) or n <= 0:
        return ""
    return f" <small>(between-window variance: {n} A/A calibration windows + the rollout's)</small>"


def _kpis(last: Mapping[str, Any]) -> str:
    rows = []
    for key, kpi in (last.get("kpis") or {}).items():
        samples = kpi.get("samples") or {}
        rows.append(
            f"<tr><td>{_e(key)}</td><td>{_e(kpi.get('category'))}</td>"
            f"<td>{_badge(kpi.get('verdict'))}</td><td>{_e(kpi.get('action'))}</td>"
            f"<td class='num'>{_fmt(kpi.get('estimate'), True)}</td>"
            f"<td class='num'>{_ci(kpi.get('ci'))}</td>"
            f"<td class='num'>{_fmt(kpi.get('margin'))}</td>"
            f"<td class='num'>{_fmt(kpi.get('candidate'))}</td>"
            f"<td class='num'>{_fmt(kpi.get('baseline'))}</td>"
            f"<td class='num'>{_fmt(samples.get('candidate'))} / {_fmt(samples.get('baseline'))}"
            f"</td><td>{_e(kpi.get('reason'))}{_calibrated(kpi)}</td></tr>"
        )
    return (
        f"<h2>KPIs at the final decision (window {_e(last.get('window'))}, "
        f"{_fmt(last.get('stage'))}%)</h2><table><tr><th>KPI</th><th>Category</th><th>Verdict"
        "</th><th>Triggers</th><th>Estimate</th><th>CI</th><th>Margin</th><th>Candidate</th>"
        "<th>Baseline</th><th>Samples c / b</th><th>Reason</th></tr>" + "".join(rows) + "</table>"
        "<p>Estimate: candidate minus baseline over all windows so far; CI: the anytime-valid "
        "confidence interval the gate judged.</p>"
    )


def _events(
    decisions: Sequence[Mapping[str, Any]],
    notes: Sequence[Mapping[str, Any]],
    actions: Sequence[Mapping[str, Any]],
) -> str:
    alerts = [
        f"<li>window {_e(r.get('window'))} at {_fmt(r.get('stage'))}%: {_e(a)}</li>"
        for r in decisions
        for a in r.get("alerts") or []
    ]
    alerts += [
        f"<li>{_e(n.get('time'))} {_badge(n.get('severity'))}: {_e(n.get('message'))}</li>"
        for n in notes
    ]
    done = [
        f"<li>{_e(a.get('time'))} <b>{_e(a.get('action'))}</b>"
        f"{' at ' + _fmt(a.get('stage')) + '%' if a.get('stage') is not None else ''}"
        f"{'' if a.get('ok', True) else ' <span class=fail>failed</span>'} by {_e(a.get('actor'))}"
        f"{': ' + _detail(a.get('detail')) if a.get('detail') else ''}</li>"
        for a in actions
    ]
    return (
        "<h2>Alerts</h2>"
        + (f"<ul>{''.join(alerts)}</ul>" if alerts else "<p>No alerts.</p>")
        + "<h2>Actions</h2>"
        + (f"<ul>{''.join(done)}</ul>" if done else "<p>No actions recorded.</p>")
    )


def _log(decisions: Sequence[Mapping[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td class='num'>{_e(r.get('window'))}</td><td class='num'>{_fmt(r.get('stage'))}%"
        f"</td><td>{_badge(r.get('decision'))}</td><td>{_e('; '.join(r.get('reasons') or []))}"
        f"</td><td>{_e(r.get('time'))}</td></tr>"
        for r in decisions
    )
    return (
        "<details><summary>Every decision</summary><table><tr><th>Window</th><th>Stage</th>"
        f"<th>Decision</th><th>Reasons</th><th>Time</th></tr>{rows}</table></details>"
    )


def render_report(
    records: Sequence[Mapping[str, Any]],
    rollout: str | None = None,
    kpi: str = "recall",
    verification: Verification | None = None,
) -> str:
    """The HTML page for one rollout's records (all records of a trail may be passed)."""
    from kpigate.report_figures import control_chart_svg, progression_svg

    rollout = select_rollout(records, rollout)
    mine = [r for r in records if str(r.get("rollout")) == rollout]
    decisions = sorted(
        (r for r in mine if r.get("type") == "decision"), key=lambda r: int(r.get("window", 0))
    )
    actions = [r for r in mine if r.get("type") == "action"]
    notes = [r for r in mine if r.get("type") == "notification"]
    # An operator's decision before a stage's first window carries no KPIs: show the last
    # evidence judged.
    judged = next((d for d in reversed(decisions) if d.get("kpis")), decisions[-1])
    known = list((judged.get("kpis") or {}).keys())
    if kpi not in known:
        if not known:
            raise ReportError(f"rollout {rollout!r} has no KPI evidence to plot")
        kpi = known[0]
    parts = [
        _header(decisions, actions, rollout, verification),
        _stages(decisions),
        _kpis(judged),
        f"<h2>{_e(kpi)} across stages</h2><figure>{progression_svg(decisions, kpi)}</figure>",
        f"<h2>{_e(kpi)} control chart</h2><figure>{control_chart_svg(decisions, kpi)}</figure>",
        _events(decisions, notes, actions),
        _log(decisions),
    ]
    title = f"kpigate rollout {rollout}"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def write_report(
    trail: str | Path, output: str | Path, rollout: str | None = None, kpi: str = "recall"
) -> Path:
    """Read `trail`, verify its chain and write the page for `rollout` to `output`."""
    html_text = render_report(read_records(trail), rollout, kpi, verify(trail))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(html_text, encoding="utf-8")
    return output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trail", help="audit trail (JSON Lines) written by the rollout")
    parser.add_argument("--rollout", help="rollout id (needed when the trail holds several)")
    parser.add_argument("--kpi", default="recall", help="KPI to plot (default recall)")
    parser.add_argument("-o", "--output", default="report.html", help="HTML file to write")


def run(args: argparse.Namespace) -> int:
    try:
        path = write_report(args.trail, args.output, args.rollout, args.kpi)
    except (AuditError, ReportError) as exc:
        print(f"kpigate report: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0

"""The report's figures as inline SVG: a KPI's progression across stages, and its control chart.

They redraw the paper's Figure 1 (recall of candidate vs baseline through 5/25/50/100%) and
Figure 2 (EWMA control chart with UCL/LCL) from audit-trail decision records alone.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display in a container or CI; must precede pyplot
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kpigate.audit import is_routine_soak

_CANDIDATE, _BASELINE, _LIMIT = "#1f6feb", "#6e7781", "#cf222e"
_SIZE = (8.0, 3.6)


def _kpi(record: Mapping[str, Any], kpi: str) -> Mapping[str, Any]:
    value = (record.get("kpis") or {}).get(kpi)
    return value if isinstance(value, Mapping) else {}


def _svg(fig: Figure) -> str:
    buffer = io.StringIO()
    # Text as paths: no font is needed to view it, and no trail text reaches the SVG as markup.
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and DOCTYPE for inline use


def _stage_boundaries(ax: Axes, decisions: Sequence[Mapping[str, Any]]) -> None:
    """A dashed line where the stage changes, each stage's traffic written above it."""
    groups = itertools.groupby(decisions, key=lambda r: r.get("stage"))
    for index, (stage, group) in enumerate(groups):
        windows = [int(r["window"]) for r in group]
        if index > 0:
            ax.axvline(windows[0] - 0.5, color="#8c959f", linestyle="--", linewidth=0.8)
        ax.text(
            (windows[0] + windows[-1]) / 2,
            0.98,
            f"{float(stage):g}%",
            transform=ax.get_xaxis_transform(),  # x in windows, y in axes fraction: at the top
            ha="center",
            va="top",
            fontsize=9,
            fontweight="bold",
            color="#57606a",
        )


def _mark_decisions(
    ax: Axes, decisions: Sequence[Mapping[str, Any]], kpi: str, y_key: str = "candidate"
) -> None:
    for record in decisions:
        y = _kpi(record, kpi).get(y_key)
        if y is None:
            continue
        x = int(record["window"])
        if record.get("decision") == "rollback":
            ax.plot(x, y, marker="X", color=_LIMIT, markersize=11, zorder=5, linestyle="none")
        elif record.get("decision") == "promote":
            ax.plot(x, y, marker="^", color="#1a7f37", markersize=8, zorder=5, linestyle="none")


def _notable_hold(record: Mapping[str, Any]) -> bool:
    return record.get("decision") == "hold" and not is_routine_soak(record)


def progression_svg(decisions: Sequence[Mapping[str, Any]], kpi: str) -> str:
    """Figure 1: the KPI per window for both arms (cumulative when per-window values are
    missing), stage boundaries dashed, promotions as green triangles, a rollback as a red X."""
    fig, ax = plt.subplots(figsize=_SIZE)
    windows = [int(r["window"]) for r in decisions]
    per_window = any("window_values" in _kpi(r, kpi) for r in decisions)
    for arm, color in (("candidate", _CANDIDATE), ("baseline", _BASELINE)):
        cumulative = [_kpi(r, kpi).get(arm) for r in decisions]
        ax.plot(
            windows,
            [float("nan") if v is None else v for v in cumulative],
            color=color,
            linewidth=2.0,
            label=f"{arm} (cumulative)",
        )
        if per_window:
            values = [(_kpi(r, kpi).get("window_values") or {}).get(arm) for r in decisions]
            ax.plot(
                windows,
                [float("nan") if v is None else v for v in values],
                color=color,
                linewidth=0.8,
                alpha=0.55,
                marker="o",
                markersize=3,
                label=f"{arm} (window)",
            )
    holds = [
        int(r["window"])
        for r in decisions
        if r.get("decision") == "hold" and not is_routine_soak(r)
    ]
    for x in holds:
        ax.axvspan(x - 0.5, x + 0.5, color="#f5a623", alpha=0.18, linewidth=0)
    _mark_decisions(ax, decisions, kpi)
    ax.set_xlabel("evaluation window")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(kpi)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=4, frameon=False)
    ax.margins(y=0.18)
    _stage_boundaries(ax, decisions)
    ax.set_title(f"{kpi}: candidate vs baseline across stages (holds shaded)", fontsize=10)
    return _svg(fig)


def control_chart_svg(decisions: Sequence[Mapping[str, Any]], kpi: str) -> str:
    """Figure 2: the candidate's per-window value, its EWMA and limits, the centre line and
    the Shewhart UCL/LCL (mu +/- k sigma from the baseline)."""
    fig, ax = plt.subplots(figsize=_SIZE)
    rows: list[tuple[int, Mapping[str, Any]]] = []
    for record in decisions:
        control = _kpi(record, kpi).get("control")
        if isinstance(control, Mapping):
            rows.append((int(record["window"]), control))
    if not rows:
        ax.text(0.5, 0.5, f"no control limits for {kpi} yet", ha="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _svg(fig)
    xs = [w for w, _ in rows]

    def series(name: str) -> list[float]:
        return [float("nan") if c.get(name) is None else float(c[name]) for _, c in rows]

    ax.plot(xs, series("center"), color="#24292f", linewidth=1.0, label="centre (baseline mu)")
    ax.plot(xs, series("ucl"), color=_LIMIT, linestyle="--", linewidth=1.0, label="UCL / LCL")
    ax.plot(xs, series("lcl"), color=_LIMIT, linestyle="--", linewidth=1.0)
    ax.fill_between(
        xs, series("ewma_lcl"), series("ewma_ucl"), color=_LIMIT, alpha=0.08, label="EWMA limits"
    )
    ax.plot(xs, series("ewma"), color=_CANDIDATE, linewidth=2.0, label="candidate EWMA")
    ax.plot(
        xs,
        series("value"),
        color=_CANDIDATE,
        linestyle="none",
        marker="o",
        markersize=4,
        alpha=0.6,
        label="candidate per window",
    )
    ax.set_xlabel("evaluation window")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(kpi)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=4, frameon=False)
    ax.margins(y=0.18)
    _stage_boundaries(ax, [r for r in decisions if isinstance(_kpi(r, kpi).get("control"), dict)])
    ax.set_title(f"{kpi}: control chart (EWMA with UCL/LCL)", fontsize=10)
    return _svg(fig)

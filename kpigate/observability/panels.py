"""Panel and variable builders for the dashboard, and its "Gate" row (the gate's own series)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

from kpigate.observability.gate_metrics import PREFIX as GATE
from kpigate.observability.promql import TARGET

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
ARM_LEGEND = "{{arm}} v{{model_version}}"
SHADOW_LEGEND = "{{arm}} v{{model_version}} shadow={{shadow}}"
# Raw-counter window for per-segment KPIs: a region's fraud volume is a few per minute.


def query(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return (
        prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)
    )


def series(
    title: str, description: str, queries: list[prometheus.Dataquery], unit: str, width: int = 8
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(8)
        .span(width)
        .line_width(2)
        .fill_opacity(0)
        .show_points(common.VisibilityMode.NEVER)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "mean"])
        )
    )
    for query in queries:
        panel = panel.with_target(query)
    if unit == "percentunit":
        panel = panel.min(0).max(1)
    return panel


def variable(name: str, label: str, query: str) -> dash.QueryVariable:
    return (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".*")  # also matches a target without the label (no namespace outside k8s)
    )


def variables(d: dash.Dashboard) -> dash.Dashboard:
    """job, then namespace within it, then the model versions the chosen routers serve."""
    return (
        d.with_variable(variable("job", "Job", "label_values(kpigate_model_info, job)"))
        .with_variable(
            variable(
                "namespace", "Namespace", 'label_values(kpigate_model_info{job=~"$job"}, namespace)'
            )
        )
        .with_variable(
            variable(
                "model_version",
                "Model version",
                f"label_values(kpigate_model_info{{{TARGET}}}, model_version)",
            )
        )
        .with_variable(
            variable("rollout", "Rollout", f"label_values({GATE}_stage_percent, rollout)")
        )
    )


def gate_row(d: dash.Dashboard) -> dash.Dashboard:
    """What the gate sees, from `kpigate status --serve-metrics` (a separate scrape job)."""
    sel = 'rollout=~"$rollout"'
    decision = (
        stat.Panel()
        .title("Gate decision")
        .description("The gate's latest decision on the evidence so far (promote, hold, rollback).")
        .datasource(DATASOURCE)
        .with_target(
            query(
                f"max by (rollout, decision) ({GATE}_decision{{{sel}}}) == 1",
                "{{rollout}}: {{decision}}",
            ).instant()
        )
        .height(6)
        .span(6)
        .text_mode(common.BigValueTextMode.NAME)
        .graph_mode(common.BigValueGraphMode.NONE)
    )
    stage = series(
        "Gate stage and holds",
        "The stage the gate judges (percent of traffic) and its inconclusive looks after the "
        "soak, against max_holds, after which the policy's timeout action applies.",
        [
            query(f"{GATE}_stage_percent{{{sel}}}", "{{rollout}} stage %", "A"),
            query(f"{GATE}_holds{{{sel}}}", "{{rollout}} holds", "B"),
            query(f"{GATE}_max_holds{{{sel}}}", "{{rollout}} max holds", "C"),
        ],
        "short",
        width=8,
    ).height(6)
    bounds = series(
        "KPI confidence bounds",
        "Each KPI's anytime-valid interval for candidate minus baseline, with its margin: the "
        "gate rolls back when the interval leaves the margin on the harmful side and promotes "
        "when it stays inside it.",
        [
            query(f"{GATE}_kpi_lower{{{sel}}}", "{{kpi}} lower", "A"),
            query(f"{GATE}_kpi_upper{{{sel}}}", "{{kpi}} upper", "B"),
            query(f"{GATE}_kpi_margin{{{sel}}}", "{{kpi}} margin", "C"),
        ],
        "short",
        width=10,
    ).height(6)
    return d.with_row(dash.Row("Gate")).with_panel(decision).with_panel(stage).with_panel(bounds)

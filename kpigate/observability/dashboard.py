"""The rollout dashboard as code: KPIs per arm from the router's Prometheus metrics, for Grafana.

Rows follow the policy's KPI categories (performance, operational, business, ethical), each
series per arm and model version; the top row shows the candidate's weight and the routing
mode. Stage changes (the weight moving) and mode switches come as annotations from Prometheus;
gate decisions as annotations tagged `kpigate` that the pipeline posts to Grafana's API.

Variables pick the scrape job, the namespace (the label Kubernetes service discovery adds to a
target) and the model versions, so two routers in one Prometheus do not mix; every panel reads
raw counters under that selector (the recording rules aggregate those labels away; they serve
the alerts). Per-arm KPIs use 5m rates; per-segment KPIs and the AUC 30m and 10m, since their
labelled volume is small. The AUC panel is the ROC AUC computed in PromQL from the
kpigate_labeled_score histograms, as the gate computes it (kpigate/engine/evidence.py), on a
subset of the buckets. The "Gate" row reads the gate's own series (`kpigate status
--serve-metrics`, kpigate/observability/gate_metrics.py): stage, decision, holds and each
KPI's confidence bounds against its margin. `kpigate render-dashboard` writes the JSON that
Grafana imports (manifests/grafana/kpigate.json); `--check` fails when the checked-in file is
stale.

examples:
  kpigate render-dashboard                       write manifests/grafana/kpigate.json
  kpigate render-dashboard --check               exit 1 if the checked-in JSON is out of date
  kpigate render-dashboard --out /tmp/k.json     write elsewhere
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from kpigate.observability.panels import (
    ARM_LEGEND,
    DATASOURCE,
    SHADOW_LEGEND,
    gate_row,
    query,
    series,
    variables,
)
from kpigate.observability.promql import (
    AUC_BOUNDS,
    AUC_WINDOW,
    SEL,
    TARGET,
    auc_expr,
    error_ratio,
    outcome_ratio,
    rate_ratio,
)

DEFAULT_OUT = Path("manifests/grafana/kpigate.json")
UID = "kpigate-rollout"
SEGMENT_WINDOW = "30m"


def _ratio(expr: str, title: str, description: str, width: int = 6) -> timeseries.Panel:
    """A per-arm ratio that keeps the shadow label."""
    return series(title, description, [query(expr, SHADOW_LEGEND)], "percentunit", width)


def _segment_ratio(num: str, den: str, dimension: str, title: str, what: str) -> timeseries.Panel:
    """Recall or FPR per arm and segment value (region=.., amount_band=..), served answers."""
    sel = f'{SEL},shadow="false",segment=~"{dimension}=.*"'
    window = SEGMENT_WINDOW

    def total(outcomes: str) -> str:
        return (
            f"sum by (arm, segment) (increase(kpigate_outcomes_total"
            f'{{{sel},outcome=~"{outcomes}"}}[{window}]))'
        )

    expr = f"{total(num)} / {total(den)}"
    return series(
        title,
        f"{what} per arm and {dimension} over {window} of joined labels (served answers). "
        "A gap between segments that the overall KPI hides is the ethical risk to watch.",
        [query(expr, "{{arm}} {{segment}}")],
        "percentunit",
        width=12,
    )


def _state_row(d: dash.Dashboard) -> dash.Dashboard:
    weight = (
        stat.Panel()
        .title("Candidate weight")
        .description("Share of entities routed to the candidate (0 when detached).")
        .datasource(DATASOURCE)
        .with_target(query(f"max(kpigate_candidate_weight_percent{{{TARGET}}})", "weight"))
        .unit("percent")
        .min(0)
        .max(100)
        .height(5)
        .span(4)
        .graph_mode(common.BigValueGraphMode.AREA)
    )
    mode = (
        stat.Panel()
        .title("Routing mode")
        .description("canary: the candidate answers its share; shadow: it scores copies only.")
        .datasource(DATASOURCE)
        .with_target(query(f"max by (mode) (kpigate_mode{{{TARGET}}}) == 1", "{{mode}}").instant())
        .height(5)
        .span(4)
        .text_mode(common.BigValueTextMode.NAME)
        .graph_mode(common.BigValueGraphMode.NONE)
    )
    models = (
        stat.Panel()
        .title("Loaded models")
        .description("Model version per arm, from kpigate_model_info.")
        .datasource(DATASOURCE)
        .with_target(
            query(
                f"max by (arm, model_version) (kpigate_model_info{{{SEL}}})", ARM_LEGEND
            ).instant()
        )
        .height(5)
        .span(6)
        .text_mode(common.BigValueTextMode.NAME)
        .graph_mode(common.BigValueGraphMode.NONE)
    )
    weight_over_time = series(
        "Candidate weight over time",
        "Each step is a stage (5 -> 25 -> 50 -> 100%); a drop to 0 is a rollback or detach.",
        [query(f"max(kpigate_candidate_weight_percent{{{TARGET}}})", "candidate weight")],
        "percent",
        width=10,
    ).height(5)
    return (
        d.with_row(dash.Row("Rollout state"))
        .with_panel(weight)
        .with_panel(mode)
        .with_panel(models)
        .with_panel(weight_over_time)
    )


def _performance_row(d: dash.Dashboard) -> dash.Dashboard:
    return (
        d.with_row(dash.Row("Performance (delayed labels)"))
        .with_panel(_ratio(outcome_ratio("tp", "tp|fn"), "Recall", "Fraud caught: tp / (tp + fn)."))
        .with_panel(
            _ratio(
                outcome_ratio("tp", "tp|fp"), "Precision", "Fraud among declines: tp / (tp + fp)."
            )
        )
        .with_panel(
            _ratio(
                auc_expr(),
                "AUC",
                f"ROC AUC from the scores of labelled predictions (kpigate_labeled_score) over "
                f"{AUC_WINDOW}: the chance a fraud scores above a legitimate transaction, as the "
                f"gate computes it, on {len(AUC_BOUNDS)} of the router's score buckets.",
            )
        )
        .with_panel(
            _ratio(
                outcome_ratio("fp", "fp|tn"),
                "False positive rate",
                "Legitimate declined: fp / (fp + tn).",
            )
        )
    )


def _operational_row(d: dash.Dashboard) -> dash.Dashboard:
    return (
        d.with_row(dash.Row("Operational"))
        .with_panel(
            series(
                "Latency p95",
                "Time from request to answer, served answers only (shadow copies excluded).",
                [
                    query(
                        "histogram_quantile(0.95, sum by (arm, model_version, le) "
                        f"(rate(kpigate_request_latency_seconds_bucket{{{SEL}}}[5m])))",
                        ARM_LEGEND,
                    )
                ],
                "s",
            )
        )
        .with_panel(
            series(
                "Error rate",
                "Scoring failures (exception, timeout, stopped) over attempts. Candidate "
                "failures fall back to the baseline.",
                [query(error_ratio(), ARM_LEGEND)],
                "percentunit",
            )
        )
        .with_panel(
            series(
                "Request rate",
                "Served predictions per second (one per instance of a batch).",
                [
                    query(
                        "sum by (arm, model_version) "
                        f'(rate(kpigate_decisions_total{{{SEL},shadow="false"}}[5m]))',
                        ARM_LEGEND,
                    )
                ],
                "reqps",
            )
        )
    )


def _business_row(d: dash.Dashboard) -> dash.Dashboard:
    return (
        d.with_row(dash.Row("Business"))
        .with_panel(
            _ratio(
                rate_ratio("kpigate_decisions_total", 'decision="approve"', 'decision=~".+"'),
                "Approval rate",
                "Transactions approved over decisions made.",
                width=12,
            )
        )
        .with_panel(
            _ratio(
                outcome_ratio("fn", "fn|tn"),
                "Chargeback rate",
                "Fraud among approved, labelled transactions: fn / (fn + tn).",
                width=12,
            )
        )
    )


def _ethical_row(d: dash.Dashboard) -> dash.Dashboard:
    return (
        d.with_row(dash.Row("Ethical (per segment)"))
        .with_panel(_segment_ratio("tp", "tp|fn", "region", "Recall per region", "Recall"))
        .with_panel(
            _segment_ratio("fp", "fp|tn", "region", "FPR per region", "False positive rate")
        )
        .with_panel(
            _segment_ratio("tp", "tp|fn", "amount_band", "Recall per amount band", "Recall")
        )
        .with_panel(
            _segment_ratio(
                "fp", "fp|tn", "amount_band", "FPR per amount band", "False positive rate"
            )
        )
    )


def _annotations(d: dash.Dashboard) -> dash.Dashboard:
    stage = (
        dash.AnnotationQuery()
        .name("Stage changes")
        .datasource(DATASOURCE)
        .enable(True)
        .icon_color("blue")
        .expr(f"changes(max(kpigate_candidate_weight_percent{{{TARGET}}})[2m:15s]) > 0")
    )
    mode = (
        dash.AnnotationQuery()
        .name("Mode changes")
        .datasource(DATASOURCE)
        .enable(True)
        .icon_color("purple")
        .expr(f'changes(max(kpigate_mode{{{TARGET},mode="shadow"}})[2m:15s]) > 0')
    )
    decisions = (
        dash.AnnotationQuery()
        .name("Gate decisions")
        .datasource(DataSourceRef(type_val="grafana", uid="-- Grafana --"))
        .enable(True)
        .icon_color("orange")
        .target(dash.AnnotationTarget().type("tags").tags(["kpigate"]).match_any(True).limit(500))
    )
    return d.annotation(stage).annotation(mode).annotation(decisions)


def build() -> dict[str, Any]:
    """The dashboard as the JSON object Grafana imports."""
    d = (
        dash.Dashboard("kpigate: progressive delivery")
        .uid(UID)
        .description(
            "Champion vs candidate KPIs per arm during a kpigate rollout (docs/metrics.md)."
        )
        .tags(["kpigate", "ml", "progressive-delivery"])
        .editable()
        .time("now-6h", "now")
        .refresh("1m")
        .timezone("browser")
        .with_variable(dash.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )
    d = variables(d)
    for add in (
        _state_row, gate_row, _performance_row, _operational_row, _business_row, _ethical_row
    ):  # fmt: skip
        d = add(d)
    d = _annotations(d)
    model: dict[str, Any] = json.loads(json.dumps(d.build(), cls=JSONEncoder))
    # Stable panel ids in layout order, so renders are byte-identical and links keep working.
    for number, panel in enumerate(model.get("panels", []), start=1):
        panel["id"] = number
    return model


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def expressions(model: dict[str, Any]) -> list[str]:
    """Every PromQL expression in a dashboard: panel targets and Prometheus annotations."""
    found = [
        target["expr"]
        for panel in model.get("panels", [])
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    for annotation in model.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            found.append(annotation["expr"])
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON (%(default)s)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when --out differs from a fresh render",
    )


def run(args: argparse.Namespace) -> int:
    text = render()
    out: Path = args.out
    if args.check:
        current = out.read_text(encoding="utf-8") if out.exists() else None
        if current != text:
            print(
                f"{out} is out of date with kpigate/observability/dashboard.py; "
                "run `kpigate render-dashboard` and commit the result",
                file=sys.stderr,
            )
            return 1
        print(f"{out} is up to date")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0

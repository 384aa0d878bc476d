"""The inputs several steps (and the local runner, kpigate/runner.py) share, each defined once:
its flag (the attribute name), type, default, help and what the WorkflowTemplate passes.

A step lists the ones it takes (`policy: PolicyFile`); a use may give its own default
(`evidence: EvidenceUri = ""`) and keeps the rest. The traffic backend's inputs are
kpigate/backends/cli.py BackendInputs.
"""

from __future__ import annotations

from typing import Annotated, Literal

from kpigate.steps.spec import field, wf

PolicyFile = Annotated[str, field(help="rollout policy YAML", argo="$POLICY")]
TrackingUri = Annotated[
    str | None,
    field(None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)", argo=wf("tracking-uri")),
]
ModelName = Annotated[str, field(help="registered model name", argo=wf("model-name"))]
# Before registry-approval: what the operator or the trigger asked for.
ModelRef = Annotated[
    str,
    field("", help="version number or alias (default: candidate)", argo=wf("model-version")),
]
# After it: the number registry-approval resolved (its output `version`).
CandidateVersion = Annotated[
    str,
    field("", help="the candidate's version number (registry-approval's output)", argo="$VERSION"),
]
BaselineVersion = Annotated[
    str,
    field(
        "",
        help="the baseline's (champion's) version at the rollout's start: PromQL "
        "{{ baseline_version }} and the audit trail",
        argo="$BASELINE",
    ),
]
RolloutId = Annotated[
    str, field("", help="rollout id (e.g. the workflow name)", argo="{{workflow.name}}")
]
EvidenceUri = Annotated[
    str, field(help="evidence store of the rollout: mlflow://... or a path", argo="$EVIDENCE")
]
OutDir = Annotated[
    str, field("", help="write output parameters here, one file each (Argo)", argo="$OUT_DIR")
]
RouterUrl = Annotated[
    str,
    field(
        "http://127.0.0.1:8080",
        help="kpigate router base URL (admin API, /metrics)",
        argo=wf("router-url"),
    ),
]
TrafficMode = Annotated[
    Literal["canary", "shadow"],
    field(
        "canary",
        help="canary: the candidate answers its share; shadow: it scores a copy",
        argo=wf("traffic-mode"),
    ),
]
Interval = Annotated[
    float, field(0.0, help="seconds per evaluation window (default: the policy's)")
]
# Where window counts come from (kpigate/sources/factory.py); the prediction log's URL is a
# secret and never a flag.
Source = Annotated[
    Literal["router", "prometheus", "predlog"],
    field(
        "router",
        help="router: its /metrics; prometheus: PromQL; predlog: SQL on the prediction log at "
        "KPIGATE_DB_URL or KPIGATE_DB_URL_FILE",
        argo=wf("metrics-source"),
    ),
]
PrometheusUrl = Annotated[
    str, field("", help="Prometheus base URL (--source prometheus)", argo=wf("prometheus-url"))
]
PrometheusMatchers = Annotated[
    str, field("", help='label matchers for the router\'s series, e.g. job="kpigate-router"')
]
PrometheusMode = Annotated[
    Literal["increase", "delta"], field("increase", help="how counters are read over a window")
]

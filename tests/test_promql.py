"""KPIs from the user's own PromQL, offline: templating, validation when the policy loads, and
the window observation built from query results (kpigate/sources/promql.py).

Template variables follow Flagger's MetricTemplate (`{{ namespace }}`, `{{ interval }}`:
fluxcd/flagger pkg/apis/flagger/v1beta1/metric.go, MetricTemplateModel.TemplateFunctions).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import promql_parser
import pytest

from kpigate.policy import Kpi, PolicyError, load_policy, policy_from_dict
from kpigate.sources import catalogue, promql
from kpigate.sources.counts import WindowCounts
from kpigate.sources.promql import KpiQueries, QueryContext

SELECTOR = 'reporter="destination", destination_workload_namespace="{{ namespace }}", destination_version="{{ version }}"'
ERRORS = 'sum(increase(istio_requests_total{ {{ selector }}, response_code=~"5.." }[{{ window }}])) or vector(0)'
REQUESTS = "sum(increase(istio_requests_total{ {{ selector }} }[{{ window }}]))"
BUCKETS = "sum by (le) (increase(istio_request_duration_milliseconds_bucket{ {{ selector }} }[{{ window }}]))"


def error_rate(**queries: Any) -> dict[str, Any]:
    return {
        "name": "error_rate",
        "direction": "lower",
        "queries": {"selector": SELECTOR, "successes": ERRORS, "trials": REQUESTS, **queries},
    }


def load_error(kpi: dict[str, Any]) -> str:
    with pytest.raises(PolicyError) as caught:
        policy_from_dict({"kpis": [kpi]}, "policy.yaml")
    return str(caught.value)


def test_a_query_is_rendered_per_arm_with_the_window_as_a_promql_duration() -> None:
    queries = KpiQueries(selector=SELECTOR, successes=ERRORS, trials=REQUESTS)
    context = QueryContext(
        model="fraud", namespace="prod", baseline_version="3", candidate_version="4"
    )
    candidate = queries.render("trials", "candidate", context, 600.0)
    assert candidate == (
        'sum(increase(istio_requests_total{ reporter="destination", '
        'destination_workload_namespace="prod", destination_version="4" }[10m]))'
    )
    baseline = queries.render("trials", "baseline", context, 90.4)
    assert 'destination_version="3"' in baseline and "[90s]" in baseline
    assert promql.promql_duration(7200) == "2h" and promql.promql_duration(0.2) == "1s"


def test_a_selector_per_arm_names_each_arm_its_own_way() -> None:
    queries = KpiQueries(
        selector={
            "baseline": 'destination_workload="fraud-primary"',
            "candidate": 'destination_workload="fraud-canary"',
        },
        successes=ERRORS,
        trials=REQUESTS,
    )
    assert "fraud-canary" in queries.render("trials", "candidate", QueryContext(), 60)
    assert "fraud-primary" in queries.render("trials", "baseline", QueryContext(), 60)
    with pytest.raises(ValueError, match="both baseline and candidate"):
        KpiQueries(selector={"candidate": 'a="b"'}, successes=ERRORS, trials=REQUESTS)  # type: ignore[dict-item]


def test_hostile_values_cannot_break_out_of_a_label_string() -> None:
    queries = KpiQueries(
        selector='destination_version="{{ version }}"', successes=ERRORS, trials=REQUESTS
    )
    hostile = QueryContext(candidate_version='2", destination_version=~".*')
    query = queries.render("trials", "candidate", hostile, 60)
    expr = promql_parser.parse(query)
    # One matcher on destination_version whose value is the whole hostile string, not two.
    selector = expr.expr.args[0].vector_selector  # type: ignore[attr-defined]
    values = [m.value for m in selector.matchers.matchers if m.name == "destination_version"]
    assert values == ['2", destination_version=~".*']


def test_a_valid_promql_kpi_loads_and_needs_no_router_reading() -> None:
    policy = policy_from_dict({"kpis": [error_rate()]})
    kpi = policy.kpis[0]
    assert kpi.queries is not None and kpi.queries.trials == REQUESTS
    catalogue.check(kpi)  # a KPI with queries is not looked up in the router's metrics
    assert not kpi.needs_labels


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"trials": "sum(increase(istio_requests_total{ {{ selector }} }[{{ windw }}]))"},
            "unknown template variable {{ windw }}",
        ),
        (
            {"trials": "sum(rate(istio_requests_total{ {{ selector }} }[5m])"},
            "trials: not valid PromQL",
        ),
        (
            {"trials": "istio_requests_total{ {{ selector }} }[{{ window }}]"},
            "trials: returns a range vector",
        ),
        ({"trials": '"{{ version }}"'}, "trials: returns a string"),
        ({"trials": None}, "missing: trials"),
        ({"buckets": BUCKETS}, "does not use the queries buckets"),
        ({"selector": ""}, "`selector` is not set"),
        ({"selector": 'destination_version="{{ vers }}"'}, "selector: cannot use {{ vers }}"),
        ({"selector": 'a="{{ window }}"'}, "selector: cannot use {{ window }}"),
        ({"selector": 'destination_workload="fraud"'}, "reads the same series for both arms"),
    ],
)
def test_a_bad_query_fails_at_load_naming_the_kpi_and_the_query(
    change: dict[str, Any], expected: str
) -> None:
    kpi = error_rate()
    for field, value in change.items():
        if value is None:
            kpi["queries"].pop(field)
        else:
            kpi["queries"][field] = value
    message = load_error(kpi)
    assert message.startswith("policy.yaml: kpis[0] (error_rate): queries: ")
    assert expected in message
    # The query (or selector) as written, to find and fix it.
    if expected.startswith("selector:"):
        assert kpi["queries"]["selector"] in message
    elif "trials:" in expected or "unknown" in expected:
        assert kpi["queries"]["trials"] in message


def test_each_type_needs_its_own_parts() -> None:
    latency = {
        "name": "p95",
        "type": "quantile",
        "quantile": 0.95,
        "direction": "lower",
        "margin": 10,
    }
    assert "needs the queries buckets" in load_error({**latency, "queries": {"selector": SELECTOR}})
    policy_from_dict({"kpis": [{**latency, "queries": {"selector": SELECTOR, "buckets": BUCKETS}}]})
    auc = {"name": "auc", "type": "auc", "queries": {"selector": SELECTOR, "positives": BUCKETS}}
    assert "missing: negatives" in load_error(auc)


def test_segmented_and_gap_kpis_must_name_the_segment() -> None:
    per_region = {**error_rate(), "segments": ["eu", "us"]}
    assert "must use {{ segment }}" in load_error(per_region)
    by_region = 'sum(increase(istio_requests_total{ {{ selector }}, region="{{ segment }}" }[{{ window }}]))'
    per_region["queries"] = {**per_region["queries"], "trials": by_region, "successes": by_region}
    policy_from_dict({"kpis": [per_region]})
    gap = {**per_region, "name": "gap", "type": "gap", "segments": [], "gap_segments": ["eu", "us"]}
    policy_from_dict({"kpis": [gap]})
    no_sides = {**gap, "gap_segments": None}
    assert "needs `gap_segments" in load_error(no_sides)


def counts_with(rows: dict[str, list[tuple[dict[str, str], float]]]) -> WindowCounts:
    counts = WindowCounts()
    for key, found in rows.items():
        for labels, value in found:
            counts.add(promql.table(key), tuple(sorted(labels.items())), value)
    return counts


def test_query_results_read_as_the_catalogues_window_observation() -> None:
    policy = policy_from_dict(
        {
            "kpis": [
                error_rate(),
                {"name": "p95", "type": "quantile", "quantile": 0.95, "direction": "lower", "margin": 10,
                 "queries": {"selector": SELECTOR, "buckets": BUCKETS}},
            ]
        }
    )  # fmt: skip
    rate, latency = policy.kpis
    counts = counts_with(
        {
            "error_rate": [
                ({"arm": "baseline", "part": "successes"}, 2.0),
                ({"arm": "baseline", "part": "trials"}, 400.0),
                ({"arm": "candidate", "part": "successes"}, 5.0),
                # no candidate trials: that arm is missing, not zero
            ],
            "p95": [
                ({"arm": "candidate", "part": "buckets", "le": "50"}, 30.0),
                ({"arm": "candidate", "part": "buckets", "le": "100"}, 39.5),
                ({"arm": "candidate", "part": "buckets", "le": "+Inf"}, 40.0),
            ],
        }
    )
    assert catalogue.read(rate, "error_rate", counts) == {
        "baseline": {"successes": 2.0, "trials": 400.0},
        "candidate": None,
    }
    assert catalogue.read(latency, "p95", counts) == {
        "baseline": None,
        "candidate": {"buckets": {"50": 30.0, "100": 39.5, "+Inf": 40.0}},
    }


def test_impossible_counts_are_missing_evidence() -> None:
    kpi = Kpi.model_validate(error_rate())
    more_errors_than_requests = counts_with(
        {"error_rate": [({"arm": a, "part": "successes"}, 9.0) for a in promql.ARMS]
         + [({"arm": a, "part": "trials"}, 3.0) for a in promql.ARMS]}
    )  # fmt: skip
    assert catalogue.read(kpi, "error_rate", more_errors_than_requests) == {
        "baseline": None,
        "candidate": None,
    }


def test_the_example_istio_policy_loads_and_its_queries_parse() -> None:
    root = Path(__file__).resolve().parent.parent
    policy = load_policy(root / "manifests/examples/policy-istio-promql.yaml")
    with_queries = [k for k in policy.kpis if k.queries is not None]
    assert {k.type.value for k in with_queries} >= {"rate", "quantile"}
    for kpi in with_queries:
        assert kpi.queries is not None
        for part in promql.PARTS[kpi.type.value]:
            for arm in promql.ARMS:
                promql_parser.parse(kpi.queries.render(part, arm, promql.SAMPLE, 300.0))


def test_a_broken_example_is_refused_with_the_file_the_kpi_and_the_query(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    text = (root / "manifests/examples/policy-istio-promql.yaml").read_text()
    broken = tmp_path / "policy.yaml"
    broken.write_text(text.replace("[{{ window }}]", "[{{ window }}", 1))
    with pytest.raises(PolicyError) as caught:
        load_policy(broken)
    assert str(caught.value).startswith(f"{broken}: kpis[")
    assert "not valid PromQL" in str(caught.value)


def test_queries_do_not_leak_into_kpis_without_them() -> None:
    plain = copy.deepcopy(policy_from_dict({"kpis": [{"name": "recall"}]}).kpis[0])
    assert plain.queries is None and plain.needs_labels


def test_kpigate_rollout_refuses_promql_kpis_on_the_router_source(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "kpigate.cli", "rollout", "--policy",
         str(root / "manifests/examples/policy-istio-promql.yaml"), "--model-name", "fraud",
         "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "PromQL KPIs: use --source prometheus" in done.stderr
    assert not (tmp_path / "state").exists()  # refused before anything was touched

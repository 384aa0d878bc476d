"""PromQL KPIs on a real Prometheus scraping test exporters that emit the real metric names:
an Istio-style canary judged end to end through the gate with no kpigate router anywhere.

Metric names and labels:
- Istio: istio_requests_total (reporter, destination_workload, destination_workload_namespace,
  destination_version, response_code, ...) and istio_request_duration_milliseconds, from Istio's
  standard metrics reference (https://istio.io/latest/docs/reference/config/metrics/); the
  duration buckets are the proxy's defaults.
- KServe: request_predict_seconds with the label model_name, from kserve/kserve
  python/kserve/kserve/metrics.py (PREDICT_HIST_TIME, PROM_LABELS).
The query templates follow Flagger's built-in Istio queries (fluxcd/flagger
pkg/metrics/observers/istio.go: reporter="destination", destination_workload_namespace, [interval]).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Histogram

from kpigate.engine import Decision, GateDecision
from kpigate.policy import Policy, load_policy, policy_from_dict
from kpigate.sources.prometheus import PrometheusSource
from kpigate.sources.promql import QueryContext
from kpigate.steps.evaluate_gate import judge_evidence
from kpigate.steps.soak_and_collect import soak, window_record
from kpigate.store.file import FileStore
from tests.prometheus_fixtures import Exporter, PrometheusServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "manifests/examples/policy-istio-promql.yaml"
ISTIO_LABELS = (
    "reporter",
    "source_workload",
    "destination_workload",
    "destination_workload_namespace",
    "destination_version",
    "destination_service",
    "response_code",
)
ISTIO_DURATION_BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000)  # fmt: skip


class IstioMesh:
    """The inbound sidecars of one service's two versions, as Prometheus scrapes them."""

    def __init__(self, namespace: str, versions: dict[str, str]) -> None:
        self.namespace = namespace
        self.versions = versions  # arm -> destination_version
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "istio_requests_total", "requests", ISTIO_LABELS, registry=self.registry
        )
        self.duration = Histogram(
            "istio_request_duration_milliseconds", "duration", ISTIO_LABELS,
            buckets=ISTIO_DURATION_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.series = f'istio_requests_total{{destination_workload_namespace="{namespace}"}}'
        self.served: dict[str, dict[str, int]] = {arm: {"200": 0, "503": 0} for arm in versions}
        for arm in versions:  # the series exist before the first window (see serve)
            for code in ("200", "503"):
                self.requests.labels(**self._labels(arm, code))
                self.duration.labels(**self._labels(arm, code))

    def _labels(self, arm: str, code: str) -> dict[str, str]:
        version = self.versions[arm]
        return {
            "reporter": "destination",
            "source_workload": "istio-ingressgateway",
            "destination_workload": f"fraud-{version}",
            "destination_workload_namespace": self.namespace,
            "destination_version": version,
            "destination_service": f"fraud.{self.namespace}.svc.cluster.local",
            "response_code": code,
        }

    def serve(
        self, arm: str, n: int, error_rate: float, median_ms: float, rng: random.Random
    ) -> None:
        for _ in range(n):
            code = "503" if rng.random() < error_rate else "200"
            labels = self._labels(arm, code)
            self.requests.labels(**labels).inc()
            self.duration.labels(**labels).observe(rng.lognormvariate(0, 0.5) * median_ms)
            self.served[arm][code] += 1


def scraped_since(prometheus: PrometheusServer, series: str, after: float) -> None:
    """Until every one of these series has a sample taken after `after` (a window's start), so
    increase() over the window sees each counter's value from before the window's traffic."""
    prometheus.wait_for(
        f"min(timestamp({series}))", lambda r: bool(r) and float(r[0]["value"][1]) > after
    )


def wait_scraped(prometheus: PrometheusServer, mesh: IstioMesh) -> None:
    """Until Prometheus holds the mesh's current request count (every series is one target)."""
    total = sum(sum(codes.values()) for codes in mesh.served.values())
    prometheus.wait_for(
        f"sum({mesh.series})",
        lambda r: bool(r) and float(r[0]["value"][1]) == total,
    )


@pytest.fixture
def mesh_factory(
    prometheus: PrometheusServer, start_exporter: Callable[[CollectorRegistry], Exporter]
) -> Callable[[str], IstioMesh]:
    def make(namespace: str) -> IstioMesh:
        mesh = IstioMesh(namespace, {"baseline": "v1", "candidate": "v2"})
        exporter = start_exporter(mesh.registry)
        prometheus.scrape(exporter.target)
        wait_scraped(prometheus, mesh)
        return mesh

    return make


def istio_policy(**stage: Any) -> Policy:
    """The example policy, with stages short enough for a test."""
    policy = load_policy(EXAMPLE)
    data = policy.model_dump(mode="json", exclude_none=True)
    data["stages"] = [
        {"traffic": 5, "soak": 3, "interval": 1, **stage},
        {"traffic": 100, "soak": 1, "interval": 1},
    ]
    data["max_holds"] = 4
    return policy_from_dict(data)


def roll(
    policy: Policy,
    source: PrometheusSource,
    mesh: IstioMesh,
    prometheus: PrometheusServer,
    tmp_path: Path,
    candidate: dict[str, float],
    max_looks: int = 8,
) -> tuple[GateDecision, list[dict[str, Any]]]:
    """The 5% stage as the local runner judges it (soak-and-collect, then evaluate-gate, look by
    look until the gate stops holding), with live traffic between looks."""
    rng = random.Random(7)
    store = FileStore(tmp_path / "evidence.jsonl")

    def one_window(_: float) -> None:
        scraped_since(prometheus, mesh.series, time.time())
        mesh.serve("baseline", 6000, error_rate=0.005, median_ms=40, rng=rng)
        mesh.serve("candidate", 2000, rng=rng, **candidate)  # type: ignore[arg-type]
        wait_scraped(prometheus, mesh)

    decision: GateDecision | None = None
    for looks in range(1, max_looks + 1):
        soak(policy, store, source, 5.0, looks, 1.0, "fraud-2", sleep=one_window)
        decision = judge_evidence(policy, store.read(), 5.0)
        if decision.decision is not Decision.HOLD or decision.suspend:
            break
    assert decision is not None
    return decision, [r.as_json() for r in store.read()]


def source_for(prometheus: PrometheusServer, policy: Policy, namespace: str) -> PrometheusSource:
    context = QueryContext(
        model="fraud", namespace=namespace, baseline_version="v1", candidate_version="v2"
    )
    return PrometheusSource(prometheus.url, kpis=policy.kpis, context=context)


def test_a_healthy_istio_canary_is_promoted_on_error_rate_and_p95_latency(
    prometheus: PrometheusServer, mesh_factory: Callable[[str], IstioMesh], tmp_path: Path
) -> None:
    mesh = mesh_factory("healthy")
    policy = istio_policy()
    source = source_for(prometheus, policy, "healthy")
    decision, records = roll(policy, source, mesh, prometheus, tmp_path,
                             {"error_rate": 0.005, "median_ms": 40})  # fmt: skip
    assert decision.decision is Decision.PROMOTE, decision.reasons
    assert {k: r.verdict.value for k, r in decision.kpis.items()} == {
        "error_rate": "pass",
        "latency_p95": "pass",
    }
    # Every window holds both arms of both KPIs, read from Istio's series alone: no router.
    for record in records:
        assert "stale" not in record, record
        for kpi in ("error_rate", "latency_p95"):
            assert record["kpis"][kpi]["baseline"] and record["kpis"][kpi]["candidate"], (
                kpi,
                record.get("note"),
                record["kpis"][kpi],
            )
    first = records[0]["kpis"]
    rate = first["error_rate"]["candidate"]
    # increase() extrapolates to the window's edges, so counts scale; their ratio stays.
    assert 2000 <= rate["trials"] < 2000 * 1.6
    buckets = first["latency_p95"]["baseline"]["buckets"]
    assert set(buckets) == {f"{b:g}" for b in ISTIO_DURATION_BUCKETS} | {"+Inf"}
    # Two queries, one count: increase() extrapolates each series on its own (a small series
    # is not extrapolated below zero), so the sums agree closely but not exactly.
    assert buckets["+Inf"] == pytest.approx(first["error_rate"]["baseline"]["trials"], rel=0.01)
    # `kpigate replay` reads the same evidence to the same decision.
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy.model_dump(mode="json", exclude_none=True)))
    replayed = subprocess.run(
        [sys.executable, "-m", "kpigate.cli", "replay", str(tmp_path / "evidence.jsonl"), "--policy", str(policy_file)],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert json.loads(replayed[-1])["decision"] == "promote"


@pytest.mark.parametrize(
    ("candidate", "failing"),
    [
        ({"error_rate": 0.06, "median_ms": 40}, "error_rate"),
        ({"error_rate": 0.005, "median_ms": 90}, "latency_p95"),
    ],
)
def test_a_harmful_istio_canary_is_rolled_back_on_the_kpi_it_harms(
    prometheus: PrometheusServer,
    mesh_factory: Callable[[str], IstioMesh],
    tmp_path: Path,
    candidate: dict[str, float],
    failing: str,
) -> None:
    namespace = f"harm-{failing.replace('_', '-')}"
    mesh = mesh_factory(namespace)
    policy = istio_policy()
    decision, records = roll(
        policy, source_for(prometheus, policy, namespace), mesh, prometheus, tmp_path, candidate
    )
    assert decision.decision is Decision.ROLLBACK, decision.reasons
    assert decision.kpis[failing].verdict.value == "fail"
    assert any(failing in reason for reason in decision.reasons)
    assert len(records) <= 3  # large harm is caught within the soak


def test_queries_that_find_nothing_hold_and_say_why(
    prometheus: PrometheusServer, mesh_factory: Callable[[str], IstioMesh], tmp_path: Path
) -> None:
    mesh = mesh_factory("present")
    policy = istio_policy()
    # A namespace with no series: the trials and bucket queries come back empty (the 5xx
    # count is `or vector(0)`), so both arms are missing, never zero.
    source = source_for(prometheus, policy, "absent")
    decision, records = roll(policy, source, mesh, prometheus, tmp_path,
                             {"error_rate": 0.06, "median_ms": 90}, max_looks=2)  # fmt: skip
    assert decision.decision is Decision.HOLD, decision.reasons
    for record in records:
        assert record["kpis"]["error_rate"] == {"baseline": None, "candidate": None}
        assert "latency_p95 candidate buckets: no data" in record["note"]


def test_a_query_returning_several_series_is_missing_not_summed(
    prometheus: PrometheusServer, mesh_factory: Callable[[str], IstioMesh]
) -> None:
    mesh = mesh_factory("unaggregated")
    policy = policy_from_dict(
        {"kpis": [{"name": "error_rate", "direction": "lower", "queries": {
            "selector": 'destination_workload_namespace="{{ namespace }}", destination_version="{{ version }}"',
            "successes": 'sum(increase(istio_requests_total{ {{ selector }}, response_code=~"5.." }[{{ window }}]))',
            # No sum(): one series per response code.
            "trials": "increase(istio_requests_total{ {{ selector }} }[{{ window }}])",
        }}]}
    )  # fmt: skip
    source = source_for(prometheus, policy, "unaggregated")
    source.mark()
    scraped_since(prometheus, mesh.series, time.time())
    rng = random.Random(3)
    for arm in ("baseline", "candidate"):
        mesh.serve(arm, 500, error_rate=0.1, median_ms=40, rng=rng)
    wait_scraped(prometheus, mesh)
    record = window_record(policy, source, "r", 1, 5.0).as_json()
    assert record["kpis"]["error_rate"] == {"baseline": None, "candidate": None}
    assert "error_rate baseline trials: 2 series, aggregate with sum" in record["note"]


def test_kserve_predict_latency_per_revision_from_pod_labels(
    prometheus: PrometheusServer, start_exporter: Callable[[CollectorRegistry], Exporter]
) -> None:
    """Two KServe predictor pods (one per revision) each expose request_predict_seconds; the
    revision label comes from service discovery, as Kubernetes pod labels do after relabelling."""
    pods: dict[str, Histogram] = {}
    groups = []
    for arm, revision in (
        ("baseline", "fraud-predictor-00001"),
        ("candidate", "fraud-predictor-00002"),
    ):
        registry = CollectorRegistry()
        pods[arm] = Histogram(
            "request_predict_seconds", "predict request latency", ["model_name"], registry=registry
        )
        groups.append(([start_exporter(registry).target], {"revision": revision}))
    policy = policy_from_dict(
        {"kpis": [{"name": "predict_p95", "type": "quantile", "quantile": 0.95, "direction": "lower",
                   "margin": 0.01, "queries": {
            "selector": {"baseline": 'revision="fraud-predictor-00001"', "candidate": 'revision="fraud-predictor-00002"'},
            "buckets": 'sum by (le) (increase(request_predict_seconds_bucket{model_name="{{ model }}", {{ selector }}}[{{ window }}]))',
        }}]}
    )  # fmt: skip
    for pod in pods.values():
        pod.labels(model_name="fraud")
    prometheus.scrape_groups(*groups)
    count = 'sum(request_predict_seconds_count{model_name="fraud"})'
    prometheus.wait_for(count, lambda r: bool(r) and len(r) == 1)
    source = PrometheusSource(prometheus.url, kpis=policy.kpis, context=QueryContext(model="fraud"))
    source.mark()
    scraped_since(prometheus, 'request_predict_seconds_count{model_name="fraud"}', time.time())
    rng = random.Random(5)
    for arm, median in (("baseline", 0.02), ("candidate", 0.2)):
        for _ in range(1000):
            pods[arm].labels(model_name="fraud").observe(rng.lognormvariate(0, 0.3) * median)
    prometheus.wait_for(count, lambda r: bool(r) and float(r[0]["value"][1]) == 2000)
    observed = window_record(policy, source, "r", 1, 5.0).as_json()["kpis"]["predict_p95"]
    for arm, pod in pods.items():
        exact = {
            s.labels["le"]: s.value
            for s in next(iter(pod.collect())).samples
            if s.name == "request_predict_seconds_bucket"
        }
        buckets = observed[arm]["buckets"]
        total = buckets["+Inf"]
        assert total >= 1000
        for le, value in exact.items():
            key = "+Inf" if le == "+Inf" else f"{float(le):g}"
            assert buckets[key] / total == pytest.approx(value / 1000, abs=0.01)
    # Prometheus itself agrees the candidate revision is the slow one.
    p95 = httpx.get(
        f"{prometheus.url}/api/v1/query",
        params={
            "query": (
                "histogram_quantile(0.95, sum by (revision, le) (request_predict_seconds_bucket))"
            )
        },
    ).json()
    by_revision = {r["metric"]["revision"]: float(r["value"][1]) for r in p95["data"]["result"]}
    assert by_revision["fraud-predictor-00002"] > by_revision["fraud-predictor-00001"]


def soak_step(*args: str) -> subprocess.Popen[str]:
    """soak-and-collect as Argo runs it."""
    command = [
        sys.executable,
        "-m",
        "kpigate.steps.soak_and_collect",
        "--policy",
        str(EXAMPLE),
        "--stage",
        "5",
        *args,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_the_soak_step_reads_promql_kpis_with_the_rollouts_values(
    prometheus: PrometheusServer, mesh_factory: Callable[[str], IstioMesh], tmp_path: Path
) -> None:
    mesh = mesh_factory("stepns")
    evidence = tmp_path / "evidence.jsonl"
    step = soak_step(
        "--looks", "1", "--interval", "4", "--source", "prometheus",
        "--prometheus-url", prometheus.url, "--model-name", "fraud", "--namespace", "stepns",
        "--baseline-version", "v1", "--model-version", "v2", "--evidence", str(evidence),
    )  # fmt: skip
    rng = random.Random(11)
    while step.poll() is None:  # traffic all along, wherever the step's window falls
        mesh.serve("baseline", 300, error_rate=0.01, median_ms=40, rng=rng)
        mesh.serve("candidate", 100, error_rate=0.01, median_ms=40, rng=rng)
        time.sleep(0.2)
    _, err = step.communicate()
    assert step.returncode == 0, err
    (record,) = [r.as_json() for r in FileStore(evidence).read()]
    assert "stale" not in record, record
    for kpi in ("error_rate", "latency_p95"):
        for arm in ("baseline", "candidate"):
            assert record["kpis"][kpi][arm], record


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--source", "router"), "KPIs error_rate, latency_p95 bring their own PromQL: use --source prometheus"),
        (("--source", "prometheus", "--prometheus-url", "http://127.0.0.1:9", "--namespace", "ns", "--model-version", "2"),
         "KPI 'error_rate': its queries use {{ baseline_version }}, but the rollout gave no value"),
    ],
)  # fmt: skip
def test_the_soak_step_refuses_promql_kpis_it_cannot_read(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    step = soak_step(*args, "--evidence", str(tmp_path / "e.jsonl"))
    _, err = step.communicate(timeout=120)
    assert step.returncode == 2 and message in err, err
    assert not (tmp_path / "e.jsonl").exists()  # nothing collected, nothing lost


def test_a_query_prometheus_refuses_misses_its_kpi_not_the_window(
    prometheus: PrometheusServer, mesh_factory: Callable[[str], IstioMesh]
) -> None:
    """Valid PromQL that fails to execute (HTTP 422, many-to-many matching: each side has one
    series per response code) is that KPI's problem; the other KPI of the window is read."""
    mesh = mesh_factory("refused")
    example = istio_policy()
    data = example.model_dump(mode="json", exclude_none=True)
    data["kpis"][0]["queries"]["trials"] = (
        "istio_requests_total{ {{ selector }} } / on (destination_version) istio_requests_total{ {{ selector }} }"
    )
    policy = policy_from_dict(data)
    source = source_for(prometheus, policy, "refused")
    source.mark()
    scraped_since(prometheus, mesh.series, time.time())
    rng = random.Random(13)
    for arm in ("baseline", "candidate"):
        mesh.serve(arm, 500, error_rate=0.1, median_ms=40, rng=rng)
    wait_scraped(prometheus, mesh)
    record = window_record(policy, source, "r", 1, 5.0).as_json()
    assert "stale" not in record, record
    assert record["kpis"]["error_rate"] == {"baseline": None, "candidate": None}
    assert "error_rate baseline trials: refused by Prometheus" in record["note"]
    assert "many-to-many" in record["note"]
    assert record["kpis"]["latency_p95"]["candidate"]["buckets"]["+Inf"] >= 500


def test_prometheus_down_is_a_missing_window_for_promql_kpis() -> None:
    policy = istio_policy()
    context = QueryContext(
        model="fraud", namespace="ns", baseline_version="1", candidate_version="2"
    )
    down = PrometheusSource("http://127.0.0.1:9", kpis=policy.kpis, context=context)
    down.mark()
    record = window_record(policy, down, "r", 1, 5.0).as_json()
    assert record["stale"] and record["kpis"] == {}
    assert "unreachable" in record["note"]

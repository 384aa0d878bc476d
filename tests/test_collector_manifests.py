"""The payload-logger wiring in manifests/examples: every predictor logs to the collector, the
resources still match their CRDs (in the shared schemas directory, KPIGATE_SCHEMAS: KServe's
InferenceService CRD, Seldon Core v1.17.1's SeldonDeployment CRD), and the collector's own
Deployment is valid Kubernetes.

The arm mapping follows the loggers' sources: KServe's agent injector
(kserve/kserve pkg/webhook/admission/pod/agent_injector.go) passes the pod label `endpoint` as
--endpoint, which pkg/logger/worker.go sends as ce-endpoint; Seldon's executor
(executor/logger/worker.go) sends the predictor's name as ce-endpoint.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from kpigate.collector import kserve, seldon
from kpigate.collector.cli import add_arguments, config_from_args
from tests.manifest_schemas import MANIFESTS, crd_errors, load_yaml_documents

EXAMPLES = MANIFESTS / "examples"


def _docs(name: str) -> list[dict[str, Any]]:
    return load_yaml_documents(EXAMPLES / name)


def _collector_url() -> str:
    service = next(d for d in _docs("kpigate-collector.yaml") if d["kind"] == "Service")
    meta = service["metadata"]
    return f"http://{meta['name']}.{meta['namespace']}.svc.cluster.local/"


def _kserve_predictors(isvc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = isvc["spec"]
    return [spec["predictor"], *(c["predictor"] for c in spec.get("canary", []))]


@pytest.mark.parametrize(
    "name", ["kserve-inferenceservice.yaml", "kserve-inferenceservice-canary.yaml"]
)
def test_every_kserve_predictor_logs_requests_and_responses_to_the_collector(name: str) -> None:
    (isvc,) = _docs(name)
    assert crd_errors(isvc) == []
    for predictor in _kserve_predictors(isvc):
        assert predictor["logger"] == {"mode": "all", "url": _collector_url()}


def test_the_kserve_canary_pods_carry_the_endpoints_the_collector_maps_to_arms() -> None:
    (isvc,) = _docs("kserve-inferenceservice-canary.yaml")
    baseline, candidate = _kserve_predictors(isvc)
    assert f"endpoint={baseline['labels']['endpoint']}" == kserve.DEFAULT_MATCH["baseline"]
    assert f"endpoint={candidate['labels']['endpoint']}" == kserve.DEFAULT_MATCH["candidate"]


def test_every_seldon_model_node_logs_to_the_collector_under_its_predictor_name() -> None:
    (sdep,) = _docs("seldon-seldondeployment.yaml")
    assert crd_errors(sdep) == []
    names = {}
    for predictor in sdep["spec"]["predictors"]:
        assert predictor["graph"]["logger"] == {"mode": "all", "url": _collector_url()}
        names[predictor["name"]] = f"endpoint={predictor['name']}"
    assert names == seldon.DEFAULT_MATCH


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("kserve-inferenceservice-canary.yaml", ["spec", "predictor", "logger"]),
        ("seldon-seldondeployment.yaml", ["spec", "predictors", 0, "graph", "logger"]),
    ],
)
def test_a_typo_in_the_logger_is_rejected_by_the_crd(name: str, path: list[Any]) -> None:
    (resource,) = _docs(name)
    broken = copy.deepcopy(resource)
    node: Any = broken
    for key in path:
        node = node[key]
    node["mdoe"] = node.pop("mode")
    assert any("mdoe" in e for e in crd_errors(broken))


def test_the_collector_deployment_is_valid_and_reads_its_database_url_from_the_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    docs = _docs("kpigate-collector.yaml")
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30", strict=True)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "kpigate.cli"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(container["args"][1:])
    # The pod's secret file, stood in for by a local one: the URL never goes through argv.
    (env,) = container["env"]
    secret = tmp_path / "url"
    secret.write_text("postgresql+psycopg://collector:s3cret@db/predlog\n")
    monkeypatch.setenv(env["name"], str(secret))
    monkeypatch.delenv("KPIGATE_DB_URL", raising=False)
    config = config_from_args(args)
    assert config.db_url == "postgresql+psycopg://collector:s3cret@db/predlog"
    assert not any("s3cret" in a or "postgresql" in a for a in container["args"])
    assert [(r.arm, r.version) for r in config.arms] == [("baseline", "2"), ("candidate", "3")]
    assert config.backend == "kserve" and config.label_horizon_s == 30 * 86400
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_a_database_url_on_argv_is_refused_unless_it_is_a_local_sqlite_file() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--backend", "seldon", "--baseline-version", "1", "--candidate-version", "2"]
    with pytest.raises(ValueError, match="KPIGATE_DB_URL"):
        config_from_args(parser.parse_args([*argv, "--db-url", "postgresql://u:p@h/db"]))
    with pytest.raises(ValueError, match="ATTRIBUTE=VALUE"):
        config_from_args(parser.parse_args([*argv, "--candidate-match", "colour=blue"]))
    local = config_from_args(parser.parse_args([*argv, "--db-url", "sqlite:///p.db"]))
    assert local.arms[1].equals == (("endpoint", "candidate"),)

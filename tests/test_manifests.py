"""Trigger (Argo Events) and RBAC manifests: schema-valid, typo-proof, least privilege."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from kpigate.backends import istio, kserve, seldon
from kpigate.workflows.progressive_delivery import ARGUMENTS, SERVICE_ACCOUNT, TEMPLATE_NAME
from tests.manifest_schemas import MANIFESTS, argo_errors, load_yaml_documents

EVENTS = MANIFESTS / "argo-events"
RBAC = MANIFESTS / "rbac"
KUBERNETES_VERSION = "1.30"


def one(path: Path) -> dict[str, Any]:
    (doc,) = load_yaml_documents(path)
    return doc


@pytest.mark.parametrize("name", ["eventbus.yaml", "eventsource.yaml", "sensor.yaml"])
def test_argo_events_manifests_match_the_schema(name: str) -> None:
    assert argo_errors(one(EVENTS / name)) == []


@pytest.mark.parametrize(
    ("name", "path", "typo"),
    [
        ("eventsource.yaml", ("spec", "webhook", "mlflow-registry"), "endpiont"),
        ("sensor.yaml", ("spec", "dependencies", 0), "eventSourceNme"),
        ("sensor.yaml", ("spec", "triggers", 0, "template", "argoWorkflow"), "operaton"),
    ],
)
def test_a_typo_in_an_argo_events_manifest_is_rejected(
    name: str, path: tuple[Any, ...], typo: str
) -> None:
    doc = copy.deepcopy(one(EVENTS / name))
    node: Any = doc
    for key in path:
        node = node[key]
    node[typo] = "x"
    assert any(typo in e for e in argo_errors(doc))


def test_the_sensor_starts_the_template_with_the_event_s_model_and_version() -> None:
    source = one(EVENTS / "eventsource.yaml")
    sensor = one(EVENTS / "sensor.yaml")
    (dependency,) = sensor["spec"]["dependencies"]
    assert dependency["eventSourceName"] == source["metadata"]["name"]
    assert dependency["eventName"] in source["spec"]["webhook"]
    (trigger,) = sensor["spec"]["triggers"]
    argo = trigger["template"]["argoWorkflow"]
    workflow = argo["source"]["resource"]
    assert argo_errors(workflow) == []
    assert workflow["spec"]["workflowTemplateRef"] == {"name": TEMPLATE_NAME}
    parameters = workflow["spec"]["arguments"]["parameters"]
    assert all(p["name"] in ARGUMENTS for p in parameters)
    filled = {
        parameters[int(p["dest"].rsplit(".", 2)[1])]["name"]: p["src"]["dataKey"]
        for p in argo["parameters"]
    }
    # MLflow's envelope (mlflow/webhooks/delivery.py), pinned end to end in test_workflow_events
    assert filled == {"model-name": "body.data.name", "model-version": "body.data.version"}
    assert sensor["spec"]["template"]["serviceAccountName"] == "kpigate-events"


def rbac_documents() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, d) for p in sorted(RBAC.glob("*.yaml")) for d in load_yaml_documents(p)]


@pytest.mark.parametrize(("name", "doc"), rbac_documents())
def test_rbac_is_valid_in_strict_mode(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_typo_in_rbac_is_rejected() -> None:
    role = copy.deepcopy(next(d for _, d in rbac_documents() if d["kind"] == "Role"))
    role["rules"][0]["verb"] = role["rules"][0].pop("verbs")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(role, KUBERNETES_VERSION, strict=True)


def test_rbac_grants_only_what_the_steps_use() -> None:
    roles = {d["metadata"]["name"]: d["rules"] for _, d in rbac_documents() if d["kind"] == "Role"}
    expected = {
        "kpigate-steps-executor": [("argoproj.io", "workflowtaskresults", {"create", "patch"})],
        # argo-events pkg/sensors/triggers/argo-workflow/argo-workflow.go lists what it
        # submitted; argo-workflows workflow/validate/validate.go gets the referenced template.
        "kpigate-events-submit": [
            ("argoproj.io", "workflows", {"create", "get", "list"}),
            ("argoproj.io", "workflowtemplates", {"get"}),
        ],
    }
    for name, module in (("kserve", kserve), ("seldon", seldon), ("istio", istio)):
        expected[f"kpigate-backend-{name}"] = [
            (module.KIND.group, module.KIND.plural, {"get", "patch"})
        ]
    actual = {
        name: [
            (group, resource, set(rule["verbs"]))
            for rule in rules
            for group in rule["apiGroups"]
            for resource in rule["resources"]
        ]
        for name, rules in roles.items()
    }
    assert actual == expected
    bindings = [d for _, d in rbac_documents() if d["kind"] == "RoleBinding"]
    assert {b["roleRef"]["name"] for b in bindings} == set(roles)
    step_roles = {
        b["roleRef"]["name"] for b in bindings if b["subjects"][0]["name"] == SERVICE_ACCOUNT
    }
    assert step_roles == set(roles) - {"kpigate-events-submit"}

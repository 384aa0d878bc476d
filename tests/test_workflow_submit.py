"""`kpigate submit` against a local HTTP server standing in for the Argo server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from kpigate.cli import main
from tests.manifest_schemas import argo_errors

# Hera 7.1's WorkflowsService still calls pydantic's deprecated .json().
pytestmark = pytest.mark.filterwarnings("ignore:The `json` method is deprecated")


def created(request: Request) -> Response:
    workflow = json.loads(request.data)["workflow"]
    workflow["metadata"]["name"] = workflow["metadata"]["generateName"] + "x7k2p"
    return Response(json.dumps(workflow), content_type="application/json")


def test_submit_creates_a_workflow_from_the_template(
    httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("ARGO_SERVER", httpserver.url_for("/"))
    monkeypatch.setenv("ARGO_TOKEN", "s3cret")
    monkeypatch.setenv("ARGO_NAMESPACE", "ml")
    httpserver.expect_request(
        "/api/v1/workflows/ml",
        method="POST",
        headers={"Authorization": "Bearer s3cret", "Content-Type": "application/json"},
    ).respond_with_handler(created)

    code = main(["submit", "--model-version", "7", "-p", "backend=istio"])

    assert code == 0
    ((request, _),) = httpserver.log
    body = json.loads(request.data)
    assert body == {
        "workflow": {
            "metadata": {
                "generateName": "progressive-delivery-",
                "labels": {
                    "app.kubernetes.io/part-of": "kpigate",
                    "kpigate.io/model": "fraud",
                    "kpigate.io/version": "7",
                },
            },
            "spec": {
                "arguments": {
                    "parameters": [
                        {"name": "model-name", "value": "fraud"},
                        {"name": "model-version", "value": "7"},
                        {"name": "backend", "value": "istio"},
                    ]
                },
                "workflowTemplateRef": {"name": "progressive-delivery"},
            },
        }
    }
    workflow = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", **body["workflow"]}
    assert argo_errors(workflow) == []
    out = capsys.readouterr().out
    assert "submitted ml/progressive-delivery-x7k2p" in out
    assert "workflows/ml/progressive-delivery-x7k2p" in out


def test_flags_override_the_environment(
    httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARGO_SERVER", "http://127.0.0.1:9")
    httpserver.expect_request(
        "/api/v1/workflows/team", method="POST", headers={"Authorization": "Bearer flag-token"}
    ).respond_with_handler(created)
    argv = ["submit", "--model-version", "3", "--host", httpserver.url_for("/")]
    assert main([*argv, "--token", "flag-token", "--namespace", "team"]) == 0


def test_server_refusal_and_unknown_arguments_are_explained(
    httpserver: HTTPServer, capsys: Any
) -> None:
    httpserver.expect_request("/api/v1/workflows/argo").respond_with_json(
        {"code": 3, "message": 'workflowtemplates.argoproj.io "progressive-delivery" not found'},
        status=400,
    )
    host = httpserver.url_for("/")
    assert main(["submit", "--model-version", "3", "--host", host]) == 1
    assert "refused the workflow" in capsys.readouterr().err
    assert main(["submit", "--model-version", "3", "--host", host, "-p", "backnd=istio"]) == 1
    assert "unknown workflow argument(s) backnd" in capsys.readouterr().err


def test_no_server_configured(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.delenv("ARGO_SERVER", raising=False)
    assert main(["submit", "--model-version", "3"]) == 2
    assert "ARGO_SERVER" in capsys.readouterr().err

"""The Kubernetes backends' calls, against a local HTTP server standing in for the API server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from kpigate.backends import BackendError, BackendSettings, make_backend
from kpigate.backends.patching import JSON_PATCH, MERGE_PATCH
from tests.test_backends_patches import example


def custom_objects_api(server: HTTPServer) -> Any:
    config = client.Configuration(host=server.url_for("").rstrip("/"))
    config.api_key = {"BearerToken": "sa-token"}
    config.api_key_prefix = {"BearerToken": "Bearer"}
    return client.CustomObjectsApi(client.ApiClient(config))


class Recorder:
    """Answers GET with the resource and PATCH with the patched resource; keeps every PATCH."""

    def __init__(self, resource: dict[str, Any]) -> None:
        self.resource = resource
        self.patches: list[Request] = []

    def get(self, request: Request) -> Response:
        return Response(json.dumps(self.resource), content_type="application/json")

    def patch(self, request: Request) -> Response:
        self.patches.append(request)
        return Response(json.dumps(self.resource), content_type="application/json")


def serve(server: HTTPServer, path: str, resource: dict[str, Any]) -> Recorder:
    recorder = Recorder(resource)
    server.expect_request(path, method="GET").respond_with_handler(recorder.get)
    server.expect_request(path, method="PATCH").respond_with_handler(recorder.patch)
    return recorder


def test_kserve_merge_patch_with_server_side_dry_run(httpserver: HTTPServer) -> None:
    path = "/apis/serving.kserve.io/v1beta1/namespaces/models/inferenceservices/fraud"
    recorder = serve(httpserver, path, example("kserve-inferenceservice.yaml"))
    settings = BackendSettings(kind="kserve", namespace="models", resource="fraud", dry_run=True)
    backend = make_backend(settings, custom_objects_api(httpserver))
    backend.set_weight(25)
    (request,) = recorder.patches
    assert request.headers["Content-Type"] == MERGE_PATCH
    assert request.headers["Authorization"] == "Bearer sa-token"
    assert request.args["dryRun"] == "All"
    assert request.args["fieldManager"] == "kpigate"
    assert request.get_json() == {"spec": {"predictor": {"canaryTrafficPercent": 25}}}
    assert backend.get_weight() == 0  # the example's value, as served


def test_seldon_json_patch(httpserver: HTTPServer) -> None:
    path = "/apis/machinelearning.seldon.io/v1/namespaces/models/seldondeployments/fraud"
    recorder = serve(httpserver, path, example("seldon-seldondeployment.yaml"))
    settings = BackendSettings(kind="seldon", namespace="models", resource="fraud")
    make_backend(settings, custom_objects_api(httpserver)).set_weight(5)
    (request,) = recorder.patches
    assert request.headers["Content-Type"] == JSON_PATCH
    assert "dryRun" not in request.args
    assert request.get_json() == [
        {"op": "test", "path": "/spec/predictors/0/name", "value": "baseline"},
        {"op": "test", "path": "/spec/predictors/1/name", "value": "candidate"},
        {"op": "add", "path": "/spec/predictors/0/traffic", "value": 95},
        {"op": "add", "path": "/spec/predictors/1/traffic", "value": 5},
    ]


def test_istio_mirror_and_detach_are_json_patches(httpserver: HTTPServer) -> None:
    path = "/apis/networking.istio.io/v1/namespaces/models/virtualservices/fraud"
    recorder = serve(httpserver, path, example("istio-virtualservice.yaml", "VirtualService"))
    settings = BackendSettings(kind="istio", namespace="models", resource="fraud")
    backend = make_backend(settings, custom_objects_api(httpserver))
    backend.set_mirror(True)
    backend.detach()
    mirror, detach = recorder.patches
    assert mirror.headers["Content-Type"] == JSON_PATCH
    ops = {(op["op"], op["path"]) for op in mirror.get_json()}
    assert ("add", "/spec/http/0/mirror") in ops
    assert ("add", "/spec/http/0/mirrorPercentage") in ops
    assert ("remove", "/spec/http/0/route/1") in {(o["op"], o["path"]) for o in detach.get_json()}


def test_an_unchanged_resource_is_not_patched(httpserver: HTTPServer) -> None:
    path = "/apis/serving.kserve.io/v1beta1/namespaces/models/inferenceservices/fraud"
    recorder = serve(httpserver, path, example("kserve-inferenceservice.yaml"))
    settings = BackendSettings(kind="kserve", namespace="models", resource="fraud")
    make_backend(settings, custom_objects_api(httpserver)).set_mirror(False)
    assert recorder.patches == []


@pytest.mark.parametrize(
    ("status", "message"),
    [(404, "not found: check the namespace"), (403, "needs get and patch on inferenceservices")],
)
def test_api_errors_say_what_to_fix(httpserver: HTTPServer, status: int, message: str) -> None:
    path = "/apis/serving.kserve.io/v1beta1/namespaces/models/inferenceservices/fraud"
    body = {"kind": "Status", "message": f"HTTP {status} from the fake API server"}
    httpserver.expect_request(path).respond_with_json(body, status=status)
    settings = BackendSettings(kind="kserve", namespace="models", resource="fraud")
    backend = make_backend(settings, custom_objects_api(httpserver))
    with pytest.raises(BackendError, match=message):
        backend.get_weight()


def test_a_kubernetes_backend_needs_a_resource_name() -> None:
    with pytest.raises(BackendError, match="--resource"):
        make_backend(BackendSettings(kind="istio"), object())


def test_unknown_backend_lists_the_choices() -> None:
    with pytest.raises(BackendError, match="router, kserve, seldon, istio"):
        make_backend(BackendSettings(kind="linkerd"))

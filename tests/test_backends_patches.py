"""Each backend's computed patch, applied to the example resource, still matches the CRD schema."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kpigate.backends import (
    BackendError,
    BackendSettings,
    UnsupportedOperation,
    istio,
    kserve,
    seldon,
)
from kpigate.backends.patching import Patch, PatchTestFailed
from tests.manifest_schemas import MANIFESTS, crd_errors, load_yaml_documents


def example(name: str, kind: str | None = None) -> dict[str, Any]:
    docs = load_yaml_documents(MANIFESTS / "examples" / name)
    return next(d for d in docs if kind is None or d["kind"] == kind)


def applied(resource: dict[str, Any], patch: Patch) -> dict[str, Any]:
    result = patch.apply(resource)
    assert crd_errors(result) == [], patch.body
    return result


@pytest.mark.parametrize(
    "name",
    [
        "kserve-inferenceservice.yaml",
        "kserve-inferenceservice-canary.yaml",
        "seldon-seldondeployment.yaml",
        "istio-virtualservice.yaml",
    ],
)
def test_example_resources_match_their_crds(name: str) -> None:
    for doc in load_yaml_documents(MANIFESTS / "examples" / name):
        assert crd_errors(doc) == []


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("kserve-inferenceservice.yaml", ["spec", "predictor"]),
        ("seldon-seldondeployment.yaml", ["spec", "predictors", 0]),
        ("istio-virtualservice.yaml", ["spec", "http", 0]),
    ],
)
def test_a_typo_in_a_resource_is_caught(name: str, path: list[Any]) -> None:
    resource = copy.deepcopy(example(name))
    node: Any = resource
    for key in path:
        node = node[key]
    node["canaryTraficPercent"] = 5
    assert any("canaryTraficPercent" in e for e in crd_errors(resource))


def test_kserve_canary_traffic_percent_stages() -> None:
    isvc = example("kserve-inferenceservice.yaml")
    for percent in (5, 25, 50, 95, 100):
        patch = kserve.weight_patch(isvc, percent)
        assert patch.kind == "merge"
        isvc = applied(isvc, patch)
        assert kserve.read_weight(isvc) == percent
    isvc = applied(isvc, kserve.detach_patch(isvc))
    assert kserve.read_weight(isvc) == 0


def test_kserve_refuses_fractional_percent_and_mirroring() -> None:
    isvc = example("kserve-inferenceservice.yaml")
    with pytest.raises(BackendError, match="whole percents"):
        kserve.weight_patch(isvc, 12.5)
    with pytest.raises(UnsupportedOperation, match="istio"):
        kserve.mirror_patch(isvc, True)
    assert not kserve.mirror_patch(isvc, False).body


def test_kserve_v020_canary_form() -> None:
    isvc = example("kserve-inferenceservice-canary.yaml")
    patch = kserve.weight_patch(isvc, 25, "canary")
    assert patch.kind == "json" and patch.body[0]["op"] == "test"
    isvc = applied(isvc, patch)
    assert kserve.read_weight(isvc, "canary") == 25
    assert isvc["spec"]["canary"][0]["trafficPercent"] == 25
    isvc = applied(isvc, kserve.detach_patch(isvc, "canary"))
    assert "canary" not in isvc["spec"] or isvc["spec"]["canary"] == []
    assert kserve.read_weight(isvc, "canary") == 0
    assert not kserve.detach_patch(isvc, "canary").body  # detaching twice changes nothing


def test_kserve_canary_patch_fails_when_the_candidate_changed_since_read() -> None:
    isvc = example("kserve-inferenceservice-canary.yaml")
    patch = kserve.weight_patch(isvc, 5, "canary")
    changed = copy.deepcopy(isvc)
    changed["spec"]["canary"][0]["predictor"]["model"]["storageUri"] = "s3://other"
    with pytest.raises(PatchTestFailed):
        patch.apply(changed)


def test_kserve_typo_in_a_patch_is_caught() -> None:
    isvc = example("kserve-inferenceservice.yaml")
    typo = Patch("merge", {"spec": {"predictor": {"canaryTrafficPercnt": 5}}})
    assert any("canaryTrafficPercnt" in e for e in crd_errors(typo.apply(isvc)))


SELDON = ("baseline", "candidate")


def test_seldon_traffic_split_shadow_and_detach() -> None:
    sdep = example("seldon-seldondeployment.yaml")
    for percent in (5, 25, 50, 95):
        sdep = applied(sdep, seldon.weight_patch(sdep, percent, *SELDON))
        traffic = [p["traffic"] for p in sdep["spec"]["predictors"]]
        assert traffic == [100 - percent, percent]
        assert seldon.read_weight(sdep, *SELDON) == percent
    sdep = applied(sdep, seldon.mirror_patch(sdep, True, *SELDON))
    candidate = sdep["spec"]["predictors"][1]
    assert candidate["shadow"] is True and candidate["traffic"] == 0
    assert sdep["spec"]["predictors"][0]["traffic"] == 100
    sdep = applied(sdep, seldon.mirror_patch(sdep, False, *SELDON))
    assert "shadow" not in sdep["spec"]["predictors"][1]
    sdep = applied(sdep, seldon.detach_patch(sdep, *SELDON))
    assert [p["name"] for p in sdep["spec"]["predictors"]] == ["baseline"]
    assert sdep["spec"]["predictors"][0]["traffic"] == 100
    assert not seldon.detach_patch(sdep, *SELDON).body


def test_seldon_names_the_predictors_it_could_not_find() -> None:
    sdep = example("seldon-seldondeployment.yaml")
    with pytest.raises(BackendError, match=r"no candidate predictor named 'canary'.*baseline"):
        seldon.weight_patch(sdep, 5, "baseline", "canary")


def test_seldon_typo_in_a_patch_is_caught() -> None:
    sdep = example("seldon-seldondeployment.yaml")
    typo = Patch("json", [{"op": "add", "path": "/spec/predictors/1/shaddow", "value": True}])
    assert any("shaddow" in e for e in crd_errors(typo.apply(sdep)))


ISTIO = BackendSettings(kind="istio", resource="fraud")


def test_istio_weights_mirror_and_detach() -> None:
    vs = example("istio-virtualservice.yaml", "VirtualService")
    for percent in (5, 25):
        vs = applied(vs, istio.weight_patch(vs, percent, ISTIO))
        assert [r["weight"] for r in vs["spec"]["http"][0]["route"]] == [100 - percent, percent]
    vs = applied(vs, istio.mirror_patch(vs, True, ISTIO))
    http = vs["spec"]["http"][0]
    assert http["mirror"] == {"host": "fraud.models.svc.cluster.local", "subset": "candidate"}
    assert http["mirrorPercentage"] == {"value": 25.0}
    assert [r["weight"] for r in http["route"]] == [100, 0]
    assert istio.read_weight(vs, ISTIO) == 25
    vs = applied(vs, istio.weight_patch(vs, 50, ISTIO))
    assert vs["spec"]["http"][0]["mirrorPercentage"] == {"value": 50.0}
    vs = applied(vs, istio.mirror_patch(vs, False, ISTIO))
    assert "mirror" not in vs["spec"]["http"][0]
    assert [r["weight"] for r in vs["spec"]["http"][0]["route"]] == [50, 50]
    vs = applied(vs, istio.detach_patch(vs, ISTIO))
    assert vs["spec"]["http"][0]["route"] == [
        {
            "destination": {"host": "fraud.models.svc.cluster.local", "subset": "baseline"},
            "weight": 100,
        }
    ]
    assert istio.read_weight(vs, ISTIO) == 0
    assert not istio.detach_patch(vs, ISTIO).body


def test_istio_explains_missing_destinations() -> None:
    vs = example("istio-virtualservice.yaml", "VirtualService")
    settings = BackendSettings(kind="istio", resource="fraud", candidate="v2")
    with pytest.raises(BackendError, match="candidate subset 'v2'"):
        istio.weight_patch(vs, 5, settings)


def test_istio_typo_in_a_patch_is_caught() -> None:
    vs = example("istio-virtualservice.yaml", "VirtualService")
    typo = Patch("json", [{"op": "add", "path": "/spec/http/0/mirrorPercent age", "value": 5}])
    assert crd_errors(typo.apply(vs)) != []
    typo = Patch(
        "json", [{"op": "add", "path": "/spec/http/0/mirrorPercentage", "value": {"vaule": 5}}]
    )
    assert any("vaule" in e for e in crd_errors(typo.apply(vs)))


def test_the_workflow_backend_flags_parse_into_settings() -> None:
    import argparse

    from kpigate.backends.cli import BackendInputs, add_backend_arguments, settings_from_args
    from kpigate.steps.spec import argo_flags

    parser = argparse.ArgumentParser()
    add_backend_arguments(parser)
    values = {
        "--backend": "istio",
        "--namespace": "",
        "--resource": "",
        "--baseline": "stable",
        "--candidate": "canary",
        "--kserve-form": "canary",
        "--router-url": "http://router:8080",
    }
    assert set(values) == set(argo_flags(BackendInputs))  # what the template passes
    args = parser.parse_args([item for pair in values.items() for item in pair])
    settings = settings_from_args(args, default_resource="fraud")
    assert settings == BackendSettings(
        kind="istio",
        router_url="http://router:8080",
        resource="fraud",
        kserve_form="canary",
        baseline="stable",
        candidate="canary",
    )

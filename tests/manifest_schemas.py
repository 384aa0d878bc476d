"""Validators for the public API schemas in ../shared/schemas (or $KPIGATE_SCHEMAS).

The schemas are data kept outside the repository (see SOURCES.md there). Unknown fields are
rejected by injecting `additionalProperties: false` wherever a schema declares `properties`,
so that a typo such as `entrypiont` fails instead of passing silently.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "manifests"


def schemas_dir() -> Path:
    path = Path(os.environ.get("KPIGATE_SCHEMAS") or REPO.parent / "shared" / "schemas")
    if not (path / "SOURCES.md").exists():
        message = f"API schemas not found in {path}: set KPIGATE_SCHEMAS to their directory"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def reject_unknown_fields(schema: Any) -> Any:
    """A copy with additionalProperties: false on every object schema that lists properties."""
    if isinstance(schema, list):
        return [reject_unknown_fields(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: reject_unknown_fields(v) for k, v in schema.items()}
    if (
        isinstance(schema.get("properties"), dict)
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


# The CRD files are megabytes of YAML: the C loader reads them several times faster.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(path.read_text(), Loader=_LOADER) if d]


# -- CRDs (KServe, Seldon, Istio) ---------------------------------------------------------

CRD_FILES = {
    "InferenceService": "kserve-inferenceservices.crd.yaml",
    "SeldonDeployment": "seldon-seldondeployments.crd.yaml",
    "VirtualService": "istio.crds.yaml",
    "DestinationRule": "istio.crds.yaml",
}


@functools.cache
def _crd_validator(kind: str, api_version: str) -> jsonschema.protocols.Validator:
    group, _, version = api_version.partition("/")
    for crd in load_yaml_documents(schemas_dir() / CRD_FILES[kind]):
        spec = crd.get("spec", {})
        if spec.get("names", {}).get("kind") != kind or spec.get("group") != group:
            continue
        for entry in spec["versions"]:
            if entry["name"] == version:
                schema = copy.deepcopy(entry["schema"]["openAPIV3Schema"])
                # Some CRDs (Istio) leave the object envelope to the API server.
                props = schema.setdefault("properties", {})
                props.setdefault("apiVersion", {"type": "string"})
                props.setdefault("kind", {"type": "string"})
                props.setdefault("metadata", {"type": "object"})
                strict = reject_unknown_fields(schema)
                return jsonschema.Draft202012Validator(strict)
    raise AssertionError(f"no CRD schema for {kind} {api_version} in {CRD_FILES[kind]}")


def crd_errors(resource: dict[str, Any]) -> list[str]:
    validator = _crd_validator(resource["kind"], resource["apiVersion"])
    return [_describe(e) for e in validator.iter_errors(resource)]


def _describe(error: jsonschema.ValidationError) -> str:
    return f"{'/'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"


# -- Argo Workflows and Argo Events -------------------------------------------------------


@functools.cache
def _definitions(filename: str) -> dict[str, Any]:
    data = json.loads((schemas_dir() / filename).read_text())
    definitions: dict[str, Any] = data["definitions"]
    if filename == "argo-workflows.schema.json":
        definitions["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] = {
            "type": ["integer", "string"]
        }
    if filename == "argo-events.schema.json":
        # Upstream examples omit `url` (the EventSource's service fills it in).
        for name in ("WebhookContext", "WebhookEventSource"):
            entry = definitions[f"io.argoproj.events.v1alpha1.{name}"]
            entry["required"] = [r for r in entry.get("required", []) if r != "url"]
    strict: dict[str, Any] = reject_unknown_fields(definitions)
    return strict


@functools.cache
def _argo_validator(filename: str, definition: str) -> jsonschema.protocols.Validator:
    schema = {"$ref": f"#/definitions/{definition}", "definitions": _definitions(filename)}
    # argo-events declares `http://json-schema.org/schema#` (no draft); its definitions are
    # plain OpenAPI-generated objects that Draft 7 reads as intended.
    cls = (
        jsonschema.Draft202012Validator
        if filename == "argo-workflows.schema.json"
        else jsonschema.Draft7Validator
    )
    return cls(schema)


def argo_errors(resource: dict[str, Any]) -> list[str]:
    kind = resource.get("kind")
    if kind in ("EventSource", "Sensor", "EventBus"):
        validator = _argo_validator(
            "argo-events.schema.json", f"io.argoproj.events.v1alpha1.{kind}"
        )
    else:
        validator = _argo_validator(
            "argo-workflows.schema.json", f"io.argoproj.workflow.v1alpha1.{kind}"
        )
    return [_describe(e) for e in validator.iter_errors(resource)]

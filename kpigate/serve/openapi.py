"""The router's OpenAPI 3.1 document; its Instance is the served model's instance schema."""

from __future__ import annotations

from typing import Any

from kpigate.serve.config import MODES
from kpigate.serve.feedback import RESULTS
from kpigate.serve.instances import STRING_MAX
from kpigate.serve.schema import INTEGER_RANGE, InputField, InstanceSchema


def _field(f: InputField) -> dict[str, Any]:
    if f.vocabulary is not None:
        return {"type": "string", "enum": list(f.vocabulary)}
    if f.type in INTEGER_RANGE:
        bound = INTEGER_RANGE[f.type]
        return {"type": "integer", "minimum": -bound, "maximum": bound - 1}
    if f.type == "boolean":
        return {"type": "boolean"}
    if f.type == "string":
        return {"type": "string", "description": f"1 to {STRING_MAX} characters"}
    return {"type": "number", "format": f.type}


def _instance_schema(schema: InstanceSchema | None) -> dict[str, Any]:
    if schema is None:
        return {"type": "object"}
    key = schema.entity_key
    props: dict[str, Any] = {
        key: {"type": ["string", "integer"], "description": "entity key for sticky routing"}
    }
    for f in schema.fields:
        props[f.name] = _field(f)
    return {
        "type": "object",
        "properties": props,
        "required": [key, *(f.name for f in schema.fields if f.required)],
        "additionalProperties": False,
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    """A request body the endpoint cannot do without."""
    return {"required": True, **_json(schema)}


def _resp(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out.update(_json(schema))
    return out


def build_openapi(schema: InstanceSchema | None) -> dict[str, Any]:
    ref = {"$ref": "#/components/schemas/Prediction"}
    state = {"$ref": "#/components/schemas/RouterState"}
    error = {"$ref": "#/components/schemas/Error"}
    admin_security: list[dict[str, list[str]]] = [{"adminToken": []}]
    faults = {
        "type": "object",
        "properties": {
            "candidate_delay_ms": {"type": "number", "minimum": 0},
            "candidate_error_share": {"type": "number", "minimum": 0, "maximum": 1},
        },
    }
    auth_errors = {
        "401": _resp("missing or wrong admin token", error),
        "503": _resp("admin API disabled (no token configured)", error),
    }
    limits = {
        "400": _resp("the body is not JSON, or nested deeper than the limit", error),
        "408": _resp("the body did not arrive within the body timeout", error),
        "413": _resp("the body, or its number of instances or labels, is over the limit", error),
    }
    applied = {
        "503": _resp(
            "saved, but not applied by every live replica in time (`laggards` names them), "
            "or the database is unavailable, or the admin API is disabled",
            error,
        )
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "kpigate router", "version": "1"},
        "paths": {
            "/predict": {
                "post": {
                    "summary": "Score one transaction or a batch",
                    "requestBody": _body(
                        {
                            "oneOf": [
                                {"$ref": "#/components/schemas/Instance"},
                                {
                                    "type": "object",
                                    "properties": {
                                        "instances": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Instance"},
                                        }
                                    },
                                    "required": ["instances"],
                                },
                            ]
                        }
                    ),
                    "responses": {
                        "200": _resp(
                            "a Prediction, or {predictions: [Prediction]} for a batch",
                            {
                                "oneOf": [
                                    ref,
                                    {
                                        "type": "object",
                                        "properties": {
                                            "predictions": {"type": "array", "items": ref}
                                        },
                                        "required": ["predictions"],
                                    },
                                ]
                            },
                        ),
                        **limits,
                        "422": _resp("invalid instance; `field` names the field", error),
                        "500": _resp(
                            "the baseline failed, or the log refused the row (not answered)",
                            error,
                        ),
                        "503": _resp("the prediction log could not commit it: retry", error),
                    },
                }
            },
            "/feedback": {
                "post": {
                    "summary": "Labels by request id (one, a list, or {labels: [...]})",
                    "requestBody": _body({"$ref": "#/components/schemas/Label"}),
                    "responses": {
                        "200": _resp(
                            "counts of joined, unknown, duplicate, invalid and late labels",
                            {"$ref": "#/components/schemas/FeedbackReport"},
                        ),
                        **limits,
                        "422": _resp("the body is not a label, a list or {labels: [...]}", error),
                        "503": _resp("the prediction log could not join the labels", error),
                    },
                }
            },
            "/admin/state": {
                "get": {
                    "summary": "Current weight, mode and models",
                    "security": admin_security,
                    "responses": {"200": _resp("state", state), **auth_errors},
                },
                "put": {
                    "summary": "Set weight (percent) and/or mode; applies at once, persisted",
                    "security": admin_security,
                    "requestBody": _body(
                        {
                            "type": "object",
                            "properties": {
                                "weight": {"type": "number", "minimum": 0, "maximum": 100},
                                "mode": {"type": "string", "enum": list(MODES)},
                            },
                        }
                    ),
                    "responses": {
                        "200": _resp("new state, applied by every live replica", state),
                        **limits,
                        "409": _resp("no candidate loaded", error),
                        "422": _resp("invalid weight or mode", error),
                        **auth_errors,
                        **applied,
                    },
                },
            },
            "/admin/faults": {
                "get": {
                    "summary": "Injected candidate faults (drills and demos)",
                    "security": admin_security,
                    "responses": {"200": _resp("faults", faults), **auth_errors},
                },
                "put": {
                    "summary": "Inject candidate latency (ms) or a share of candidate errors",
                    "security": admin_security,
                    "requestBody": _body(faults),
                    "responses": {
                        "200": _resp("faults now injected", faults),
                        **limits,
                        "422": _resp("unknown field or negative value", error),
                        **auth_errors,
                    },
                },
            },
            "/admin/detach": {
                "post": {
                    "summary": "Weight 0 and stop scoring the candidate (shadow included)",
                    "security": admin_security,
                    "responses": {
                        "200": _resp("new state", state),
                        **auth_errors,
                        **applied,
                    },
                }
            },
            "/admin/reload": {
                "post": {
                    "summary": "Re-resolve the champion and candidate aliases in the registry",
                    "security": admin_security,
                    "responses": {
                        "200": _resp("new state", state),
                        "502": _resp("a model failed to load", error),
                        **auth_errors,
                        **applied,
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (docs/metrics.md)",
                    "responses": {"200": {"description": "text format 0.0.4"}},
                }
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _resp("alive")}}},
            "/readyz": {
                "get": {
                    "summary": "Readiness: baseline loaded, prediction log writing",
                    "responses": {"200": _resp("ready"), "503": _resp("not ready", error)},
                }
            },
        },
        "components": {
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Instance": _instance_schema(schema),
                "Prediction": {
                    "type": "object",
                    "properties": {
                        "request_id": {"type": "string"},
                        "score": {"type": "number", "description": "P(fraud)"},
                        "decision": {"type": "string", "enum": ["approve", "decline"]},
                        "model_version": {"type": "string"},
                        "arm": {"type": "string", "enum": ["baseline", "candidate"]},
                        "fallback": {"type": "boolean"},
                    },
                    "required": ["request_id", "score", "decision", "model_version", "arm"],
                },
                "Label": {
                    "type": "object",
                    "properties": {
                        "request_id": {"type": "string"},
                        "label": {"type": "integer", "enum": [0, 1]},
                        "labeled_at": {
                            "type": "number",
                            "description": "Unix seconds when the truth became known (default: "
                            "when received); earlier than the prediction: not counted",
                        },
                    },
                    "required": ["request_id", "label"],
                },
                "FeedbackReport": {
                    "type": "object",
                    "properties": {k: {"type": "integer"} for k in ("received", *RESULTS)}
                    | {"problems": {"type": "array", "items": {"type": "object"}}},
                },
                "RouterState": {
                    "type": "object",
                    "properties": {
                        "weight": {"type": "number"},
                        "mode": {"type": "string", "enum": list(MODES)},
                        "detached": {"type": "boolean"},
                        "effective_weight": {"type": "number"},
                        "state_version": {"type": "integer"},
                        "replica_id": {"type": "string"},
                        "replicas": {"type": ["array", "null"], "items": {"type": "object"}},
                        "baseline": {"type": "object"},
                        "candidate": {"type": "object"},
                    },
                },
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {"type": "string"},
                        "field": {"type": "string"},
                        "laggards": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
    }

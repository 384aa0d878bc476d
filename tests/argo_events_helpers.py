"""The parts of Argo Events a delivery goes through, for tests: no cluster runs here.

Each function follows one upstream file of argoproj/argo-events (read at its head):
  webhook_event_data   pkg/eventsources/sources/webhook/start.go (HandleRoute, GetBody) and
                       pkg/eventsources/events/event-data.go (WebhookEventData: header, body)
  check_bearer         pkg/eventsources/common/webhook/webhook.go (authSecret: "Bearer " + token)
  sensor_accepts       pkg/sensors/dependencies/filter.go (filterData: a missing path drops the
                       event; type string is Go's unanchored regexp.Match; filters are ANDed)
  workflow_from        pkg/sensors/triggers/params.go (ResolveParamValue, getValueByKey) and
                       the argoWorkflow trigger's dest paths (sjson, dotted with list indices)
Paths are gjson paths; only plain dotted keys are supported, and anything else is refused so a
test never silently reads a path differently from gjson.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from typing import Any

_GJSON_SPECIAL = re.compile(r"[*?#|@\\]")


def webhook_event_data(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The event data a webhook EventSource puts on the bus for a JSON POST."""
    return {"header": {k: [v] for k, v in headers.items()}, "body": json.loads(body)}


def check_bearer(headers: Mapping[str, str], token: str) -> int:
    """The status the EventSource answers before it looks at the body (200: let through)."""
    auth = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
    if not auth.startswith("Bearer "):
        return 401
    return 200 if auth.removeprefix("Bearer ") == token else 401


def gjson_get(data: Any, path: str) -> tuple[bool, Any]:
    """(exists, value) for a plain dotted gjson path."""
    if _GJSON_SPECIAL.search(path):
        raise ValueError(f"gjson path {path!r} uses syntax this helper does not model")
    node = data
    for key in path.split("."):
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return False, None
    return True, node


def gjson_string(value: Any) -> str:
    """gjson Result.String(): strings as is, numbers and booleans as JSON text."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def sensor_accepts(dependency: Mapping[str, Any], event_data: Any) -> tuple[bool, str]:
    """(accepted, why not) for a dependency's data filters (operator "and", the default)."""
    for item in dependency.get("filters", {}).get("data", []):
        exists, value = gjson_get(event_data, item["path"])
        if not exists:
            return False, f"path '{item['path']}' does not exist"
        if item.get("type") != "string" or item.get("comparator", "=") != "=":
            raise ValueError(f"filter {item} is not modelled here")
        if not any(re.search(v, gjson_string(value)) for v in item["value"]):
            return False, f"{item['path']}={value!r} matches none of {item['value']}"
    return True, ""


def workflow_from(argo_trigger: Mapping[str, Any], events: Mapping[str, Any]) -> dict[str, Any]:
    """The Workflow the argoWorkflow trigger submits: its source resource with each
    parameter's dataKey written to its dest; a missing key without a default is an error."""
    resource: dict[str, Any] = copy.deepcopy(argo_trigger["source"]["resource"])
    for parameter in argo_trigger.get("parameters", []):
        src = parameter["src"]
        exists, value = gjson_get(events[src["dependencyName"]], src["dataKey"])
        if not exists:
            if "value" not in src:
                raise KeyError(f"unable to resolve '{src['dependencyName']}' parameter value")
            text = src["value"]
        else:
            text = json.dumps(value) if isinstance(value, dict | list) else gjson_string(value)
        *parents, leaf = parameter["dest"].split(".")
        node: Any = resource
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[leaf] = text
    return resource

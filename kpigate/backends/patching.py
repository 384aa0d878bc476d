"""Patches as data: a computed change to a resource, and the two standard ways to apply it.

Backends compute a `Patch` from the resource they read (pure, testable without a cluster) and
then send it; tests apply the same patch here and validate the result against the CRD schema.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

Resource = dict[str, Any]


@dataclass(frozen=True)
class Patch:
    """A merge patch (RFC 7386, a dict) or a JSON patch (RFC 6902, a list of operations)."""

    kind: Literal["merge", "json"]
    body: Any

    @property
    def content_type(self) -> str:
        return MERGE_PATCH if self.kind == "merge" else JSON_PATCH

    def apply(self, resource: Resource) -> Resource:
        """The resource as the API server would store it after this patch (a new dict)."""
        if self.kind == "merge":
            result = merge_patch(resource, self.body)
            if not isinstance(result, dict):
                raise ValueError("a merge patch must be an object")
            return result
        return json_patch(resource, self.body)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes, anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class PatchTestFailed(ValueError):
    """A JSON patch `test` operation did not hold: the resource changed since it was read."""


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError(f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> tuple[Any, str]:
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if not parts:
        raise ValueError(f"cannot change the document root: {path!r}")
    return node, parts[-1]


def json_patch(resource: Resource, operations: list[dict[str, Any]]) -> Resource:
    """RFC 6902 for the operations backends emit: test, replace, add, remove."""
    doc = copy.deepcopy(resource)
    for op in operations:
        parts = _pointer(op["path"])
        try:
            parent, last = _parent(doc, parts, op["path"])
            kind = op["op"]
            if kind == "test":
                current = parent[int(last)] if isinstance(parent, list) else parent[last]
                if current != op["value"]:
                    raise PatchTestFailed(f"{op['path']} is {current!r}, expected {op['value']!r}")
            elif kind == "replace":
                if isinstance(parent, list):
                    parent[int(last)] = copy.deepcopy(op["value"])
                else:
                    if last not in parent:
                        raise KeyError(last)
                    parent[last] = copy.deepcopy(op["value"])
            elif kind == "add":
                if isinstance(parent, list):
                    index = len(parent) if last == "-" else int(last)
                    parent.insert(index, copy.deepcopy(op["value"]))
                else:
                    parent[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                if isinstance(parent, list):
                    del parent[int(last)]
                else:
                    del parent[last]
            else:
                raise ValueError(f"unsupported JSON patch operation {kind!r}")
        except (KeyError, IndexError, TypeError) as exc:
            raise PatchTestFailed(f"{op['op']} {op['path']}: path does not exist ({exc})") from None
    return doc

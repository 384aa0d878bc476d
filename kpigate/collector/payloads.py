"""The instances of a logged request and the scores of its response, in the model protocols the
payload loggers carry: KServe V1 (`instances` / `predictions`), Open Inference Protocol V2
(`inputs` / `outputs`, one named tensor per feature), and Seldon's own (`jsonData`,
`data.names` + `data.ndarray`). Anything else is refused with 422 and the reason."""

from __future__ import annotations

import math
from typing import Any

from kpigate.collector.events import EventError

MAX_INSTANCES = 1000


def _refuse(message: str) -> EventError:
    return EventError(422, message)


def _flat(data: Any) -> list[Any]:
    """A tensor's data, flattened (V2 allows nested lists as well as flat row-major data)."""
    out: list[Any] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
        if len(out) > MAX_INSTANCES * 64:
            raise _refuse("tensor data too large")
    return out


def _rows(items: Any, what: str) -> list[Any]:
    if not isinstance(items, list) or not items:
        raise _refuse(f"{what} must be a non-empty list")
    if len(items) > MAX_INSTANCES:
        raise _refuse(f"{len(items)} {what} is more than the limit of {MAX_INSTANCES}")
    return items


def instances(body: Any) -> list[dict[str, Any]]:
    """One feature dict per scored instance."""
    if not isinstance(body, dict):
        raise _refuse("the request must be a JSON object")
    if "instances" in body:
        rows = _rows(body["instances"], "instances")
        if not all(isinstance(r, dict) for r in rows):
            raise _refuse("instances must be objects naming their features")
        return rows
    if "inputs" in body:
        return _v2_instances(_rows(body["inputs"], "inputs"))
    if "jsonData" in body:
        data = body["jsonData"]
        rows = _rows(data if isinstance(data, list) else [data], "jsonData")
        if not all(isinstance(r, dict) for r in rows):
            raise _refuse("jsonData must be an object or a list of objects")
        return rows
    data = body.get("data")
    if isinstance(data, dict) and "ndarray" in data:
        names = data.get("names")
        rows = _rows(data["ndarray"], "data.ndarray rows")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _refuse("data.names must list the feature names of data.ndarray's columns")
        if not all(isinstance(r, list) and len(r) == len(names) for r in rows):
            raise _refuse("every data.ndarray row must have one value per name in data.names")
        return [dict(zip(names, r, strict=True)) for r in rows]
    raise _refuse(
        "the request has none of instances (V1), inputs (V2), jsonData or data.ndarray (Seldon)"
    )


def _v2_instances(inputs: list[Any]) -> list[dict[str, Any]]:
    columns: dict[str, list[Any]] = {}
    for tensor in inputs:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise _refuse("every V2 input must be an object with a name")
        columns[tensor["name"]] = _flat(tensor.get("data"))
    sizes = {len(c) for c in columns.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise _refuse("V2 inputs must be one tensor per feature, all of one length")
    n = sizes.pop()
    if n > MAX_INSTANCES:
        raise _refuse(f"{n} instances is more than the limit of {MAX_INSTANCES}")
    return [{name: column[i] for name, column in columns.items()} for i in range(n)]


def _score(value: Any, where: str) -> float:
    """A probability of the positive class: a number, or the second of a [p0, p1] pair."""
    if isinstance(value, list) and len(value) == 2:
        value = value[1]
    elif isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(f"{where}: a score must be a number or a [p0, p1] pair")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise _refuse(f"{where}: a score must be a probability in [0, 1]")
    return number


def scores(body: Any, output: str | None = None) -> list[float]:
    """One score per instance, in the request's order. `output` names the V2 output tensor
    holding them (default: the first one)."""
    if not isinstance(body, dict):
        raise _refuse("the response must be a JSON object")
    if "predictions" in body:
        rows = _rows(body["predictions"], "predictions")
        return [_score(v, f"predictions[{i}]") for i, v in enumerate(rows)]
    if "outputs" in body:
        outputs = _rows(body["outputs"], "outputs")
        chosen = next(
            (
                o
                for o in outputs
                if isinstance(o, dict) and (output is None or o.get("name") == output)
            ),
            None,
        )
        if chosen is None:
            raise _refuse(f"the response has no output tensor named {output!r}")
        values = _flat(chosen.get("data"))
        shape = chosen.get("shape")
        if isinstance(shape, list) and len(shape) == 2 and shape[1] == 2:
            values = values[1::2]  # [n, 2]: the positive class's column
        return [_score(v, f"outputs[{chosen.get('name')}][{i}]") for i, v in enumerate(values)]
    data = body.get("data")
    if isinstance(data, dict) and "ndarray" in data:
        rows = _rows(data["ndarray"], "data.ndarray")
        return [_score(v, f"data.ndarray[{i}]") for i, v in enumerate(rows)]
    raise _refuse("the response has none of predictions (V1), outputs (V2) or data.ndarray")

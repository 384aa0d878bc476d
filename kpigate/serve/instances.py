"""Validation of /predict instances against the fixed transaction schema, naming the bad field."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kpigate.fraud.schema import CATEGORICAL, ENTITY_KEY, FEATURES, amount_band

_CODES = {name: {value: i for i, value in enumerate(vocab)} for name, vocab in CATEGORICAL.items()}
_ALLOWED = frozenset((ENTITY_KEY, *FEATURES))
_REQUIRED = (ENTITY_KEY, *FEATURES)
_AMOUNT = FEATURES.index("amount")


class InstanceError(ValueError):
    """An invalid instance; `field` names the offending field for the 422 response."""

    def __init__(self, field: str, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.index = index

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field, "error": self.message}
        if self.index is not None:
            out["instance"] = self.index
        return out


@dataclass(frozen=True)
class Instance:
    entity_key: str
    row: tuple[float, ...]  # FEATURES order, categoricals as integer codes
    region: str
    payment_method: str
    amount_band: str


def parse_instance(obj: Any, index: int | None = None) -> Instance:
    if not isinstance(obj, dict):
        raise InstanceError("(instance)", "an instance must be a JSON object", index)
    if len(obj) != len(_ALLOWED) or not _ALLOWED.issuperset(obj):
        for name in _REQUIRED:
            if name not in obj:
                raise InstanceError(name, f"missing field '{name}'", index)
        extra = sorted(set(obj) - _ALLOWED)
        raise InstanceError(
            extra[0], f"unknown field '{extra[0]}'; allowed: {sorted(_ALLOWED)}", index
        )
    key = obj[ENTITY_KEY]
    if isinstance(key, bool) or not isinstance(key, str | int) or key == "":
        raise InstanceError(
            ENTITY_KEY, f"'{ENTITY_KEY}' must be a non-empty string or integer", index
        )
    row: list[float] = []
    for name in FEATURES:
        value = obj[name]
        codes = _CODES.get(name)
        if codes is not None:
            code = codes.get(value) if isinstance(value, str) else None
            if code is None:
                raise InstanceError(
                    name, f"'{name}' must be one of {sorted(codes)}, got {value!r}", index
                )
            row.append(float(code))
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InstanceError(
                name, f"'{name}' must be a number, got {type(value).__name__}", index
            )
        number = float(value)
        if not math.isfinite(number):
            raise InstanceError(name, f"'{name}' must be finite, got {value!r}", index)
        row.append(number)
    return Instance(
        entity_key=str(key),
        row=tuple(row),
        region=obj["region"],
        payment_method=obj["payment_method"],
        amount_band=amount_band(row[_AMOUNT]),
    )

"""Validation of /predict instances against the fixed transaction schema, naming the bad field.

Every value that reaches the prediction log is checked here against the log's column limits, so
the database never has a reason to refuse a row (kpigate/serve/predlog.py): the entity key is at
most ENTITY_KEY_MAX characters of printable text (no NUL, no control characters, no lone
surrogates) or a 64-bit integer, and every number is finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kpigate.fraud.schema import CATEGORICAL, ENTITY_KEY, FEATURES, amount_band
from kpigate.serve.predlog import ENTITY_KEY_MAX

_CODES = {name: {value: i for i, value in enumerate(vocab)} for name, vocab in CATEGORICAL.items()}
_ALLOWED = frozenset((ENTITY_KEY, *FEATURES))
_REQUIRED = (ENTITY_KEY, *FEATURES)
_AMOUNT = FEATURES.index("amount")
INT64 = 2**63


def shown(value: Any, limit: int = 40) -> str:
    """A client's value quoted in an error: escaped (no surrogates reach the JSON answer), cut."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _plain(text: str) -> bool:
    return len(text) <= 40 and text.isascii() and text.isprintable()


def _entity_key_problem(key: Any) -> str | None:
    if isinstance(key, bool) or not isinstance(key, str | int):
        return "must be a non-empty string or integer"
    if isinstance(key, int):
        return None if -INT64 <= key < INT64 else "must be an integer within 64 bits"
    if not key or len(key) > ENTITY_KEY_MAX:
        return f"must be 1 to {ENTITY_KEY_MAX} characters long"
    if not key.isprintable():
        return "must be printable text (no NUL or other control characters)"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


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
        name = extra[0] if _plain(extra[0]) else shown(extra[0])
        raise InstanceError(name, f"unknown field '{name}'; allowed: {sorted(_ALLOWED)}", index)
    key = obj[ENTITY_KEY]
    problem = _entity_key_problem(key)
    if problem is not None:
        raise InstanceError(ENTITY_KEY, f"'{ENTITY_KEY}' {problem}", index)
    row: list[float] = []
    for name in FEATURES:
        value = obj[name]
        codes = _CODES.get(name)
        if codes is not None:
            code = codes.get(value) if isinstance(value, str) else None
            if code is None:
                raise InstanceError(
                    name, f"'{name}' must be one of {sorted(codes)}, got {shown(value)}", index
                )
            row.append(float(code))
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InstanceError(
                name, f"'{name}' must be a number, got {type(value).__name__}", index
            )
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise InstanceError(
                name, f"'{name}' must be a finite number, got {shown(value)}", index
            )
        row.append(number)
    return Instance(
        entity_key=str(key),
        row=tuple(row),
        region=obj["region"],
        payment_method=obj["payment_method"],
        amount_band=amount_band(row[_AMOUNT]),
    )

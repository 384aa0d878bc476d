"""Validation of /predict instances against the instance schema, naming the bad field.

Every value that reaches the prediction log is checked here against the log's column limits, so
the database never has a reason to refuse a row (kpigate/serve/predlog.py): the entity key is at
most ENTITY_KEY_MAX characters of printable text (no NUL, no control characters, no lone
surrogates) or a 64-bit integer, a segment value fits its slot, and every number is finite.
The fields, their types and vocabularies come from the model's signature (kpigate/serve/schema.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kpigate.serve.predlog import ENTITY_KEY_MAX, SEGMENT_SLOTS, SEGMENT_WIDTHS
from kpigate.serve.schema import INTEGER_RANGE, InputField, InstanceSchema

INT64 = 2**63
# A string input the model gets (not logged) is capped all the same: a 10 MB string is no input.
STRING_MAX = 1024


def shown(value: Any, limit: int = 40) -> str:
    """A client's value quoted in an error: escaped (no surrogates reach the JSON answer), cut."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _plain(text: str) -> bool:
    return len(text) <= 40 and text.isascii() and text.isprintable()


def _text_problem(text: str, limit: int) -> str | None:
    if not text or len(text) > limit:
        return f"must be 1 to {limit} characters long"
    if not text.isprintable():
        return "must be printable text (no NUL or other control characters)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


def _entity_key_problem(key: Any) -> str | None:
    if isinstance(key, bool) or not isinstance(key, str | int):
        return "must be a non-empty string or integer"
    if isinstance(key, int):
        return None if -INT64 <= key < INT64 else "must be an integer within 64 bits"
    return _text_problem(key, ENTITY_KEY_MAX)


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
    row: tuple[Any, ...]  # the schema's column order; codes for vocabularies, NaN when absent
    segments: tuple[str, ...]  # the schema's segments, in order (the log's segment slots)


# A converter returns the model's value, or raises _Bad with what the value must be.
class _Bad(Exception):
    pass


def _converter(f: InputField) -> Callable[[Any], Any]:
    name = f.name
    if f.vocabulary is not None:
        codes = {v: i for i, v in enumerate(f.vocabulary)}
        as_code = float if f.type in ("float", "double") else int
        allowed = sorted(codes)

        def vocabulary(value: Any) -> Any:
            code = codes.get(value) if isinstance(value, str) else None
            if code is None:
                raise _Bad(f"'{name}' must be one of {allowed}, got {shown(value)}")
            return value if f.type == "string" else as_code(code)

        return vocabulary
    if f.type in ("float", "double"):

        def number(value: Any) -> float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _Bad(f"'{name}' must be a number, got {type(value).__name__}")
            try:
                out = float(value)
            except OverflowError:
                out = math.inf
            if not math.isfinite(out):
                raise _Bad(f"'{name}' must be a finite number, got {shown(value)}")
            return out

        return number
    if f.type in INTEGER_RANGE:
        bound = INTEGER_RANGE[f.type]

        def integer(value: Any) -> int:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise _Bad(f"'{name}' must be an integer, got {shown(value)}")
            if not -bound <= value < bound:
                raise _Bad(f"'{name}' must be an integer within {f.type} range")
            return value

        return integer
    if f.type == "boolean":

        def boolean(value: Any) -> bool:
            if not isinstance(value, bool):
                raise _Bad(f"'{name}' must be true or false, got {type(value).__name__}")
            return value

        return boolean

    def string(value: Any) -> str:
        if not isinstance(value, str):
            raise _Bad(f"'{name}' must be a string, got {type(value).__name__}")
        if (problem := _text_problem(value, STRING_MAX)) is not None:
            raise _Bad(f"'{name}' {problem}")
        return value

    return string


class InstanceParser:
    """Parses request instances for one schema; built once per schema (the converters)."""

    def __init__(self, schema: InstanceSchema) -> None:
        self.schema = schema
        self._key = schema.entity_key
        self._fields = [(f.name, f.required, f.type, _converter(f)) for f in schema.fields]
        self._allowed = frozenset((self._key, *schema.columns))
        self._required = (self._key, *(f.name for f in schema.fields if f.required))
        index = {f.name: i for i, f in enumerate(schema.fields)}
        self._segments = [
            (s, index[s.field], SEGMENT_WIDTHS[slot])
            for s, slot in zip(schema.segments, SEGMENT_SLOTS, strict=False)
        ]

    def parse(self, obj: Any, index: int | None = None) -> Instance:
        if not isinstance(obj, dict):
            raise InstanceError("(instance)", "an instance must be a JSON object", index)
        if not self._allowed.issuperset(obj) or len(obj) < len(self._required):
            self._shape_error(obj, index)
        key = obj.get(self._key)
        if key is None:
            raise InstanceError(self._key, f"missing field '{self._key}'", index)
        problem = _entity_key_problem(key)
        if problem is not None:
            raise InstanceError(self._key, f"'{self._key}' {problem}", index)
        row: list[Any] = []
        raw: list[Any] = []
        for name, required, kind, convert in self._fields:
            if name not in obj:
                if required:
                    raise InstanceError(name, f"missing field '{name}'", index)
                raw.append(None)
                row.append(math.nan if kind in ("float", "double", "integer", "long") else None)
                continue
            value = obj[name]
            try:
                row.append(convert(value))
            except _Bad as exc:
                raise InstanceError(name, str(exc), index) from None
            raw.append(value)
        segments = []
        for segment, i, width in self._segments:
            value = segment.value(raw[i])
            if len(value) > width:
                raise InstanceError(
                    segment.field,
                    f"'{segment.field}' is the segment '{segment.name}': at most {width} "
                    "characters",
                    index,
                )
            if not value.isprintable():
                raise InstanceError(segment.field, f"'{segment.field}' must be printable", index)
            segments.append(value)
        return Instance(str(key), tuple(row), tuple(segments))

    def _shape_error(self, obj: dict[str, Any], index: int | None) -> None:
        for name in self._required:
            if name not in obj:
                raise InstanceError(name, f"missing field '{name}'", index)
        extra = sorted(set(obj) - self._allowed)
        if extra:
            name = extra[0] if _plain(extra[0]) else shown(extra[0])
            allowed = sorted(self._allowed)
            raise InstanceError(name, f"unknown field '{name}'; allowed: {allowed}", index)

"""One logged inference event, read from a binary-mode HTTP CloudEvent, whatever its backend.

The payload loggers of KServe (pkg/logger/worker.go) and Seldon Core v1 (executor/logger/
worker.go) both send binary-mode CloudEvents: the context attributes in `ce-*` headers, the
model's request or response body as the HTTP body. A backend module (kserve.py, seldon.py)
says which attribute names the pair and which type is the request or the response; this module
reads the headers, the time and the JSON body, and refuses anything malformed with a 4xx.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

from kpigate.serve.limits import BodyError, parse_json

Kind = Literal["request", "response"]
# An attribute's value longer than this is not something a payload logger sends.
ATTRIBUTE_MAX = 256
REQUIRED = ("id", "type", "source", "specversion")
_FRACTION = re.compile(r"(\.\d{6})\d+")


class EventError(ValueError):
    """An event the collector refuses; `status` is the HTTP status of the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class LoggedEvent:
    """Half of a logged prediction: the request (features) or the response (scores)."""

    backend: str
    kind: Kind
    pair_id: str  # the id both halves carry (KServe: ce-id; Seldon: ce-requestid)
    attributes: dict[str, str]  # every ce-* attribute, without the prefix
    time: float | None  # ce-time in Unix seconds, when the logger set it
    body: Any  # the model's JSON request or response
    # A shadow copy (the candidate's arm rule says so): its predictions are logged as shadow
    # rows under the served request's ids, so its pair is stored apart from the served one.
    shadow: bool = False

    @property
    def key(self) -> str:
        """The pair's key in the collector's pairs table (at most 64 characters)."""
        if not self.shadow:
            return self.pair_id
        import hashlib

        return "shadow:" + hashlib.blake2b(self.pair_id.encode(), digest_size=16).hexdigest()


def attributes_of(headers: Any) -> dict[str, str]:
    """The CloudEvent context attributes from `ce-*` headers (percent-decoded, as the HTTP
    binding says), checked for the four required ones."""
    found: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        if not key.startswith("ce-"):
            continue
        text = unquote(value)
        if len(text) > ATTRIBUTE_MAX or not text.isprintable():
            raise EventError(400, f"header {key} must be printable, at most {ATTRIBUTE_MAX} chars")
        found[key[3:]] = text
    if not found:
        raise EventError(
            415,
            "not a binary-mode CloudEvent (no ce-* headers): point the payload logger's url "
            "here (KServe spec.predictor.logger, Seldon graph.logger)",
        )
    missing = [f"ce-{a}" for a in REQUIRED if not found.get(a)]
    if missing:
        raise EventError(400, f"CloudEvent headers missing: {', '.join(missing)}")
    if found["specversion"] != "1.0":
        raise EventError(400, f"ce-specversion {found['specversion']!r} is not supported: 1.0")
    return found


def event_time(attributes: dict[str, str], now: float, skew_s: float) -> float | None:
    """ce-time as Unix seconds; None when absent. RFC 3339 with any fraction (Go writes
    nanoseconds); refused when unparseable or further than `skew_s` in the future."""
    raw = attributes.get("time")
    if not raw:
        return None
    text = _FRACTION.sub(r"\1", raw.strip()).replace("z", "Z")
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError:
        raise EventError(400, f"ce-time {raw[:64]!r} is not an RFC 3339 time") from None
    if stamp.tzinfo is None:
        raise EventError(400, f"ce-time {raw[:64]!r} has no time zone")
    seconds = stamp.timestamp()
    if seconds > now + skew_s:
        raise EventError(400, f"ce-time {raw[:64]!r} is in the future of this collector's clock")
    return seconds


def json_body(body: bytes, content_type: str, max_depth: int) -> Any:
    """The event's data as JSON (both loggers send the model's JSON body unchanged)."""
    kind = content_type.split(";")[0].strip().lower()
    if kind and kind != "application/json" and not kind.endswith("+json"):
        raise EventError(
            415, f"event data of type {kind!r} cannot be read: send the model's JSON REST payloads"
        )
    try:
        return parse_json(body, max_depth)
    except BodyError as exc:
        raise EventError(exc.status, f"event data: {exc.message}") from None


def pair_key(pair_id: str) -> str:
    """`pair_id` as it is checked before use: printable ASCII, at most 64 characters."""
    if not pair_id or len(pair_id) > 64 or not pair_id.isascii() or not pair_id.isprintable():
        raise EventError(400, "the event's request id must be printable ASCII, 1 to 64 chars")
    return pair_id

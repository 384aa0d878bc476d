"""The prediction log's request id for a logged prediction, and for a label sent for it.

The log's `request_id` holds at most 32 characters (docs/prediction-log.md), and a payload
logger's ids are often UUIDs (36). A label names its prediction as `<id>` (a request of one
instance) or `<id>:<i>` (instance i of a batch), with `<id>` the pair's id (KServe: the Ce-Id,
Seldon: the Seldon-Puid); both are written to the log in one canonical form: a UUID as its 32 hex
digits, any other id of up to 32 characters as it is, a longer one as a 32-digit hash.
"""

from __future__ import annotations

import hashlib
import uuid

LOG_ID_MAX = 32


def _uuid_hex(text: str) -> str | None:
    if len(text) not in (32, 36, 38, 45):
        return None
    try:
        return uuid.UUID(text).hex
    except ValueError:
        return None


def log_id(name: str) -> str:
    """The log's request_id for `name` (`<id>` or `<id>:<i>`)."""
    head, sep, tail = name.rpartition(":")
    canonical = _uuid_hex(name)
    if canonical is None and sep and tail.isdigit() and (base := _uuid_hex(head)) is not None:
        canonical = f"{base}:{int(tail)}"
    text = canonical or name
    if len(text) <= LOG_ID_MAX:
        return text
    return hashlib.blake2b(text.encode(), digest_size=LOG_ID_MAX // 2).hexdigest()


def prediction_names(pair_id: str, n: int) -> list[str]:
    """The names labels use for the n predictions of one logged request."""
    return [pair_id] if n == 1 else [f"{pair_id}:{i}" for i in range(n)]

"""What the audit trail's chain is made of: canonical record bytes, the key, and record hashes.

A keyed record carries `mac: "hmac-sha256:<key id>"` and its `hash` is HMAC-SHA256 of its
canonical JSON under the key, so only a holder of the key can write a record that verifies. An
unkeyed record (no `mac`, as every trail before keys) is hashed with plain sha256, which anyone
can recompute: such a trail detects accidents, not people.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kpigate.errors import KpigateError
from kpigate.secrets import SecretError, read_secret

GENESIS = "0" * 64  # `prev` of the first record
MAC_SCHEME = "hmac-sha256"
KEY_ENV = "KPIGATE_AUDIT_KEY"  # or KPIGATE_AUDIT_KEY_FILE
MIN_KEY_BYTES = 16  # shorter keys can be guessed offline from any one record


class AuditError(KpigateError):
    """The trail cannot be appended to or read, or its key is unusable; the message says which
    file and why. Bad input (exit 2) for a step: a retry cannot fix a key or a file."""


def jsonable(value: Any) -> Any:
    # JSON has no NaN or infinity; strings keep the record hashable and honest about it.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def canonical(record: Mapping[str, Any]) -> bytes:
    """The bytes that are hashed: sorted keys, no spaces, UTF-8."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


@dataclass(frozen=True)
class AuditKey:
    """The trail's HMAC key. `key_id` names it in records without revealing it."""

    secret: bytes = field(repr=False)

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"kpigate-audit-key-id\0" + self.secret).hexdigest()[:16]

    @property
    def mac_field(self) -> str:
        return f"{MAC_SCHEME}:{self.key_id}"

    def mac(self, data: bytes) -> str:
        return hmac.new(self.secret, data, hashlib.sha256).hexdigest()


FROM_ENV: Literal["env"] = "env"  # a key argument's default: KPIGATE_AUDIT_KEY(_FILE)
KeyArg = AuditKey | None | Literal["env"]


def audit_key_from_env(env: Mapping[str, str] | None = None) -> AuditKey | None:
    """KPIGATE_AUDIT_KEY, or the file named by KPIGATE_AUDIT_KEY_FILE; None when neither."""
    try:
        text = read_secret(KEY_ENV, env=env)
    except SecretError as exc:
        raise AuditError(f"audit key: {exc}") from None
    if text is None:
        return None
    secret = text.encode("utf-8")
    if len(secret) < MIN_KEY_BYTES:
        raise AuditError(
            f"audit key: {KEY_ENV} is {len(secret)} bytes; use at least {MIN_KEY_BYTES} random "
            "bytes (e.g. `openssl rand -hex 32`), or anyone can guess it from one record"
        )
    return AuditKey(secret)


def record_hash(record: Mapping[str, Any], key: AuditKey | None = None) -> str:
    """The record's `hash`: HMAC under `key` when given, else plain sha256 (both over the
    canonical JSON of everything but `hash`)."""
    data = canonical({k: v for k, v in record.items() if k != "hash"})
    return key.mac(data) if key is not None else hashlib.sha256(data).hexdigest()


def evidence_digest(window: Mapping[str, Any]) -> str:
    """sha256 of an evidence window as stored: a decision record carries it, so the keyed chain
    also covers the evidence the decision was judged on."""
    return hashlib.sha256(canonical(jsonable(window))).hexdigest()


def resolve_key(key: KeyArg) -> AuditKey | None:
    """A key argument: FROM_ENV reads KPIGATE_AUDIT_KEY(_FILE); an AuditKey or None is taken."""
    return audit_key_from_env() if key == FROM_ENV else key


def parse_record(raw: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def hash_checks(record: Mapping[str, Any], key: AuditKey | None) -> bool | None:
    """Whether the stored hash is right; None when it cannot be told (another key, or none)."""
    mac = record.get("mac")
    if mac is None:
        return hmac.compare_digest(str(record.get("hash")), record_hash(record))
    if key is None or mac != key.mac_field:
        return None
    return hmac.compare_digest(str(record.get("hash")), record_hash(record, key))

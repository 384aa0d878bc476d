"""MLflow webhook verification: HMAC-SHA256 over `delivery_id.timestamp.payload`, base64, `v1,`.

Pure functions, so the rules are tested without a server: a missing or wrong signature, a
timestamp outside the tolerance and a replayed delivery id are each refused with a reason.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import OrderedDict

VERSION = "v1"
SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"


class Refused(ValueError):
    """A request the relay will not act on; `status` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def sign(secret: str, delivery_id: str, timestamp: str, payload: str) -> str:
    digest = hmac.new(
        secret.encode(), f"{delivery_id}.{timestamp}.{payload}".encode(), hashlib.sha256
    ).digest()
    return f"{VERSION},{base64.b64encode(digest).decode()}"


def verify(
    secret: str,
    signature: str | None,
    delivery_id: str | None,
    timestamp: str | None,
    payload: str,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> None:
    """Raise Refused unless the request is signed with `secret` and recent."""
    if not signature or not delivery_id or not timestamp:
        raise Refused(401, f"missing {SIGNATURE_HEADER}, {DELIVERY_HEADER} or {TIMESTAMP_HEADER}")
    try:
        sent = float(timestamp)
    except ValueError:
        raise Refused(401, f"{TIMESTAMP_HEADER} is not a Unix time") from None
    age = (time.time() if now is None else now) - sent
    if abs(age) > tolerance_s:
        raise Refused(401, f"timestamp is {age:.0f}s off (tolerance {tolerance_s:.0f}s): stale")
    expected = sign(secret, delivery_id, timestamp, payload)
    # Constant time: the comparison must not tell an attacker how much of it matched.
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise Refused(401, "signature does not match the webhook secret")


class DeliveryLog:
    """Delivery ids seen within the tolerance window (bounded), to refuse replays."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()

    def seen(self, delivery_id: str) -> bool:
        return delivery_id in self._seen

    def remember(self, delivery_id: str) -> None:
        """Called once a delivery is handled; a failed one is not, so its retry goes through."""
        self._seen[delivery_id] = time.time()
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)

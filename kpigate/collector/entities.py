"""What a logged instance is split and sliced on: its entity key and its segments.

One function, so it can be pointed at a configurable schema later; today it reads the fraud
demo's fields (kpigate/fraud/schema.py): `card_id`, `region`, `payment_method`, and the amount
band from `amount`. Segment values are metric labels, so only the schema's vocabularies pass
(categorical codes, as a model sees them, are read back into their names).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kpigate.collector.events import EventError
from kpigate.fraud.schema import CATEGORICAL, ENTITY_KEY, amount_band
from kpigate.serve.predlog import ENTITY_KEY_MAX


@dataclass(frozen=True)
class Keyed:
    entity_key: str
    region: str
    payment_method: str
    amount_band: str


def _category(instance: dict[str, Any], name: str, index: int) -> str:
    vocab = CATEGORICAL[name]
    value = instance.get(name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(vocab):
        return vocab[value]
    if isinstance(value, str) and value in vocab:
        return value
    raise EventError(422, f"instance {index}: '{name}' must be one of {list(vocab)} (or its code)")


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an integer too large for a float
        return False


def keyed(instance: dict[str, Any], index: int, fallback_key: str) -> Keyed:
    """The entity key (`card_id`, else `fallback_key`: the prediction's own id) and segments."""
    key = instance.get(ENTITY_KEY)
    if key is None:
        entity = fallback_key
    elif isinstance(key, bool) or not isinstance(key, str | int):
        raise EventError(422, f"instance {index}: '{ENTITY_KEY}' must be a string or integer")
    else:
        entity = str(key)
        if not entity or len(entity) > ENTITY_KEY_MAX or not entity.isprintable():
            raise EventError(
                422,
                f"instance {index}: '{ENTITY_KEY}' must be 1 to {ENTITY_KEY_MAX} printable chars",
            )
    amount = instance.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not _finite(amount):
        raise EventError(422, f"instance {index}: 'amount' must be a finite number")
    return Keyed(
        entity_key=entity,
        region=_category(instance, "region", index),
        payment_method=_category(instance, "payment_method", index),
        amount_band=amount_band(float(amount)),
    )

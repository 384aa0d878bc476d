"""The transaction schema shared by the data generator, the models, the router and the replayer."""

from __future__ import annotations

from typing import Final

# Categorical vocabularies. Models see integer codes (index in the tuple); the router and the
# prediction log keep the strings. New values added at the end keep old codes stable.
MERCHANT_CATEGORIES: Final = (
    "grocery",
    "electronics",
    "travel",
    "fuel",
    "restaurants",
    "fashion",
    "gaming",
    "crypto",
    "marketplace",  # newly onboarded merchants, grows under drift
)
REGIONS: Final = ("na", "eu", "latam", "apac")
PAYMENT_METHODS: Final = ("card", "digital_wallet", "bank_transfer")
AMOUNT_BANDS: Final = ("low", "mid", "high")
AMOUNT_BAND_EDGES: Final = (50.0, 500.0)  # low < 50 <= mid < 500 <= high

# Model inputs, in order. All numeric; categoricals are integer codes.
FEATURES: Final = (
    "amount",
    "merchant_category",
    "region",
    "device_risk",
    "hour",
    "payment_method",
    "velocity",
    "avg_spend_merchant",
    "user_deviation",
)
CATEGORICAL: Final = {
    "merchant_category": MERCHANT_CATEGORIES,
    "region": REGIONS,
    "payment_method": PAYMENT_METHODS,
}
# Attributes the KPIs are sliced by (bounded label sets for metrics).
SEGMENTS: Final = ("region", "payment_method", "amount_band")
ENTITY_KEY: Final = "card_id"
LABEL: Final = "is_fraud"


def amount_band(amount: float) -> str:
    low, high = AMOUNT_BAND_EDGES
    if amount < low:
        return "low"
    return "mid" if amount < high else "high"

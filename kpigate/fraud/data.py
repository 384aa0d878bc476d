"""Seeded synthetic card transactions with a drift knob, generated in bounded-memory chunks.

Modeled on the paper's fraud case study (section 4): contextual features (amount, merchant
category, region, device fingerprint risk, hour, payment method) plus derived behavioural
features (velocity, the merchant's average ticket, the user's spending deviation).

Fraud comes in three patterns, which is what makes the case study's story reproducible:
- classic: stolen card details; risky device, bursts of transactions, unusual amounts, at night;
- stealth: drawn exactly like legitimate traffic, so no model catches it (caps recall, AUC);
- marketplace: bots paying newly onboarded marketplace merchants through digital wallets from
  clean-looking devices. Rare at drift 0, so a baseline trained there barely knows it.
`drift` in [0, 1] raises the digital-wallet share, onboards marketplace merchants and shifts
fraud toward the marketplace pattern; legitimate marketplace spending is also less habitual.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from kpigate.fraud.schema import (
    AMOUNT_BAND_EDGES,
    AMOUNT_BANDS,
    CATEGORICAL,
    ENTITY_KEY,
    FEATURES,
    LABEL,
    MERCHANT_CATEGORIES,
    PAYMENT_METHODS,
    REGIONS,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Rows are drawn in fixed blocks, each from its own seeded stream, so row i is the same whatever
# chunk_size the caller asks for, and a 10k frame equals the first 10k rows of a 10M stream.
_BLOCK: Final = 32_768
DEFAULT_CHUNK_SIZE: Final = 100_000
DEFAULT_CARDS: Final = 100_000

FRAUD_PATTERNS: Final = ("none", "classic", "stealth", "marketplace")
FRAUD_RATE: Final = 0.015
STEALTH_SHARE: Final = 0.08
_MARKETPLACE = MERCHANT_CATEGORIES.index("marketplace")
_WALLET = PAYMENT_METHODS.index("digital_wallet")

# Log of the typical ticket per merchant category (grocery ~ 30, travel ~ 245 ...).
_CATEGORY_LOG_TICKET: Final = np.array([3.4, 5.0, 5.5, 3.7, 3.3, 4.3, 3.0, 5.0, 4.0])
# Legitimate category mix before marketplace onboarding (marketplace share comes from drift).
_LEGIT_CATEGORY_P: Final = np.array([0.30, 0.07, 0.05, 0.15, 0.20, 0.10, 0.08, 0.05, 0.0])
_CLASSIC_CATEGORY_P: Final = np.array([0.09, 0.26, 0.15, 0.05, 0.05, 0.10, 0.13, 0.17, 0.0])
_REGION_P: Final = np.array([0.35, 0.30, 0.15, 0.20])
# Fraud pressure per region, normalised so the overall rate stays FRAUD_RATE.
_REGION_FRAUD_RISK: Final = np.array([0.9, 0.8, 1.4, 1.1]) / float(
    np.dot([0.35, 0.30, 0.15, 0.20], [0.9, 0.8, 1.4, 1.1])
)
_CLASSIC_PAYMENT_P: Final = np.array([0.85, 0.10, 0.05])
_MARKETPLACE_FRAUD_PAYMENT_P: Final = np.array([0.15, 0.85, 0.0])


def _diurnal(peak: float, width: float, floor: float) -> FloatArray:
    hours = np.arange(24)
    dist = np.minimum(np.abs(hours - peak), 24 - np.abs(hours - peak))
    weights = floor + np.exp(-0.5 * (dist / width) ** 2)
    return np.asarray(weights / weights.sum(), dtype=np.float64)


_LEGIT_HOUR_P: Final = _diurnal(peak=14.0, width=4.0, floor=0.03)
_CLASSIC_HOUR_P: Final = _diurnal(peak=2.0, width=3.0, floor=0.25)


@dataclass(frozen=True)
class Mix:
    """Traffic composition at a drift level: what the drift knob actually turns."""

    wallet_share: float  # legitimate payments made with a digital wallet
    marketplace_share: float  # legitimate transactions at newly onboarded marketplace merchants
    marketplace_fraud_share: float  # fraud that follows the marketplace pattern


def mix(drift: float) -> Mix:
    if not 0.0 <= drift <= 1.0:
        raise ValueError(f"drift must be in [0, 1], got {drift!r}")
    return Mix(
        wallet_share=0.12 + 0.38 * drift,
        marketplace_share=0.01 + 0.24 * drift,
        marketplace_fraud_share=0.10 * drift,
    )


@dataclass(frozen=True)
class _Cards:
    """Per-card habits; derived features compare a transaction with them."""

    home_region: IntArray
    spend_offset: FloatArray  # log-scale: big spenders sit above the category's typical ticket
    spend_sigma: FloatArray  # how erratic the card's amounts are


def _cards(seed: int, n_cards: int) -> _Cards:
    rng = np.random.default_rng([seed, 0])
    return _Cards(
        home_region=rng.choice(len(REGIONS), size=n_cards, p=_REGION_P),
        spend_offset=rng.normal(0.0, 0.4, size=n_cards),
        spend_sigma=rng.uniform(0.4, 0.8, size=n_cards),
    )


def _pick(rng: np.random.Generator, p: FloatArray, n: int) -> IntArray:
    # Inverse-CDF on one uniform per row: same draws whatever p is (common random numbers
    # across drift levels, so comparisons between drifts are not drowned in sampling noise).
    u = rng.random(n)
    idx = np.searchsorted(np.cumsum(p), u, side="right")
    return np.minimum(idx, len(p) - 1).astype(np.int64)


def _block(seed: int, block: int, drift: float, cards: _Cards) -> pd.DataFrame:
    rng = np.random.default_rng([seed, 1, block])
    n = _BLOCK
    m = mix(drift)
    n_cards = len(cards.home_region)

    card = rng.integers(0, n_cards, size=n)
    travelling = rng.random(n) < 0.03
    region = np.where(travelling, _pick(rng, _REGION_P, n), cards.home_region[card])

    fraud = rng.random(n) < FRAUD_RATE * _REGION_FRAUD_RISK[region]
    pattern_u = rng.random(n)
    stealth = fraud & (pattern_u < STEALTH_SHARE)
    market = fraud & (pattern_u >= 1.0 - m.marketplace_fraud_share)
    classic = fraud & ~stealth & ~market
    legit_like = ~classic & ~market  # legitimate rows and stealth fraud

    legit_cat_p = _LEGIT_CATEGORY_P * (1.0 - m.marketplace_share)
    legit_cat_p[_MARKETPLACE] = m.marketplace_share
    category = _pick(rng, legit_cat_p, n)
    category = np.where(classic, _pick(rng, _CLASSIC_CATEGORY_P, n), category)
    category[market] = _MARKETPLACE

    legit_pay_p = np.array([0.92 - m.wallet_share, m.wallet_share, 0.08])
    payment = _pick(rng, legit_pay_p, n)
    payment = np.where(classic, _pick(rng, _CLASSIC_PAYMENT_P, n), payment)
    payment = np.where(market, _pick(rng, _MARKETPLACE_FRAUD_PAYMENT_P, n), payment)

    hour = _pick(rng, _LEGIT_HOUR_P, n)
    hour = np.where(classic, _pick(rng, _CLASSIC_HOUR_P, n), hour)
    hour = np.where(market, rng.integers(0, 24, size=n), hour)

    device_risk = rng.beta(1.5, 9.0, size=n)
    device_risk = np.where(classic, rng.beta(5.0, 2.0, size=n), device_risk)
    device_risk = np.where(market, rng.beta(3.0, 5.0, size=n), device_risk)

    velocity = rng.gamma(1.5, 0.12, size=n)
    # Wallet taps come in quicker succession (in-app top-ups, transit) as wallets take over:
    # legitimate, but faster than anything the drift-0 baseline saw.
    velocity = np.where(payment == _WALLET, rng.gamma(1.5, 0.12 + 0.06 * drift, size=n), velocity)
    velocity = np.where(classic, rng.gamma(3.0, 0.5, size=n), velocity)
    velocity = np.where(market, rng.gamma(2.0, 0.25, size=n), velocity)

    # Amount: the card's habitual level at this kind of merchant, plus a pattern-specific jump.
    habit = _CATEGORY_LOG_TICKET[category] + cards.spend_offset[card]
    sigma = cards.spend_sigma[card]
    z = rng.standard_normal(n)
    shift = np.zeros(n)
    scale = np.ones(n)
    new_merchant = legit_like & (category == _MARKETPLACE)
    shift[new_merchant], scale[new_merchant] = 0.0, 1.0  # unfamiliar shop, less habitual amounts
    shift[classic], scale[classic] = 1.5, 1.0
    shift[market], scale[market] = 1.3, 0.4
    log_amount = habit + sigma * (shift + scale * z)
    amount = np.round(np.exp(log_amount), 2).clip(0.5, None)
    avg_spend_merchant = np.round(
        np.exp(_CATEGORY_LOG_TICKET[category] + rng.normal(0, 0.25, n)), 2
    )
    user_deviation = (np.log(amount) - habit) / sigma + rng.normal(0.0, 0.2, size=n)

    frame = pd.DataFrame(
        {
            "txn_id": np.arange(block * n, (block + 1) * n, dtype=np.int64),
            ENTITY_KEY: card.astype(np.int64),
            "amount": amount.astype(np.float32),
            "merchant_category": _categorical(category, MERCHANT_CATEGORIES),
            "region": _categorical(region, REGIONS),
            "device_risk": device_risk.astype(np.float32),
            "hour": hour.astype(np.int8),
            "payment_method": _categorical(payment, PAYMENT_METHODS),
            "velocity": velocity.astype(np.float32),
            "avg_spend_merchant": avg_spend_merchant.astype(np.float32),
            "user_deviation": user_deviation.astype(np.float32),
            "amount_band": _categorical(
                np.searchsorted(AMOUNT_BAND_EDGES, amount, "right"), AMOUNT_BANDS
            ),
            LABEL: fraud.astype(np.int8),
            # Ground truth about *why* a row is fraud; for analysis only, never a model input.
            "fraud_pattern": _categorical(
                np.select([classic, stealth, market], [1, 2, 3], 0), FRAUD_PATTERNS
            ),
        }
    )
    return frame


def _categorical(codes: npt.NDArray[np.integer[Any]], vocabulary: Sequence[str]) -> pd.Categorical:
    return pd.Categorical.from_codes(codes.astype(np.int8), categories=list(vocabulary))


def generate_chunks(
    n: int,
    *,
    seed: int = 0,
    drift: float = 0.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    n_cards: int = DEFAULT_CARDS,
) -> Iterator[pd.DataFrame]:
    """Yield `n` transactions as DataFrames of at most `chunk_size` rows, in txn_id order.

    Memory stays around one chunk plus one internal block (32,768 rows), whatever `n` is.
    """
    if n < 0 or chunk_size <= 0 or n_cards <= 0:
        raise ValueError(
            f"need n >= 0, chunk_size > 0, n_cards > 0; got {n}, {chunk_size}, {n_cards}"
        )
    mix(drift)  # validate before yielding anything
    cards = _cards(seed, n_cards)
    pending: list[pd.DataFrame] = []
    pending_rows = 0
    produced = 0
    block = 0
    while produced < n:
        want = min(chunk_size, n - produced)
        while pending_rows < want:
            frame = _block(seed, block, drift, cards)
            block += 1
            pending.append(frame)
            pending_rows += len(frame)
        joined = pending[0] if len(pending) == 1 else pd.concat(pending, ignore_index=True)
        chunk, rest = joined.iloc[:want], joined.iloc[want:]
        pending, pending_rows = ([rest], len(rest)) if len(rest) else ([], 0)
        produced += want
        yield chunk.reset_index(drop=True)


def generate(
    n: int, *, seed: int = 0, drift: float = 0.0, n_cards: int = DEFAULT_CARDS
) -> pd.DataFrame:
    """One DataFrame of `n` transactions; for small n (tests, training). Use generate_chunks
    for millions of rows."""
    chunks = list(generate_chunks(n, seed=seed, drift=drift, chunk_size=max(n, 1), n_cards=n_cards))
    return chunks[0] if chunks else next(generate_chunks(1, seed=seed, drift=drift)).iloc[:0]


def model_input(frame: pd.DataFrame) -> pd.DataFrame:
    """The model's view of transactions: FEATURES in order, categoricals as integer codes."""
    columns: dict[str, Any] = {}
    for name in FEATURES:
        col = frame[name]
        if name in CATEGORICAL:
            if isinstance(col.dtype, pd.CategoricalDtype):
                columns[name] = col.cat.codes.to_numpy(dtype=np.float32)
            else:
                columns[name] = _encode(col, name).astype(np.float32)
        else:
            columns[name] = col.to_numpy(dtype=np.float32)
    return pd.DataFrame(columns, index=frame.index)


def _encode(values: Iterable[Any], name: str) -> FloatArray:
    vocabulary = CATEGORICAL[name]
    lookup = {v: i for i, v in enumerate(vocabulary)}
    try:
        return np.array([lookup[v] for v in values], dtype=np.float64)
    except KeyError as exc:
        raise ValueError(
            f"unknown {name} {exc.args[0]!r}; expected one of {', '.join(vocabulary)}"
        ) from None


def card_key(card_id: int) -> str:
    """The entity key as clients send it (a string), e.g. 'card-0001234'."""
    return f"card-{int(card_id):07d}"


def to_requests(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-able request records for the router: entity key, features (categoricals as strings)
    and the amount band segment. Labels and txn ids stay out (they arrive later via /feedback)."""
    out: list[dict[str, Any]] = []
    cols = {name: frame[name].tolist() for name in (*FEATURES, "amount_band")}
    cards = frame[ENTITY_KEY].tolist()
    for i, card in enumerate(cards):
        record: dict[str, Any] = {ENTITY_KEY: card_key(card)}
        for name, values in cols.items():
            value = values[i]
            # Full precision: a rounded feature can cross a split and change the score.
            record[name] = float(value) if isinstance(value, float) else value
        out.append(record)
    return out


def requests_to_model_input(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Inverse of to_requests for the model: request records -> model_input frame.

    Raises ValueError naming the field when a record misses a feature or has an unknown
    category, so the router can answer 422 with something a client can fix.
    """
    columns: dict[str, Any] = {}
    for name in FEATURES:
        try:
            values = [r[name] for r in records]
        except KeyError:
            raise ValueError(f"request record is missing feature {name!r}") from None
        if name in CATEGORICAL:
            columns[name] = _encode(values, name).astype(np.float32)
        else:
            try:
                columns[name] = np.asarray(values, dtype=np.float32)
            except (TypeError, ValueError):
                raise ValueError(f"feature {name!r} must be numeric") from None
    return pd.DataFrame(columns)


def fraud_rate(frame: pd.DataFrame) -> float:
    return float(frame[LABEL].mean())

"""The synthetic transaction generator: seeded, bounded in memory, drifting as described."""

from __future__ import annotations

import gc
import itertools
import json
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from kpigate.fraud.data import (
    card_key,
    fraud_rate,
    generate,
    generate_chunks,
    mix,
    model_input,
    requests_to_model_input,
    to_requests,
)
from kpigate.fraud.schema import (
    CATEGORICAL,
    ENTITY_KEY,
    FEATURES,
    LABEL,
    SEGMENTS,
    amount_band,
)


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    a = generate(5_000, seed=11, drift=0.3)
    b = generate(5_000, seed=11, drift=0.3)
    c = generate(5_000, seed=12, drift=0.3)
    pd.testing.assert_frame_equal(a, b)
    assert not a["amount"].equals(c["amount"])


def test_rows_do_not_depend_on_chunk_size() -> None:
    whole = generate(80_000, seed=5)
    chunks = list(generate_chunks(80_000, seed=5, chunk_size=30_000))
    assert [len(c) for c in chunks] == [30_000, 30_000, 20_000]
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), whole)
    assert whole["txn_id"].is_monotonic_increasing and whole["txn_id"].is_unique


@pytest.mark.parametrize("drift", [0.0, 0.5, 1.0])
def test_fraud_rate_is_one_to_two_percent(drift: float) -> None:
    rate = fraud_rate(generate(200_000, seed=2, drift=drift))
    assert 0.01 <= rate <= 0.02, rate


def test_columns_types_and_segments() -> None:
    frame = generate(20_000, seed=3)
    for name in (*FEATURES, ENTITY_KEY, LABEL, *SEGMENTS, "txn_id"):
        assert name in frame.columns, name
    for name, vocabulary in CATEGORICAL.items():
        assert list(frame[name].cat.categories) == list(vocabulary)
    assert set(frame[LABEL].unique()) == {0, 1}
    assert frame["hour"].between(0, 23).all()
    assert frame["device_risk"].between(0, 1).all()
    assert (frame["amount"] > 0).all() and (frame["velocity"] >= 0).all()
    expected_band = [amount_band(float(a)) for a in frame["amount"]]
    assert frame["amount_band"].astype(str).tolist() == expected_band
    # Every segment value occurs, so per-segment KPIs are defined.
    for segment in SEGMENTS:
        assert frame[segment].astype(str).nunique() == len(frame[segment].cat.categories)


def test_drift_raises_wallet_and_marketplace_shares() -> None:
    shares = []
    for drift in (0.0, 0.5, 1.0):
        frame = generate(100_000, seed=4, drift=drift)
        legit = frame[frame[LABEL] == 0]
        wallet = float((legit["payment_method"] == "digital_wallet").mean())
        market = float((legit["merchant_category"] == "marketplace").mean())
        fraud = frame[frame[LABEL] == 1]
        market_fraud = float((fraud["fraud_pattern"] == "marketplace").mean())
        expected = mix(drift)
        assert wallet == pytest.approx(expected.wallet_share, abs=0.01)
        assert market == pytest.approx(expected.marketplace_share, abs=0.01)
        assert market_fraud == pytest.approx(expected.marketplace_fraud_share, abs=0.03)
        shares.append((wallet, market, market_fraud))
    for earlier, later in itertools.pairwise(shares):
        assert all(b > a for a, b in zip(earlier, later, strict=True)), shares
    # The new fraud pattern is absent before drift: the baseline cannot have learned it.
    assert shares[0][2] == 0.0


def test_drift_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="drift must be in"):
        next(generate_chunks(10, drift=1.5))


def test_chunked_generation_of_two_million_rows_keeps_memory_bounded() -> None:
    n, chunk_size = 2_000_000, 50_000
    sample = generate(chunk_size, seed=9)
    bytes_per_row = sample.memory_usage(deep=True).sum() / len(sample)
    whole_frame_bytes = bytes_per_row * n
    del sample
    gc.collect()

    tracemalloc.start()
    rows, frauds = 0, 0
    try:
        for chunk in generate_chunks(n, seed=9, chunk_size=chunk_size):
            rows += len(chunk)
            frauds += int(chunk[LABEL].sum())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == n
    assert 0.01 <= frauds / n <= 0.02
    # A chunk, one internal block and its temporaries; the whole frame would be 40 chunks.
    assert peak < 0.2 * whole_frame_bytes, (peak, whole_frame_bytes)


def test_model_input_is_features_in_order_with_integer_codes() -> None:
    frame = generate(1_000, seed=6)
    x = model_input(frame)
    assert tuple(x.columns) == FEATURES
    assert all(dtype == np.float32 for dtype in x.dtypes)
    for name, vocabulary in CATEGORICAL.items():
        codes = x[name].to_numpy()
        assert np.array_equal(codes, np.round(codes)) and codes.min() >= 0
        assert codes.max() < len(vocabulary)
        decoded = [vocabulary[int(c)] for c in codes]
        assert decoded == frame[name].astype(str).tolist()


def test_requests_are_json_and_round_trip_to_model_input() -> None:
    frame = generate(500, seed=8)
    records = to_requests(frame)
    assert len(records) == len(frame)
    assert json.loads(json.dumps(records)) == records
    first = records[0]
    assert first[ENTITY_KEY] == card_key(int(frame[ENTITY_KEY].iloc[0]))
    assert isinstance(first["region"], str) and first["region"] in CATEGORICAL["region"]
    assert first["amount_band"] == frame["amount_band"].astype(str).iloc[0]
    assert LABEL not in first  # labels arrive later, through /feedback
    back = requests_to_model_input(records)
    expected = model_input(frame)
    assert tuple(back.columns) == FEATURES
    np.testing.assert_allclose(back.to_numpy(), expected.to_numpy(), rtol=1e-4, atol=1e-3)


def test_bad_request_records_name_the_field() -> None:
    record = to_requests(generate(1, seed=1))[0]
    with pytest.raises(ValueError, match="merchant_category 'casino'"):
        requests_to_model_input([{**record, "merchant_category": "casino"}])
    missing = {k: v for k, v in record.items() if k != "velocity"}
    with pytest.raises(ValueError, match="missing feature 'velocity'"):
        requests_to_model_input([missing])
    with pytest.raises(ValueError, match="'amount' must be numeric"):
        requests_to_model_input([{**record, "amount": "lots"}])

"""Sticky hashing and the weighted split, on a real router over loopback."""

from __future__ import annotations

import math

import pytest

from kpigate.serve.routing import BUCKETS, RoutingState, bucket, route
from tests.serve_fixtures import RouterServer, transactions


def test_bucket_is_stable_and_salted() -> None:
    assert bucket("c42") == bucket("c42")
    assert 0 <= bucket("c42") < BUCKETS
    keys = [f"c{i}" for i in range(200)]
    assert [bucket(k, "a") for k in keys] != [bucket(k, "b") for k in keys]


def test_raising_the_weight_keeps_candidate_entities_on_the_candidate() -> None:
    keys = [f"c{i}" for i in range(2000)]
    at5 = {k for k in keys if route(k, RoutingState(5.0)).served == "candidate"}
    at25 = {k for k in keys if route(k, RoutingState(25.0)).served == "candidate"}
    assert at5 and at5 <= at25


def test_detached_or_missing_candidate_gets_nothing() -> None:
    detached = RoutingState(50.0, detached=True)
    assert all(route(f"c{i}", detached).served == "baseline" for i in range(500))
    state = RoutingState(100.0)
    assert route("c1", state, has_candidate=False).served == "baseline"


def test_shadow_mode_never_serves_the_candidate() -> None:
    state = RoutingState(100.0, "shadow")
    routes = [route(f"c{i}", state) for i in range(200)]
    assert all(r.served == "baseline" and r.shadow for r in routes)


@pytest.mark.parametrize("weight", [-1.0, 100.5])
def test_weight_outside_percent_range_is_refused(weight: float) -> None:
    with pytest.raises(ValueError, match="percentage"):
        RoutingState(weight)


def test_split_matches_weight_and_is_sticky(shared_router: RouterServer) -> None:
    """At 30%, the share of 2000 distinct cards on the candidate lies within 4.5 binomial
    standard errors of 0.30 (a bound a broken hash or an off-by-100 weight fails), and every
    repeat request for a card is answered by the same arm."""
    n = 2000
    cards = [f"split-{i}" for i in range(n)]
    bodies = transactions(n, seed=3)
    with shared_router.client() as client:
        instances = [dict(body, card_id=card) for body, card in zip(bodies, cards, strict=True)]
        first = []
        for start in range(0, n, 1000):  # the router's default limit per request
            chunk = {"instances": instances[start : start + 1000]}
            first += client.post("/predict", json=chunk).json()["predictions"]
        again = client.post("/predict", json={"instances": instances[:300]}).json()["predictions"]
        singles = [client.post("/predict", json=instances[i]).json() for i in range(0, 300, 10)]
    share = sum(p["arm"] == "candidate" for p in first) / n
    se = math.sqrt(0.3 * 0.7 / n)
    assert abs(share - 0.30) < 4.5 * se, f"candidate share {share:.3f} at weight 30%"
    assert [p["arm"] for p in again] == [p["arm"] for p in first[:300]]
    assert [p["arm"] for p in singles] == [first[i]["arm"] for i in range(0, 300, 10)]
    for p in first:
        expected = ("2", 0.9, "decline") if p["arm"] == "candidate" else ("1", 0.1, "approve")
        assert (p["model_version"], p["score"], p["decision"]) == expected
        assert p["fallback"] is False
    assert len({p["request_id"] for p in first}) == n

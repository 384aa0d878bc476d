"""/predict refuses malformed instances with a 422 that names the field."""

from __future__ import annotations

from typing import Any

import pytest

from tests.serve_fixtures import RouterServer, metric_value, transactions


def _valid() -> dict[str, Any]:
    return transactions(1, seed=11)[0]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: b.pop("amount"), "amount"),
        (lambda b: b.pop("card_id"), "card_id"),
        (lambda b: b.update(is_fraud=1), "is_fraud"),
        (lambda b: b.update(amount="12.5"), "amount"),
        (lambda b: b.update(hour=True), "hour"),
        (lambda b: b.update(region="mars"), "region"),
        (lambda b: b.update(payment_method=2), "payment_method"),
    ],
)
def test_bad_instance_is_a_422_naming_the_field(
    shared_router: RouterServer, change: Any, field: str
) -> None:
    body = _valid()
    change(body)
    with shared_router.client() as client:
        resp = client.post("/predict", json=body)
    assert resp.status_code == 422
    assert resp.json()["field"] == field


def test_batch_error_names_the_instance(shared_router: RouterServer) -> None:
    good, bad = _valid(), _valid()
    bad["velocity"] = None
    with shared_router.client() as client:
        resp = client.post("/predict", json={"instances": [good, bad]})
        empty = client.post("/predict", json={"instances": []})
        broken = client.post("/predict", content=b"{not json")
        metrics = client.get("/metrics").text
    assert resp.status_code == 422
    assert resp.json() == {
        "field": "velocity",
        "error": "'velocity' must be a number, got NoneType",
        "instance": 1,
    }
    assert empty.status_code == 422
    assert broken.status_code == 400
    assert metric_value(metrics, "kpigate_invalid_requests_total", endpoint="/predict") >= 3


def test_single_and_batch_answers(shared_router: RouterServer) -> None:
    body = _valid()
    with shared_router.client() as client:
        one = client.post("/predict", json=body).json()
        many = client.post("/predict", json={"instances": [body, body]}).json()
    assert set(one) == {"request_id", "score", "decision", "model_version", "arm", "fallback"}
    assert len(many["predictions"]) == 2
    assert many["predictions"][0]["arm"] == one["arm"]

"""Injected candidate faults (/admin/faults): latency and errors, behind the admin token."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.serve_fixtures import FixedModel, constant, metric_value, transactions


def test_injected_faults_slow_or_fail_the_candidate_only(start_router: Any) -> None:
    models = {"champion": FixedModel("1", score=constant(0.1)),
              "candidate": FixedModel("2", score=constant(0.9))}  # fmt: skip
    router = start_router(models, initial_weight=100.0)
    tx = transactions(1)[0]
    with router.client() as client, router.admin() as admin:
        assert (
            httpx.put(f"{router.url}/admin/faults", json={"candidate_delay_ms": 50}).status_code
            == 401
        )
        assert admin.put("/admin/faults", json={"candidate_delay_ms": -1}).status_code == 422
        assert admin.put("/admin/faults", json={"latency": 5}).status_code == 422
        assert (
            admin.put("/admin/faults", json={"candidate_delay_ms": 60}).json()["candidate_delay_ms"]
            == 60
        )
        started = time.perf_counter()
        slow = client.post("/predict", json=tx).json()
        assert slow["arm"] == "candidate" and time.perf_counter() - started >= 0.06
        admin.put("/admin/faults", json={"candidate_delay_ms": 0, "candidate_error_share": 1})
        failed = [client.post("/predict", json=tx).json() for _ in range(5)]
        assert all(a["arm"] == "baseline" and a["fallback"] for a in failed)
        errors = metric_value(
            client.get("/metrics").text, "kpigate_model_errors_total", arm="candidate"
        )
        assert errors == 5
        admin.put("/admin/faults", json={"candidate_error_share": 0})
        assert client.post("/predict", json=tx).json()["arm"] == "candidate"

"""Shadow mode answers with the baseline only; a failing or slow candidate falls back."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.serve_fixtures import FixedModel, RouterServer, constant, metric_value, transactions


def test_shadow_never_returns_the_candidates_answer(
    start_router: Callable[..., RouterServer],
) -> None:
    baseline = FixedModel("1", score=constant(0.1))
    candidate = FixedModel("2", score=constant(0.9))
    router = start_router(
        {"champion": baseline, "candidate": candidate}, initial_weight=100.0, initial_mode="shadow"
    )
    bodies = transactions(200, seed=5)
    with router.client() as client:
        answers = [client.post("/predict", json=b).json() for b in bodies[:50]]
        answers += client.post("/predict", json={"instances": bodies[50:]}).json()["predictions"]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # shadow copies are scored after the answer
            text = client.get("/metrics").text
            if metric_value(text, "kpigate_shadow_comparisons_total") >= 200:
                break
            time.sleep(0.05)
    assert all(
        (a["arm"], a["model_version"], a["score"], a["decision"])
        == ("baseline", "1", 0.1, "approve")
        for a in answers
    )
    assert candidate.calls > 0
    assert metric_value(text, "kpigate_shadow_comparisons_total") == 200
    # 0.1 approves and 0.9 declines: every comparison disagrees.
    assert metric_value(text, "kpigate_shadow_disagreements_total") == 200
    assert metric_value(text, "kpigate_decisions_total", arm="candidate", shadow="true") == 200
    assert metric_value(text, "kpigate_decisions_total", arm="candidate", shadow="false") == 0


def test_candidate_exception_falls_back_to_baseline(
    start_router: Callable[..., RouterServer],
) -> None:
    router = start_router(
        {"champion": FixedModel("1"), "candidate": FixedModel("2", fail=True)},
        initial_weight=100.0,
    )
    with router.client() as client:
        answers = [client.post("/predict", json=b).json() for b in transactions(20, seed=6)]
        text = client.get("/metrics").text
    assert all(a["arm"] == "baseline" and a["fallback"] for a in answers)
    labels = {"arm": "candidate", "model_version": "2", "kind": "exception"}
    assert metric_value(text, "kpigate_model_errors_total", **labels) == 20
    assert metric_value(text, "kpigate_fallbacks_total", model_version="2") == 20


def test_slow_candidate_times_out_and_falls_back(
    start_router: Callable[..., RouterServer],
) -> None:
    router = start_router(
        {"champion": FixedModel("1"), "candidate": FixedModel("2", delay_s=0.3)},
        initial_weight=100.0,
        candidate_timeout_s=0.05,
    )
    with router.client() as client:
        started = time.perf_counter()
        answer = client.post("/predict", json=transactions(1)[0]).json()
        elapsed = time.perf_counter() - started
        text = client.get("/metrics").text
    assert answer["arm"] == "baseline" and answer["fallback"] is True
    assert elapsed < 0.25, "the answer waited for the slow candidate"
    labels = {"arm": "candidate", "kind": "timeout"}
    assert metric_value(text, "kpigate_model_errors_total", **labels) == 1


def test_baseline_failure_is_a_500_with_the_version(
    start_router: Callable[..., RouterServer],
) -> None:
    router = start_router({"champion": FixedModel("7", fail=True)})
    with router.client() as client:
        resp = client.post("/predict", json=transactions(1)[0])
    assert resp.status_code == 500
    assert "baseline model version 7 failed" in resp.json()["error"]


def test_concurrent_requests_share_predict_calls(
    start_router: Callable[..., RouterServer],
) -> None:
    """Requests that arrive while a batch is scored are scored together."""
    import asyncio

    import httpx

    baseline = FixedModel("1", delay_s=0.02)
    router = start_router({"champion": baseline})

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=router.url) as client:
            bodies = transactions(64, seed=8)
            return await asyncio.gather(*(client.post("/predict", json=b) for b in bodies))

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    assert baseline.calls < 32, f"{baseline.calls} predict calls for 64 concurrent requests"

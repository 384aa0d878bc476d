"""The admin API: token checks, live weight and mode changes, persistence across a restart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from kpigate.serve.config import TOKEN_ENV, TOKEN_FILE_ENV
from tests.serve_fixtures import FixedModel, RouterServer, metric_value, transactions


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "x"}])
def test_admin_refuses_missing_or_wrong_token(
    shared_router: RouterServer, headers: dict[str, str]
) -> None:
    with httpx.Client(base_url=shared_router.url, headers=headers) as client:
        for method, path in [
            ("GET", "/admin/state"),
            ("PUT", "/admin/state"),
            ("POST", "/admin/detach"),
            ("POST", "/admin/reload"),
        ]:
            resp = client.request(method, path, json={"weight": 100})
            assert resp.status_code == 401, (method, path)
    with shared_router.admin() as admin:
        assert admin.get("/admin/state").json()["weight"] == 30.0  # nothing changed


def test_admin_disabled_without_a_configured_token(
    shared_router: RouterServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV)
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    with shared_router.client("anything") as client:
        resp = client.get("/admin/state")
    assert resp.status_code == 503
    assert TOKEN_ENV in resp.json()["error"]


def test_token_from_a_mounted_secret_file(
    shared_router: RouterServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-file-123\n")
    monkeypatch.delenv(TOKEN_ENV)
    monkeypatch.setenv(TOKEN_FILE_ENV, str(secret))
    with shared_router.client("from-file-123") as client:
        assert client.get("/admin/state").status_code == 200
    with shared_router.client("test-admin-token-4f1c") as client:
        assert client.get("/admin/state").status_code == 401


def test_weight_and_mode_change_live_and_survive_a_restart(
    start_router: Callable[..., RouterServer],
) -> None:
    router = start_router()
    body = transactions(1)[0]
    with router.admin() as admin, router.client() as client:
        assert admin.get("/admin/state").json()["weight"] == 0.0
        assert client.post("/predict", json=body).json()["arm"] == "baseline"
        state = admin.put("/admin/state", json={"weight": 100, "mode": "canary"}).json()
        assert (state["weight"], state["mode"], state["effective_weight"]) == (100.0, "canary", 100)
        assert client.post("/predict", json=body).json()["arm"] == "candidate"
        assert admin.put("/admin/state", json={"mode": "shadow"}).json()["weight"] == 100.0
        assert client.post("/predict", json=body).json()["arm"] == "baseline"
        bad = admin.put("/admin/state", json={"weight": 150})
        assert bad.status_code == 422 and "percentage" in bad.json()["error"]
        assert admin.put("/admin/state", json={"mode": "blue"}).status_code == 422
        assert admin.put("/admin/state", json={"colour": 1}).status_code == 422
        metrics = client.get("/metrics").text
    assert metric_value(metrics, "kpigate_candidate_weight_percent") == 100.0
    assert metric_value(metrics, "kpigate_mode", mode="shadow") == 1.0
    router.stop()

    # initial_weight is ignored once a state is saved.
    restarted = start_router(initial_weight=0.0)
    with restarted.admin() as admin:
        state = admin.get("/admin/state").json()
    assert (state["weight"], state["mode"], state["detached"]) == (100.0, "shadow", False)


def test_detach_stops_scoring_the_candidate_and_survives_a_restart(
    start_router: Callable[..., RouterServer],
) -> None:
    candidate = FixedModel("2")
    router = start_router(
        {"champion": FixedModel("1"), "candidate": candidate}, initial_weight=50.0
    )
    bodies = transactions(100, seed=9)
    with router.admin() as admin, router.client() as client:
        state = admin.post("/admin/detach").json()
        assert (state["weight"], state["detached"], state["candidate"]["loaded"]) == (
            0,
            True,
            False,
        )
        calls = candidate.calls
        answers = client.post("/predict", json={"instances": bodies}).json()["predictions"]
        assert {a["arm"] for a in answers} == {"baseline"}
        assert candidate.calls == calls
    router.stop()
    restarted = start_router({"champion": FixedModel("1"), "candidate": candidate})
    with restarted.admin() as admin:
        state = admin.get("/admin/state").json()
        assert state["detached"] is True and state["candidate"]["loaded"] is False
        # Setting a weight again re-attaches (loads) the candidate.
        state = admin.put("/admin/state", json={"weight": 10}).json()
        assert state["detached"] is False and state["candidate"]["version"] == "2"


def test_weight_without_a_candidate_is_a_409(start_router: Callable[..., RouterServer]) -> None:
    router = start_router({"champion": FixedModel("1")})
    with router.admin() as admin, router.client() as client:
        resp = admin.put("/admin/state", json={"weight": 5})
        assert resp.status_code == 409
        assert "candidate" in resp.json()["error"]
        ready = client.get("/readyz")
        assert ready.status_code == 200 and "no model under alias" in ready.json()["candidate"]


def test_reload_picks_up_a_new_candidate(start_router: Callable[..., RouterServer]) -> None:
    models = {"champion": FixedModel("1"), "candidate": FixedModel("2")}
    router = start_router(models, initial_weight=100.0)
    body = transactions(1)[0]
    with router.admin() as admin, router.client() as client:
        models["candidate"] = FixedModel("3")
        state = admin.post("/admin/reload").json()
        assert state["candidate"]["version"] == "3"
        assert client.post("/predict", json=body).json()["model_version"] == "3"


def test_health_ready_openapi_metrics(shared_router: RouterServer) -> None:
    with shared_router.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json()["ready"] is True
        doc = client.get("/openapi.json").json()
        metrics = client.get("/metrics")
    assert doc["openapi"].startswith("3.")
    assert {"/predict", "/feedback", "/admin/state", "/admin/detach"} <= set(doc["paths"])
    assert metrics.headers["content-type"].startswith("text/plain")
    assert metric_value(metrics.text, "kpigate_model_info", arm="candidate", model_version="2")

"""The router backend: exact admin requests (fake server), then a real router on loopback."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pytest_httpserver import HTTPServer

from kpigate.backends import BackendError, BackendSettings, TrafficBackend, make_backend
from kpigate.backends.router import DETACH_PATH, STATE_PATH
from tests.serve_fixtures import RouterServer


def router_backend(url: str, token: str = "t0ken") -> TrafficBackend:
    return make_backend(BackendSettings(kind="router", router_url=url, admin_token=token))


def test_requests_carry_the_token_and_absolute_state(httpserver: HTTPServer) -> None:
    auth = {"Authorization": "Bearer t0ken"}
    state = {"weight": 25.0, "mode": "canary", "detached": False}
    httpserver.expect_ordered_request(
        STATE_PATH, method="PUT", headers=auth, json={"weight": 25.0}
    ).respond_with_json(state)
    httpserver.expect_ordered_request(
        STATE_PATH, method="PUT", headers=auth, json={"mode": "shadow"}
    ).respond_with_json(state)
    httpserver.expect_ordered_request(STATE_PATH, method="GET", headers=auth).respond_with_json(
        state
    )
    httpserver.expect_ordered_request(DETACH_PATH, method="POST", headers=auth).respond_with_json(
        {**state, "weight": 0.0, "detached": True}
    )
    backend = router_backend(httpserver.url_for(""))
    backend.set_weight(25)
    backend.set_mirror(True)
    assert backend.get_weight() == 25.0
    backend.detach()
    httpserver.check_assertions()


def test_server_errors_are_passed_on(httpserver: HTTPServer) -> None:
    message = "cannot route 5% to the candidate: it is not loaded"
    httpserver.expect_request(STATE_PATH, method="PUT").respond_with_json({"error": message}, 409)
    with pytest.raises(BackendError, match=r"HTTP 409.*not loaded"):
        router_backend(httpserver.url_for("")).set_weight(5)


def test_a_wrong_token_says_which_variable_to_set(httpserver: HTTPServer) -> None:
    httpserver.expect_request(STATE_PATH).respond_with_json({"error": "wrong admin token"}, 401)
    with pytest.raises(BackendError, match="KPIGATE_ADMIN_TOKEN"):
        router_backend(httpserver.url_for("")).get_weight()


def test_an_unreachable_router_names_the_url() -> None:
    backend = router_backend("http://127.0.0.1:9")
    with pytest.raises(BackendError, match=r"cannot reach the router admin API at http://127\.0"):
        backend.get_weight()


def test_no_token_is_refused_before_any_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KPIGATE_ADMIN_TOKEN", raising=False)
    with pytest.raises(BackendError, match="KPIGATE_ADMIN_TOKEN"):
        make_backend(BackendSettings(kind="router"))


def test_drives_a_real_router_through_the_stages(
    start_router: Callable[..., RouterServer], admin_token: str
) -> None:
    router = start_router()
    backend = router_backend(router.url, admin_token)
    for percent in (5, 25, 50, 95):
        backend.set_weight(percent)
        assert backend.get_weight() == percent
    backend.set_mirror(True)
    with router.admin() as admin:
        assert admin.get(STATE_PATH).json()["mode"] == "shadow"
    backend.set_mirror(False)
    backend.detach()
    assert backend.get_weight() == 0.0
    with router.admin() as admin:
        assert admin.get(STATE_PATH).json()["detached"] is True
    with pytest.raises(BackendError, match=r"percentage in \[0, 100\]"):
        backend.set_weight(101)

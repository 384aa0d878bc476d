"""Router replicas as real processes on one PostgreSQL: they agree on the routing state, a
rollback reaches every one of them, a replica that cannot apply a change is named, labels join
whichever replica served, and a label that beats its shadow copy still labels it."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from kpigate.backends import BackendError, BackendSettings, make_backend
from kpigate.serve.predlog import Tables, make_engine
from tests.router_process import RouterProcess
from tests.serve_fixtures import (
    ADMIN_TOKEN,
    free_port,
    metric_value,
    postgres_or_skip,
    transactions,
)

pytestmark = pytest.mark.slow
Start = Callable[..., RouterProcess]


@pytest.fixture
def pg_prefix() -> Iterator[tuple[str, str]]:
    url = postgres_or_skip()
    prefix = f"r{uuid.uuid4().hex[:10]}_"
    yield url, prefix
    engine = make_engine(url)
    Tables(prefix).drop(engine)
    engine.dispose()


@pytest.fixture
def replicas(pg_prefix: tuple[str, str], admin_token: str) -> Iterator[Start]:
    url, prefix = pg_prefix
    started: list[RouterProcess] = []

    def start(name: str, **opts: str) -> RouterProcess:
        proc = RouterProcess(url, prefix, free_port(), name, **opts)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def _arms(url: str, bodies: list[dict[str, Any]]) -> list[str]:
    with httpx.Client(base_url=url, timeout=10) as client:
        return [client.post("/predict", json=b).json()["arm"] for b in bodies]


def _backend(url: str) -> Any:
    return make_backend(BackendSettings(kind="router", router_url=url, admin_token=ADMIN_TOKEN))


def test_a_change_on_one_replica_is_applied_by_both_and_a_rollback_reaches_both(
    replicas: Start,
) -> None:
    a, b = replicas("replica-a"), replicas("replica-b")
    a.wait_ready(), b.wait_ready()
    bodies = [dict(t, card_id=f"card-{i}") for i, t in enumerate(transactions(100, seed=5))]
    backend = _backend(a.url)
    started = time.monotonic()
    backend.set_weight(50)  # returns only once both replicas applied it
    print(f"\nweight 50 applied by both replicas in {time.monotonic() - started:.2f}s")
    on_b = _arms(b.url, bodies)
    assert 20 < on_b.count("candidate") < 80, on_b.count("candidate")
    assert _arms(a.url, bodies) == on_b  # same split: same state, same hashing
    started = time.monotonic()
    backend.set_weight(0)
    backend.detach()
    print(f"rollback applied by both replicas in {time.monotonic() - started:.2f}s")
    assert set(_arms(b.url, bodies)) == {"baseline"}
    assert set(_arms(a.url, bodies)) == {"baseline"}
    with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        state = admin.get(f"{b.url}/admin/state").json()
    assert state["detached"] is True
    assert {r["replica_id"] for r in state["replicas"]} == {"replica-a", "replica-b"}
    assert {r["applied_version"] for r in state["replicas"]} == {state["state_version"]}


def test_a_replica_that_does_not_apply_a_change_is_named(replicas: Start) -> None:
    a, b = replicas("replica-a"), replicas("replica-b")
    a.wait_ready(), b.wait_ready()
    backend = _backend(a.url)
    os.killpg(b.pid, signal.SIGSTOP)  # alive by its last heartbeat, but applying nothing
    try:
        with pytest.raises(BackendError, match="replica-b") as err:
            backend.set_weight(25)
        assert "replica-a" not in str(err.value).split("lagging:")[1]
    finally:
        os.killpg(b.pid, signal.SIGCONT)
    backend.set_weight(25)  # once it runs again, it catches up and the retry succeeds
    assert "candidate" in _arms(b.url, [dict(t, card_id=f"x{i}") for i, t in
                                       enumerate(transactions(40, seed=6))])  # fmt: skip


def test_labels_join_on_whichever_replica_served(replicas: Start) -> None:
    a, b = replicas("replica-a", weight="50"), replicas("replica-b")
    a.wait_ready(), b.wait_ready()
    results = []
    with httpx.Client(timeout=10) as client:
        for i, body in enumerate(transactions(50, seed=8)):
            answer = client.post(f"{a.url}/predict", json=body).json()
            report = client.post(
                f"{b.url}/feedback", json={"request_id": answer["request_id"], "label": i % 2}
            ).json()
            results.append(report["joined"])
        again = client.post(
            f"{a.url}/feedback", json={"request_id": answer["request_id"], "label": 1}
        ).json()
        metrics_a = client.get(f"{a.url}/metrics").text
        metrics_b = client.get(f"{b.url}/metrics").text
    assert results == [1] * 50
    assert again["duplicate"] == 1 and again["joined"] == 0
    joined = [
        metric_value(m, "kpigate_outcomes_total", segment="all") for m in (metrics_a, metrics_b)
    ]
    assert joined == [0.0, 50.0]  # counted once, by the replica that joined


def test_a_label_that_arrives_before_its_shadow_copy_labels_the_copy(replicas: Start) -> None:
    a, b = replicas("replica-a", weight="100", mode="shadow"), replicas("replica-b")
    a.wait_ready(), b.wait_ready()
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    n = 50
    with httpx.Client(timeout=10) as client:
        # The candidate scores its copy 150 ms after the answer left: every label below wins.
        client.put(f"{a.url}/admin/faults", json={"candidate_delay_ms": 150}, headers=auth)
        ids = []
        for i, body in enumerate(transactions(n, seed=9)):
            rid = client.post(f"{a.url}/predict", json=body).json()["request_id"]
            assert client.post(f"{b.url}/feedback", json={"request_id": rid, "label": i % 2}
                               ).json()["joined"] == 1  # fmt: skip
            ids.append(rid)
        deadline = time.monotonic() + 20
        while True:
            rows = _rows(a, ids)
            if sum(1 for r in rows if r["shadow"]) == n or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        text_a = client.get(f"{a.url}/metrics").text
        text_b = client.get(f"{b.url}/metrics").text
    shadows = [r for r in rows if r["shadow"]]
    assert len(shadows) == n
    labels = {r["request_id"]: r["label"] for r in rows if not r["shadow"]}
    assert all(r["label"] == labels[r["request_id"]] for r in shadows)
    counted = [
        metric_value(t, "kpigate_outcomes_total", segment="all", shadow="true")
        for t in (text_a, text_b)
    ]
    assert sum(counted) == n, counted  # each copy counted once, wherever it was labelled


def _rows(router: RouterProcess, ids: list[str]) -> list[dict[str, Any]]:
    engine = make_engine(router.db_url)
    table = Tables(router.prefix).predictions
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(table).where(table.c.request_id.in_(ids))).all()
    finally:
        engine.dispose()
    return [dict(r._mapping) for r in rows]

"""Hostile input and a failing database against a real router on loopback: poison rows are
refused before serving and never block the others, limits answer 413/400/408 with a message,
error bodies carry no SQL and no row data, and a hanging database fails /readyz in time."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from kpigate.serve.predlog import Tables, make_engine
from tests.serve_fixtures import (
    ADMIN_TOKEN,
    RouterServer,
    free_port,
    metric_value,
    postgres_or_skip,
    transactions,
)

pytestmark = pytest.mark.slow


def _count(router: RouterServer) -> int:
    engine = make_engine(router.config.db_url)
    table = Tables(router.config.table_prefix).predictions
    with engine.connect() as conn:
        n = int(conn.execute(select(func.count()).select_from(table)).scalar_one())
    engine.dispose()
    return n


def _raw(body: dict[str, Any], card_id_json: str) -> bytes:
    """The body with card_id replaced by raw JSON text (to send what json.dumps would not)."""
    text = json.dumps({**body, "card_id": "@@"})
    return text.replace('"@@"', card_id_json).encode()


def test_poison_rows_get_422_and_the_good_ones_are_served_and_logged(
    start_router: Callable[..., RouterServer],
) -> None:
    router = start_router(initial_weight=50.0)
    good = transactions(20, seed=31)
    poison = [
        json.dumps("x" * 129),  # longer than the column
        json.dumps("nul\x00inside"),  # PostgreSQL refuses NUL in text
        "1" + "0" * 200,  # a 201-digit integer
        '"\\ud800"',  # a lone surrogate
        '"tab\\there"',  # a control character
    ]
    codes = []
    with router.client() as client:
        for i, body in enumerate(good):
            assert client.post("/predict", json=body).status_code == 200
            if i < len(poison):
                resp = client.post(
                    "/predict",
                    content=_raw(body, poison[i]),
                    headers={"content-type": "application/json"},
                )
                codes.append(resp.status_code)
                assert resp.json()["field"] == "card_id", resp.text
        assert client.get("/readyz").status_code == 200
        text = client.get("/metrics").text
    assert codes == [422] * len(poison)
    assert _count(router) == len(good)
    assert metric_value(text, "kpigate_invalid_requests_total", endpoint="/predict") == len(poison)
    assert metric_value(text, "kpigate_predlog_rows_dropped_total") == 0


@pytest.mark.parametrize("path", ["/predict", "/feedback", "/admin/state"])
def test_deep_nesting_is_a_400_naming_the_limit(shared_router: RouterServer, path: str) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    method = "PUT" if path == "/admin/state" else "POST"
    with shared_router.client(ADMIN_TOKEN) as client:
        resp = client.request(method, path, content=deep)
        # 40 levels: well within Python's parser, beyond the router's default limit of 32.
        nested: Any = 1
        for _ in range(40):
            nested = [nested]
        too_deep = client.request(method, path, json={"a": nested})
    assert resp.status_code == 400 and "nested deeper" in resp.json()["error"]
    assert too_deep.status_code == 400 and "32 levels" in too_deep.json()["error"]


def test_body_and_batch_limits_answer_413(start_router: Callable[..., RouterServer]) -> None:
    router = start_router(max_body_bytes=64 * 1024, max_instances=10)
    body = transactions(1, seed=1)[0]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the read itself must stop
        yield b'{"card_id": "'
        for _ in range(200):
            yield b"x" * 4096
        yield b'"}'

    with router.client() as client:
        declared = client.post("/predict", json={**body, "card_id": "x" * 100_000})
        streamed = client.post("/predict", content=chunks())
        batch = client.post("/predict", json={"instances": [body] * 11})
        labels = client.post("/feedback", json=[{"request_id": "a", "label": 1}] * 11)
        assert client.post("/predict", json={"instances": [body] * 10}).status_code == 200
    for resp in (declared, streamed):
        assert resp.status_code == 413 and "65536 bytes" in resp.json()["error"]
    assert batch.status_code == 413 and "limit of 10" in batch.json()["error"]
    assert labels.status_code == 413


def test_slow_headers_and_slow_bodies_are_cut_off(
    start_router: Callable[..., RouterServer],
) -> None:
    router = start_router(header_timeout_s=0.5, body_timeout_s=0.5)
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        assert sock.recv(100) == b"", "the server kept a connection with unfinished headers"
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        answer = sock.recv(1000)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]


def test_feedback_reports_unknown_and_before_prediction_labels_by_kind(
    start_router: Callable[..., RouterServer],
) -> None:
    router = start_router()
    with router.client() as client:
        answer = client.post("/predict", json=transactions(1, seed=2)[0]).json()
        rid = answer["request_id"]
        report = client.post("/feedback", content=json.dumps({"labels": [
            {"request_id": rid, "label": 1, "labeled_at": time.time() - 3600},
            {"request_id": "f" * 32, "label": 1},
            {"request_id": "\ud800", "label": 0},
            {"request_id": rid, "label": 1},  # repeated within the request
            {"request_id": "g" * 32, "label": 1, "labeled_at": 1e308},  # in the future
        ]})).json()  # fmt: skip
        first = client.post("/feedback", json={"request_id": rid, "label": 1}).json()
        again = client.post("/feedback", json={"request_id": rid, "label": 1}).json()
        text = client.get("/metrics").text
    assert (report["before_prediction"], report["unknown"], report["invalid"]) == (1, 1, 2)
    assert report["duplicate"] == 1 and report["joined"] == 0
    assert (first["joined"], again["duplicate"]) == (1, 1)
    for result, n in [("before_prediction", 1), ("unknown", 1), ("joined", 1), ("duplicate", 2)]:
        assert metric_value(text, "kpigate_feedback_labels_total", result=result) == n
    assert metric_value(text, "kpigate_outcomes_total", segment="all") == 1


def test_error_bodies_carry_no_sql_and_no_row_data(
    start_router: Callable[..., RouterServer],
) -> None:
    router = start_router()
    card = "secret-card-4242"
    with router.client() as client:
        rid = client.post("/predict", json={**transactions(1)[0], "card_id": card}).json()
        engine = make_engine(router.config.db_url)
        Tables(router.config.table_prefix).predictions.drop(engine)  # the database breaks
        engine.dispose()
        answers = [
            client.post("/feedback", json={"request_id": rid["request_id"], "label": 1}),
            client.post("/predict", json={**transactions(1)[0], "card_id": card}),
            client.get("/readyz"),
        ]
    for resp in answers:
        assert resp.status_code == 503, resp.text
        for leak in ("SELECT", "INSERT", "UPDATE", card, "predictions", "sqlite"):
            assert leak not in resp.text, (leak, resp.text)


class FreezingProxy:
    """A TCP proxy to PostgreSQL that can stop forwarding (a database that hangs)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.forwarding = threading.Event()
        self.forwarding.set()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.forwarding.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    def close(self) -> None:
        self._stopped = True
        self.forwarding.set()
        self._server.close()


def test_a_hanging_database_fails_readyz_within_its_timeout(
    start_router: Callable[..., RouterServer],
) -> None:
    url = postgres_or_skip()
    proxy = FreezingProxy(("127.0.0.1", 5432))
    proxied = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    prefix = f"h{int(time.time() * 1000) % 10**9}_"
    router = start_router(db_url=proxied, table_prefix=prefix, db_statement_timeout_s=1.0,
                          db_connect_timeout_s=1.0)  # fmt: skip
    try:
        with router.client() as client:
            assert client.get("/readyz").status_code == 200
            proxy.forwarding.clear()  # the database stops answering
            started = time.monotonic()
            ready = client.get("/readyz")
            waited = time.monotonic() - started
            predict = client.post("/predict", json=transactions(1)[0])
            again = client.get("/readyz")
            print(f"\n/readyz answered {ready.status_code} after {waited:.2f}s (timeout 1s)")
            assert ready.status_code == 503 and "did not answer within 1s" in ready.text
            assert predict.status_code == 503 and again.status_code == 503
            proxy.forwarding.set()  # it comes back
            deadline = time.monotonic() + 30
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the router did not recover"
                time.sleep(0.2)
            assert client.post("/predict", json=transactions(1)[0]).status_code == 200
    finally:
        proxy.close()
        router.stop()
        engine = make_engine(url)
        Tables(prefix).drop(engine)
        engine.dispose()

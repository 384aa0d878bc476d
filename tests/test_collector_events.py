"""The collector takes payload-log events in any order, once each, and labels before or after
their prediction; hostile input gets a clear 4xx and leaves nothing behind.

Event formats: kserve/kserve pkg/logger/worker.go and handler.go (request and response share
ce-id; types org.kubeflow.serving.inference.request/.response); SeldonIO/seldon-core v1.17.1
executor/logger/worker.go (ce-requestid joins the pair, each event has its own ce-id).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from kpigate.collector.config import CollectorConfig
from kpigate.collector.ids import log_id
from kpigate.serve.predlog import Tables, make_engine
from tests.collector_helpers import (
    CollectorServer,
    collector_config,
    kserve_event,
    post,
    seldon_event,
)
from tests.serve_fixtures import metric_value, transactions


@pytest.fixture
def start_collector(tmp_path: Path) -> Iterator[Callable[..., CollectorServer]]:
    started: list[CollectorServer] = []

    def start(backend: str = "kserve", **kw: Any) -> CollectorServer:
        db = kw.pop("db_url", f"sqlite:///{tmp_path / 'collector.db'}")
        server = CollectorServer(collector_config(backend, db, "kpigate_", **kw)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _rows(config: CollectorConfig) -> list[dict[str, Any]]:
    engine = make_engine(config.db_url)
    table = Tables(config.table_prefix).predictions
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(select(table).order_by(table.c.id))]
    engine.dispose()
    return rows


def _v1(n: int, seed: int = 0) -> dict[str, Any]:
    return {"instances": transactions(n, seed)}


def test_a_response_before_its_request_duplicates_and_early_labels_each_count_once(
    start_collector: Callable[..., CollectorServer],
) -> None:
    collector = start_collector("kserve")
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    with collector.client() as client:
        # Served now, logged later: its label arrives before the logger's events, and is parked.
        request = kserve_event("request", first, _v1(1))
        response = kserve_event("response", first, {"predictions": [0.93]})
        early = client.post("/feedback", json={"request_id": first, "label": 1}).json()
        assert (early["pending"], early["unknown"], early["joined"]) == (1, 0, 0)
        # The response first, then the request; each delivered twice (the loggers' retries).
        assert post(client, response).json() == {"result": "stored"}
        assert post(client, response).json() == {"result": "duplicate"}
        assert post(client, request).json() == {"result": "logged", "predictions": 1}
        assert post(client, request).json() == {"result": "duplicate"}
        assert post(client, response).json() == {"result": "duplicate"}
        # A batch of three on the canary: instance i is labelled as `<ce-id>:<i>`.
        batch = _v1(3, seed=1)
        scored = {"predictions": [[0.8, 0.2]] * 3}
        assert post(client, kserve_event("request", second, batch, "canary")).status_code == 200
        answer = post(client, kserve_event("response", second, scored, "canary"))
        assert answer.json() == {"result": "logged", "predictions": 3}
        labels = [{"request_id": f"{second}:{i}", "label": 0} for i in range(3)]
        labels.append({"request_id": first, "label": 1})  # joined already, when it landed
        report = client.post("/feedback", json={"labels": labels}).json()
        assert (report["joined"], report["duplicate"], report["pending"]) == (3, 1, 0)
        text = client.get("/metrics").text
    rows = _rows(collector.config)
    assert [(r["request_id"], r["arm"], r["model_version"], r["label"]) for r in rows] == [
        (log_id(first), "baseline", "2", 1),
        *((log_id(f"{second}:{i}"), "candidate", "3", 0) for i in range(3)),
    ]
    assert rows[0]["decision"] == "decline" and rows[1]["decision"] == "approve"
    tx = transactions(1)[0]
    assert rows[0]["entity_key"] == str(tx["card_id"]) and rows[0]["region"] == tx["region"]
    assert rows[0]["latency_ms"] >= 0
    outcome = "kpigate_outcomes_total"
    assert metric_value(text, outcome, arm="baseline", segment="all", outcome="tp") == 1
    assert metric_value(text, outcome, arm="candidate", segment="all", outcome="tn") == 3
    assert metric_value(text, outcome, segment="all") == 4  # nothing counted twice
    assert metric_value(text, "kpigate_decisions_total") == 4
    events = "kpigate_collector_events_total"
    assert metric_value(text, events, kind="response", result="duplicate") == 2
    assert metric_value(text, events, kind="request", result="duplicate") == 1
    assert metric_value(text, events, result="logged") == 2
    assert metric_value(text, "kpigate_feedback_labels_total", result="pending") == 1
    assert metric_value(text, "kpigate_feedback_labels_total", result="joined") == 4
    assert metric_value(text, "kpigate_collector_waiting_pairs") == 0
    assert metric_value(text, "kpigate_collector_parked_labels") == 0


def test_seldon_pairs_by_request_id_and_reads_v2_tensors(
    start_collector: Callable[..., CollectorServer],
) -> None:
    collector = start_collector("seldon")
    txs = transactions(2, seed=3)
    names = list(txs[0])
    inputs = [
        {"name": n, "shape": [2], "datatype": "BYTES" if isinstance(txs[0][n], str) else "FP64",
         "data": [t[n] for t in txs]}
        for n in names
    ]  # fmt: skip
    outputs = [{"name": "predict", "shape": [2, 2], "datatype": "FP64",
                "data": [0.9, 0.1, 0.2, 0.8]}]  # fmt: skip
    puid = "tx-000123"
    with collector.client() as client:
        # Every Seldon event has a fresh ce-id: only ce-requestid pairs them.
        stored = post(client, seldon_event("request", puid, {"inputs": inputs}, "candidate"))
        assert stored.json() == {"result": "stored"}
        logged = post(client, seldon_event("response", puid, {"outputs": outputs}, "candidate"))
        assert logged.json() == {"result": "logged", "predictions": 2}
        report = client.post("/feedback", json=[{"request_id": f"{puid}:1", "label": 1}]).json()
        assert report["joined"] == 1
    rows = _rows(collector.config)
    assert [(r["request_id"], r["arm"], r["score"], r["decision"]) for r in rows] == [
        (f"{puid}:0", "candidate", 0.1, "approve"),
        (f"{puid}:1", "candidate", 0.8, "decline"),
    ]
    assert rows[1]["label"] == 1


def test_hostile_events_get_a_clear_4xx_and_leave_nothing(
    start_collector: Callable[..., CollectorServer],
) -> None:
    collector = start_collector("kserve", max_body_bytes=4096)
    rid = str(uuid.uuid4())
    good_headers, good_body = kserve_event("request", rid, _v1(1))
    cases: list[tuple[dict[str, str], bytes, int, str]] = [
        ({"content-type": "application/json"}, good_body, 415, "not a binary-mode CloudEvent"),
        ({**good_headers, "ce-id": ""}, good_body, 400, "missing: ce-id"),
        ({**good_headers, "ce-specversion": "0.3"}, good_body, 400, "specversion"),
        ({**good_headers, "ce-type": "com.example.other"}, good_body, 400, "not a KServe"),
        ({**good_headers, "ce-time": "yesterday"}, good_body, 400, "RFC 3339"),
        ({**good_headers, "ce-time": "2999-01-01T00:00:00Z"}, good_body, 400, "future"),
        ({**good_headers, "ce-id": "x" * 65}, good_body, 400, "request id"),
        ({**good_headers, "ce-endpoint": "blue"}, good_body, 422, "matches neither arm"),
        (good_headers, b"{not json", 400, "not valid JSON"),
        (good_headers, b"[" * 100 + b"]" * 100, 400, "nested deeper"),
        (good_headers, b"{" + b" " * 5000 + b"}", 413, "larger than the limit"),
        ({**good_headers, "content-type": "text/csv"}, b"a,b", 415, "cannot be read"),
        (good_headers, b'{"instances": [[1, 2, 3]]}', 422, "naming their features"),
        (good_headers, b'{"instances": [{"card_id": "c", "amount": 1e999}]}', 422, "amount"),
        (
            good_headers,
            b'{"instances": [{"card_id": "c", "amount": 3, "region": "mars",'
            b' "payment_method": "card"}]}',
            422,
            "'region' must be one of",
        ),
        (
            good_headers,
            b'{"inputs": [{"name": "a", "data": [1]}, {"name": "b", "data": [1, 2]}]}',
            422,
            "all of one length",
        ),
    ]
    with collector.client() as client:
        for headers, body, status, message in cases:
            answer = client.post("/", headers=headers, content=body)
            assert (answer.status_code, message in answer.json()["error"]) == (status, True), (
                headers.get("ce-id"), answer.text,
            )  # fmt: skip
        huge = kserve_event("response", rid, {"predictions": [10**400]})
        assert post(client, huge).status_code == 422
        response = kserve_event("response", rid, {"predictions": [1.5]})
        refused = post(client, response)
        assert refused.status_code == 422 and "probability" in refused.json()["error"]
        # Nothing was stored: the good pair still lands whole.
        assert post(client, (good_headers, good_body)).json() == {"result": "stored"}
        mismatched = post(client, kserve_event("response", rid, {"predictions": [0.1, 0.2]}))
        assert mismatched.status_code == 422 and "1 instances but 2 scores" in mismatched.text
        assert (
            post(client, kserve_event("response", rid, {"predictions": [0.2]})).status_code == 200
        )
        for bad in ({"labels": 3}, [{"request_id": rid, "label": 2}], [{"request_id": 7}], [7]):
            answer = client.post("/feedback", json=bad)
            assert answer.status_code in (200, 422) and answer.status_code < 500
        assert client.post("/feedback", content=b"{").status_code == 400
        text = client.get("/metrics").text
    assert len(_rows(collector.config)) == 1
    assert metric_value(text, "kpigate_collector_events_total", result="invalid") == len(cases) + 3
    assert metric_value(text, "kpigate_predlog_rows_dropped_total") == 0


def test_a_pair_stored_but_not_logged_is_logged_by_the_next_collector(
    start_collector: Callable[..., CollectorServer], tmp_path: Path
) -> None:
    """A collector that stored both halves and died (or found the log down) before logging
    them: KServe's worker does not resend, so the next collector lands the pair itself."""
    from kpigate.collector.events import LoggedEvent
    from kpigate.collector.store import CollectorTables, PairStore

    url = f"sqlite:///{tmp_path / 'collector.db'}"
    engine = make_engine(url)
    Tables().create(engine)
    tables = CollectorTables()
    tables.create(engine)
    store = PairStore(engine, tables, Tables().predictions, threading.Lock())
    rid = str(uuid.uuid4())
    attributes = {"endpoint": "canary", "id": rid}
    for kind, body in (("request", _v1(1)), ("response", {"predictions": [0.7]})):
        store.store(LoggedEvent("kserve", kind, rid, attributes, time.time(), body), time.time())  # type: ignore[arg-type]
    engine.dispose()
    collector = start_collector("kserve", db_url=url, reland_interval_s=0.05)
    deadline = time.monotonic() + 20
    while not (rows := _rows(collector.config)):
        assert time.monotonic() < deadline, "the stored pair was never logged"
        time.sleep(0.05)
    assert [(r["request_id"], r["arm"], r["score"]) for r in rows] == [
        (log_id(rid), "candidate", 0.7)
    ]
    with collector.client() as client:
        assert post(client, kserve_event("response", rid, {"predictions": [0.7]})).json() == {
            "result": "duplicate"
        }


def test_label_ids_and_logged_ids_agree_and_fit_the_log_column() -> None:
    rid = uuid.uuid4()
    # A UUID in any of its spellings is one prediction; a batch's instance adds its index.
    assert log_id(str(rid)) == log_id(str(rid).upper()) == log_id(rid.hex) == rid.hex
    # `<uuid>:<i>` is longer than the column: hashed, from the UUID's canonical form.
    assert log_id(f"{rid}:2") == log_id(f"{str(rid).upper()}:2") != log_id(f"{rid}:3")
    assert log_id("tx-000123") == "tx-000123"
    long = "order-" + "9" * 50
    assert len(log_id(long)) == 32 and log_id(long) == log_id(long)
    assert log_id(long) != log_id(long + "0")
    assert all(len(log_id(f"{rid}:{i}")) <= 32 for i in (0, 999))


def test_labels_waiting_for_their_prediction_are_capped_and_the_dropped_ones_counted(
    start_collector: Callable[..., CollectorServer],
) -> None:
    """At most --max-parked-labels labels wait for predictions not logged yet: a label feed for
    traffic this collector never sees cannot fill the database. The rest are answered unknown,
    say why, and are counted; a parked one is still joined when its prediction lands."""
    collector = start_collector("kserve", max_parked_labels=2)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    # Served (ce-time) before its label was given, logged after.
    served = kserve_event("request", ids[0], _v1(1))
    with collector.client() as client:
        labels = [{"request_id": rid, "label": 1} for rid in ids]
        report = client.post("/feedback", json={"labels": labels}).json()
        assert (report["pending"], report["unknown"], report["joined"]) == (2, 1, 0)
        [problem] = [p for p in report["problems"] if p["result"] == "unknown"]
        assert problem["index"] == 2 and "--max-parked-labels" in problem["detail"]
        again = client.post("/feedback", json={"request_id": ids[0], "label": 1}).json()
        assert again["duplicate"] == 1  # waiting already: not dropped, not parked twice
        assert post(client, served).status_code == 200
        landed = post(client, kserve_event("response", ids[0], {"predictions": [0.9]}))
        assert landed.json() == {"result": "logged", "predictions": 1}
        # Its label was joined when it landed, which made room for one more.
        later = client.post("/feedback", json={"request_id": ids[2], "label": 0}).json()
        assert later["pending"] == 1
        text = client.get("/metrics").text
    assert metric_value(text, "kpigate_collector_labels_dropped_total") == 1
    assert metric_value(text, "kpigate_collector_parked_labels") == 2
    assert metric_value(text, "kpigate_feedback_labels_total", result="joined") == 1
    assert [r["label"] for r in _rows(collector.config)] == [1]


def test_landed_pairs_and_lone_halves_are_pruned_after_the_retention(
    start_collector: Callable[..., CollectorServer],
) -> None:
    """Pair rows do not pile up: a landed pair and a request whose response never came are
    deleted once older than --pair-retention, a pair that waits to be landed again is kept;
    a half redelivered after its pair was pruned never writes its predictions twice."""
    from kpigate.collector.store import CollectorTables

    collector = start_collector(
        "kserve", pair_retention_s=0.3, prune_interval_s=0.05, reland_interval_s=3600.0
    )
    landed, lone = str(uuid.uuid4()), str(uuid.uuid4())
    with collector.client() as client:
        assert post(client, kserve_event("request", landed, _v1(1))).status_code == 200
        assert (
            post(client, kserve_event("response", landed, {"predictions": [0.2]})).json()["result"]
            == "logged"
        )
        assert post(client, kserve_event("request", lone, _v1(1, seed=4))).json() == {
            "result": "stored"
        }
    engine = make_engine(collector.config.db_url)
    pairs = CollectorTables(collector.config.table_prefix).pairs
    deadline = time.monotonic() + 30  # a bound on waiting, not a timed assertion
    with engine.connect() as conn:
        while conn.execute(select(pairs.c.pair_id)).first() is not None:
            assert time.monotonic() < deadline, "the pair rows were never pruned"
            time.sleep(0.05)
    engine.dispose()
    with collector.client() as client:
        text = client.get("/metrics").text
        # The logger redelivers the landed pair long after: no second row.
        post(client, kserve_event("request", landed, _v1(1)))
        again = post(client, kserve_event("response", landed, {"predictions": [0.2]})).json()
    assert again == {"result": "logged", "predictions": 0}
    assert metric_value(text, "kpigate_collector_pairs_pruned_total", state="landed") == 1
    assert metric_value(text, "kpigate_collector_pairs_pruned_total", state="unpaired") == 1
    assert metric_value(text, "kpigate_collector_waiting_pairs") == 0
    assert len(_rows(collector.config)) == 1


def test_seldon_shadow_copies_are_logged_as_shadow_rows_under_the_served_ids(
    tmp_path: Path,
) -> None:
    """A Seldon predictor with `shadow: true` (--candidate-shadow): its events carry the served
    request's Seldon-Puid, so its pair is kept apart from the served one, its predictions are
    shadow rows under the same request ids, and one label labels both, whichever lands first:
    a label parked before either waits for the served row, and a shadow copy landing after its
    request was labelled is labelled on insert."""
    from dataclasses import replace

    from kpigate.collector.config import ArmRule

    arms = (
        ArmRule("baseline", "2", equals=(("endpoint", "baseline"),)),
        ArmRule("candidate", "3", equals=(("endpoint", "candidate"),), shadow=True),
    )
    config = replace(
        collector_config("seldon", f"sqlite:///{tmp_path / 'c.db'}", "kpigate_"), arms=arms
    )
    collector = CollectorServer(config).start()
    early, late = "tx-early-1", "tx-late-2"

    def events(puid: str, seed: int) -> dict[str, tuple[dict[str, str], bytes]]:
        body = _v1(1, seed)
        return {
            "served request": seldon_event("request", puid, body, "baseline"),
            "served response": seldon_event("response", puid, {"predictions": [0.9]}, "baseline"),
            "shadow request": seldon_event("request", puid, body, "candidate"),
            "shadow response": seldon_event("response", puid, {"predictions": [0.1]}, "candidate"),
        }

    try:
        first, second = events(early, 1), events(late, 2)
        with collector.client() as client:
            # Labelled before either copy is logged; the shadow copy lands first.
            assert (
                client.post("/feedback", json={"request_id": early, "label": 1}).json()["pending"]
                == 1
            )
            for name in ("shadow request", "shadow response", "shadow response"):
                post(client, first[name])
            assert metric_value(client.get("/metrics").text, "kpigate_collector_parked_labels") == 1
            for name in ("served response", "served request"):
                post(client, first[name])
            # The served copy first, labelled, then its shadow copy lands.
            for name in ("served request", "served response"):
                post(client, second[name])
            assert (
                client.post("/feedback", json={"request_id": late, "label": 0}).json()["joined"]
                == 1
            )
            for name in ("shadow response", "shadow request"):
                assert post(client, second[name]).status_code == 200
            text = client.get("/metrics").text
    finally:
        collector.stop()
    rows = {(r["request_id"], r["shadow"]): r for r in _rows(config)}
    assert set(rows) == {(early, False), (early, True), (late, False), (late, True)}
    assert [(rows[k]["arm"], rows[k]["model_version"], rows[k]["label"]) for k in sorted(rows)] == [
        ("baseline", "2", 1), ("candidate", "3", 1), ("baseline", "2", 0), ("candidate", "3", 0)
    ]  # fmt: skip
    decisions = "kpigate_decisions_total"
    assert metric_value(text, decisions, shadow="true", arm="candidate") == 2
    assert metric_value(text, decisions, shadow="false", arm="baseline") == 2
    outcomes = "kpigate_outcomes_total"
    assert metric_value(text, outcomes, shadow="true", segment="all", outcome="fn") == 1
    assert metric_value(text, outcomes, shadow="true", segment="all", outcome="tn") == 1
    assert metric_value(text, outcomes, shadow="false", segment="all") == 2
    assert metric_value(text, "kpigate_collector_parked_labels") == 0
    assert metric_value(text, "kpigate_collector_events_total", result="duplicate") == 1

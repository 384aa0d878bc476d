"""A KServe and a Seldon rollout judged on label KPIs, end to end: payload-log events (built
with the CloudEvents SDK as kserve/kserve pkg/logger/worker.go and SeldonIO/seldon-core v1.17.1
executor/logger/worker.go send them) into a real collector on loopback, labels on /feedback, the
matured counters scraped from /metrics by the router source (kpigate/sources/router.py) into
window records, and the gate (kpigate/engine, through the replayer) deciding on them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kpigate.collector.store import CollectorTables
from kpigate.evidence_record import WindowRecord
from kpigate.policy import Kpi, Labels, Policy, Stage
from kpigate.replay import Replayer, parse_line
from kpigate.serve.predlog import make_engine
from kpigate.sources.records import build_record
from kpigate.sources.router import RouterScrapeSource
from tests.collector_helpers import (
    CollectorServer,
    collector_config,
    kserve_event,
    post,
    seldon_event,
)
from tests.serve_fixtures import Database, metric_value, transactions

HORIZON = 3.0
# Events are stamped this far ahead (their loggers' clocks lead a little), so that a busy
# machine has LEAD + HORIZON, not HORIZON alone, to join each label before its prediction
# matures; labels carry the same stamp as labeled_at.
LEAD = 3.0
BATCH = 15


def _policy() -> Policy:
    return Policy(
        stages=(
            Stage(traffic=5, soak=2 * HORIZON, interval=HORIZON, promote_when="no_harm"),
            Stage(traffic=100, soak=2 * HORIZON, interval=HORIZON),
        ),
        labels=Labels(horizon=HORIZON, unlabeled="negative"),
        kpis=(
            Kpi(name="recall", margin=0.05, min_samples=20),
            Kpi(name="precision", margin=0.05, min_samples=20),
        ),
    )


@pytest.fixture
def collector(
    request: pytest.FixtureRequest, database: Database, tmp_path: Path
) -> Iterator[CollectorServer]:
    url = database.url or f"sqlite:///{tmp_path / 'collector.db'}"
    config = collector_config(
        request.param, url, database.prefix, label_horizon_s=HORIZON, maturity_interval_s=0.05
    )
    server = CollectorServer(config).start()
    yield server
    server.stop()
    if database.url:
        engine = make_engine(database.url)
        CollectorTables(database.prefix).drop(engine)
        engine.dispose()


def _score(arm: str, fraud: bool, candidate_misses: bool) -> float:
    if fraud and arm == "candidate" and candidate_misses:
        return 0.2
    return 0.9 if fraud else 0.1


def _kserve_pair(
    pair: str, arm: str, txs: list[dict[str, Any]], scores: list[float], at: float
) -> list[tuple[dict[str, str], bytes]]:
    endpoint = "default" if arm == "baseline" else "canary"
    if arm == "baseline":  # V1 on the default predictor
        request = {"instances": txs}
        response: dict[str, Any] = {"predictions": scores}
    else:  # V2 (Open Inference Protocol) on the canary
        request = {"inputs": [{"name": n, "shape": [len(txs)], "datatype": "BYTES",
                               "data": [t[n] for t in txs]} for n in txs[0]]}  # fmt: skip
        response = {"model_name": "fraud", "outputs": [
            {"name": "predict", "shape": [len(txs)], "datatype": "FP64", "data": scores}]}  # fmt: skip
    return [
        kserve_event("request", pair, request, endpoint, at),
        kserve_event("response", pair, response, endpoint, at + 0.004),
    ]


def _seldon_pair(
    pair: str, arm: str, txs: list[dict[str, Any]], scores: list[float], at: float
) -> list[tuple[dict[str, str], bytes]]:
    names = list(txs[0])
    request = {"data": {"names": names, "ndarray": [[t[n] for n in names] for t in txs]}}
    response = {"data": {"names": ["t:0", "t:1"], "ndarray": [[1 - s, s] for s in scores]}}
    return [
        seldon_event("request", pair, request, arm, at),
        seldon_event("response", pair, response, arm, at + 0.004),
    ]


def _rollout(
    collector: CollectorServer, candidate_misses: bool
) -> tuple[list[dict[str, Any]], Any]:
    """150 predictions, half per arm, labelled as they are logged; they mature one horizon
    later. The scrape closing window 1 is taken before the traffic, so that on a slow machine
    no prediction can mature before it: every matured count then falls in window 2, which
    reads the cohort of window 1."""
    kserve = collector.config.backend == "kserve"
    policy = _policy()
    source = RouterScrapeSource(collector.url)
    source.mark()
    # The records as the evidence file holds them (kpigate/evidence_record.py's JSON form).
    history: list[dict[str, Any]] = []
    records: list[WindowRecord] = []
    base = {"rollout": "fraud-3", "stage": 5.0}
    record = build_record(policy, source, source.collect(), records, {
        **base, "window": 1, "time": "w1", "served_from": 0.0, "served_to": HORIZON})  # fmt: skip
    records.append(record)
    history.append(record.as_json())
    txs = transactions(150, seed=11)
    labelled = 0
    with collector.client() as client:
        for i, b in enumerate(range(0, len(txs), BATCH)):
            chunk = txs[b : b + BATCH]
            arm = "baseline" if i % 2 == 0 else "candidate"
            pair = str(uuid.uuid4()) if kserve else f"puid-{b:05d}"
            frauds = [(b + j) % 3 == 0 for j in range(len(chunk))]  # a third are fraud
            scores = [_score(arm, f, candidate_misses) for f in frauds]
            at = time.time() + LEAD
            build = _kserve_pair if kserve else _seldon_pair
            request, response = build(pair, arm, chunk, scores, at)
            # Fraud is labelled (a chargeback); silence means legitimate (unlabeled: negative).
            labels = [
                # labeled_at a little after the stamp: ce-time keeps microseconds only
                {"request_id": f"{pair}:{j}", "label": 1, "labeled_at": at + 0.001}
                for j, f in enumerate(frauds)
                if f
            ]
            labelled += len(labels)
            early = i % 4 == 0  # the label arrives before the logger's events: parked
            if early:
                assert client.post("/feedback", json=labels).json()["pending"] == len(labels)
            # Every third pair: the response first; every fifth: each event delivered twice.
            order = (response, request) if i % 3 == 0 else (request, response)
            for event in order * (2 if i % 5 == 0 else 1):
                assert post(client, event).status_code == 200
            if not early:
                report = client.post("/feedback", json=labels).json()
                assert report["joined"] == len(labels), report
    deadline = time.monotonic() + 30
    with collector.client() as client:
        while True:
            text = client.get("/metrics").text
            if metric_value(text, "kpigate_matured_predictions_total", segment="all") >= len(txs):
                break
            assert time.monotonic() < deadline, "the predictions never matured"
            time.sleep(0.1)
    record = build_record(policy, source, source.collect(), records, {
        **base, "window": 2, "time": "w2", "served_from": HORIZON, "served_to": 2 * HORIZON})  # fmt: skip
    records.append(record)
    history.append(record.as_json())
    assert metric_value(text, "kpigate_outcomes_total", segment="all") == labelled
    assert metric_value(text, "kpigate_feedback_labels_total", result="joined") == labelled
    assert metric_value(text, "kpigate_decisions_total") == len(txs)
    replayer = Replayer(policy)
    decisions = [replayer.feed(parse_line(json.dumps(r))) for r in history]
    return history, decisions


@pytest.mark.parametrize("collector", ["kserve"], indirect=True)
def test_a_kserve_canary_missing_fraud_is_rolled_back_on_recall(
    collector: CollectorServer,
) -> None:
    history, decisions = _rollout(collector, candidate_misses=True)
    assert history[0]["pending"] == {"window": 1, "matures_at": 2 * HORIZON}
    assert "recall" not in history[0]["kpis"]
    # The cohort of window 1, read from the matured counters: every fraud is counted.
    recall = history[1]["kpis"]["recall"]
    assert recall["baseline"]["successes"] == recall["baseline"]["trials"] > 20
    assert recall["candidate"]["successes"] == 0 and recall["candidate"]["trials"] > 20
    assert decisions[0].decision.value == "hold"
    final = decisions[1]
    assert (final.decision.value, final.cause.value) == ("rollback", "harm"), final.reasons
    assert any("recall" in reason for reason in final.reasons)


@pytest.mark.parametrize("collector", ["seldon"], indirect=True)
def test_a_seldon_candidate_as_good_as_the_baseline_is_promoted(
    collector: CollectorServer,
) -> None:
    history, decisions = _rollout(collector, candidate_misses=False)
    recall = history[1]["kpis"]["recall"]
    assert recall["candidate"]["successes"] == recall["candidate"]["trials"] > 20
    precision = history[1]["kpis"]["precision"]
    assert precision["candidate"]["successes"] == precision["candidate"]["trials"]
    final = decisions[1]
    assert final.decision.value == "promote", final.reasons

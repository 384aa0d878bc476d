"""`kpigate traffic` against a real router: predictions flow, labels arrive late and join."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from kpigate import traffic
from kpigate.fraud.schema import ENTITY_KEY, FEATURES, LABEL
from tests.serve_fixtures import RouterServer, metric_value


def test_generator_matches_the_schema_and_is_seeded() -> None:
    rows = list(traffic.generate_transactions(3000, seed=1))
    assert rows == list(traffic.generate_transactions(3000, seed=1))
    assert set(rows[0]) == {ENTITY_KEY, LABEL, *FEATURES}
    rate = sum(r[LABEL] for r in rows) / len(rows)
    assert 0.005 < rate < 0.04, f"fraud rate {rate:.3f}"


def test_replay_posts_predictions_and_delayed_labels(
    start_router: Callable[..., RouterServer],
) -> None:
    router = start_router(initial_weight=50.0)
    opts = traffic.TrafficOptions(
        url=router.url,
        count=300,
        rate=1000,
        concurrency=8,
        fraud_delay_s=0.2,
        maturity_s=0.5,
        progress=False,
    )
    summary = asyncio.run(traffic.replay(opts))
    assert (summary.sent, summary.ok, dict(summary.failed)) == (300, 300, {})
    assert summary.labels_posted == 300 and summary.labels_pending == 0
    assert summary.feedback["joined"] == 300
    assert set(summary.arms) == {"baseline", "candidate"}
    with router.client() as client:
        text = client.get("/metrics").text
    assert metric_value(text, "kpigate_outcomes_total", segment="all") == 300
    assert metric_value(text, "kpigate_label_lag_seconds_count") == 300


def test_cli_prints_a_summary_and_writes_json(
    start_router: Callable[..., RouterServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    router = start_router()
    parser = argparse.ArgumentParser()
    traffic.add_arguments(parser)
    out = tmp_path / "summary.json"
    args = parser.parse_args(
        ["--url", router.url, "--count", "50", "--rate", "0", "--no-labels", "--json", str(out)]
    )
    assert traffic.run(args) == 0
    assert "50 sent, 50 ok" in capsys.readouterr().out
    assert json.loads(out.read_text())["ok"] == 50


def test_cli_reports_an_unreachable_router(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    traffic.add_arguments(parser)
    args = parser.parse_args(["--url", "http://127.0.0.1:9", "--count", "3", "--quiet"])
    assert traffic.run(args) == 1
    assert "is the router at http://127.0.0.1:9 up?" in capsys.readouterr().err

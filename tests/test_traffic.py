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


def test_delays_file_round_trips_and_refuses_bad_delays(tmp_path: Path) -> None:
    path = str(tmp_path / "delays.json")
    traffic.write_delays(path, 12.5, 31.25)
    assert traffic.read_delays(path) == (12.5, 31.25)
    (tmp_path / "delays.json").write_text('{"fraud_delay": -1, "maturity": 3}')
    with pytest.raises(ValueError, match=">= 0"):
        traffic.read_delays(path)
    with pytest.raises(ValueError, match="cannot read"):
        traffic.read_delays(str(tmp_path / "missing.json"))


def test_sighup_changes_the_label_delays_of_later_predictions_only(
    start_router: Callable[..., RouterServer], tmp_path: Path
) -> None:
    """The replayer starts with labels 10 minutes late, so none is due; after the file says 0.1 s
    and SIGHUP, labels of later predictions arrive while those scheduled before keep their time
    (still pending when the replay stops, --no-wait)."""
    import signal
    import subprocess
    import sys
    import time

    router = start_router()
    delays = tmp_path / "delays.json"
    summary_path = tmp_path / "summary.json"
    command = [sys.executable, "-m", "kpigate.cli", "traffic", "--url", router.url,
               "--count", "100000", "--rate", "50", "--fraud-delay", "600", "--maturity", "600",
               "--no-wait", "--quiet", "--json", str(summary_path), "--delays-file", str(delays)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def labels_joined() -> float:
        with router.client() as client:
            return metric_value(client.get("/metrics").text, "kpigate_label_lag_seconds_count")

    def served() -> float:
        with router.client() as client:
            return metric_value(client.get("/metrics").text, "kpigate_decisions_total")

    try:
        deadline = time.monotonic() + 120  # a bound on waiting, not a timed assertion
        while served() < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert served() >= 20 and labels_joined() == 0  # 600 s: nothing is due yet
        traffic.write_delays(str(delays), 0.1, 0.1)
        process.send_signal(signal.SIGHUP)
        while labels_joined() < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert labels_joined() >= 20
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    summary = json.loads(summary_path.read_text())
    assert summary["labels_posted"] >= 20, err
    assert summary["labels_pending"] >= 20  # scheduled before the SIGHUP: still 600 s away
    assert summary["feedback"]["joined"] == summary["labels_posted"]

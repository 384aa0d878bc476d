"""`kpigate status`: the evidence replayed through the engine, as text, JSON and gate metrics,
from a local file and from an Argo rollout's MLflow artifacts; `--watch` and a real scrape."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kpigate.cli import main
from kpigate.control import Order, write_order
from kpigate.evidence_record import parse_record
from kpigate.observability.gate_metrics import SERIES, exposition, start_server
from kpigate.policy import load_policy
from kpigate.registry.mlflow import MlflowRegistry
from kpigate.replay import Replayer, decision_record, replay_lines
from kpigate.status import GateStatus, StatusError, read_status, render_text, watch
from kpigate.store.mlflow import MlflowStore
from tests.mlflow_fixtures import RegisteredModels
from tests.prometheus_fixtures import PrometheusServer
from tests.serve_fixtures import free_port
from tests.trail_helpers import POLICY, WINDOWS


def _windows(rollout: str) -> list[str]:
    return [line for line in WINDOWS.read_text().splitlines() if f'"rollout":"{rollout}"' in line]


def _evidence(tmp_path: Path, rollout: str, upto: int | None = None, name: str = "") -> Path:
    path = tmp_path / (name or f"{rollout}.jsonl")
    path.write_text("\n".join(_windows(rollout)[:upto]) + "\n")
    return path


def _replayed(rollout: str, upto: int | None = None) -> dict:  # type: ignore[type-arg]
    """What `kpigate replay` says about the same windows: the reference."""
    *_, (_, _, last) = replay_lines(_windows(rollout)[:upto], Replayer(load_policy(POLICY)))
    return decision_record(rollout, last)


def test_status_of_a_rolled_back_rollout_is_the_engines_decision_per_kpi(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evidence = _evidence(tmp_path, "bad")
    assert main(["status", "--policy", str(POLICY), "--evidence", str(evidence)]) == 0
    text = capsys.readouterr().out
    reference = _replayed("bad")
    assert text.splitlines()[0] == (
        f"rollout bad: stage 25%, window {reference['window']} (look {reference['look']} of the "
        "stage, 0 of 6 holds), ROLLBACK (final)"
    )
    recall = next(line for line in text.splitlines() if line.strip().startswith("recall "))
    lo, hi = reference["kpis"]["recall"]["ci"]
    assert f"[{lo:+.4g}, {hi:+.4g}]" in recall and " fail " in recall
    assert f"{reference['kpis']['recall']['estimate']:+.4g}" in recall
    # an inconclusive KPI says what it waits for; a settled one does not
    auc = next(line for line in text.splitlines() if line.strip().startswith("auc "))
    assert "not yet shown non-inferior" in auc
    assert recall.rstrip().endswith(" -")
    assert main(["status", "--policy", str(POLICY), "--evidence", str(evidence), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(reference))


def test_status_mid_rollout_shows_the_soak_burn_in_and_a_pause(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    _evidence(state, "good", upto=1, name="fraud-3.jsonl")
    write_order(state, "fraud", Order("pause", "alice", "t"))
    flags = ["status", "--policy", str(POLICY), "--model-name", "fraud", "--state-dir", str(state)]
    assert main(flags) == 0
    text = capsys.readouterr().out
    assert "stage 5%, window 1" in text and "HOLD" in text
    assert "soaking: look 1 of" in text
    assert "PAUSED by alice" in text
    # no cohort has matured after one window: the label KPIs say when the first one does
    recall = next(line for line in text.splitlines() if line.strip().startswith("recall "))
    assert "waiting for labels: no cohort has matured yet; the cohort of window 1 matures at " \
        "2026-03-01 09:30:00 UTC" in recall  # fmt: skip
    assert f"evidence: {state / 'fraud-3.jsonl'} (1 window)" in text
    # the first matured cohort (window 1's, judged at window 3) has too few labels
    _evidence(state, "good", upto=3, name="fraud-3.jsonl")
    assert main(flags) == 0
    assert "burn-in: 96 of 100 candidate samples" in capsys.readouterr().out


def test_bad_input_exits_2_with_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["status", "--policy", str(POLICY)]
    assert main([*base, "--model-name", "fraud", "--state-dir", str(tmp_path)]) == 2
    assert "no evidence of 'fraud'" in capsys.readouterr().err
    both = tmp_path / "both.jsonl"
    both.write_text(WINDOWS.read_text())
    assert main([*base, "--evidence", str(both)]) == 2
    assert "pick one with --rollout" in capsys.readouterr().err
    assert main([*base, "--evidence", str(both), "--rollout", "good"]) == 0
    capsys.readouterr()
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text('{"window": 1, "stage": 5, "kpis": {"recall": 3}}\n')
    assert main([*base, "--evidence", str(corrupt)]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert main([*base]) == 2


def test_gate_metrics_carry_stage_decision_and_each_kpis_bounds(tmp_path: Path) -> None:
    status = read_status(load_policy(POLICY), str(_evidence(tmp_path, "bad")))
    reference = _replayed("bad")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition([status]))
        for s in family.samples
    }
    names = {name for name, _ in samples}
    assert names == set(SERIES)
    r = (("rollout", "bad"),)
    assert samples[("kpigate_gate_stage_percent", r)] == 25
    assert samples[("kpigate_gate_decision", (("decision", "rollback"), *r))] == 1
    assert samples[("kpigate_gate_decision", (("decision", "hold"), *r))] == 0
    assert samples[("kpigate_gate_final", r)] == 1
    recall = (("kpi", "recall"), *r)
    lo, hi = reference["kpis"]["recall"]["ci"]  # rounded to 6 significant digits there
    assert samples[("kpigate_gate_kpi_lower", recall)] == pytest.approx(lo, rel=1e-5)
    assert samples[("kpigate_gate_kpi_upper", recall)] == pytest.approx(hi, rel=1e-5)
    assert samples[("kpigate_gate_kpi_verdict", (("kpi", "recall"), *r, ("verdict", "fail")))] == 1


def test_watch_redraws_when_a_window_arrives_and_stops_at_the_final_decision(
    tmp_path: Path,
) -> None:
    policy = load_policy(POLICY)
    lines = _windows("bad")
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines[:5]) + "\n")
    shown: list[GateStatus] = []

    def next_window(seconds: float) -> None:  # the runner appends while status sleeps
        done = len(path.read_text().splitlines())
        path.write_text("\n".join(lines[: done + 1]) + "\n")

    watch(lambda: read_status(policy, str(path)), shown.append, 1.0, sleep=next_window)
    assert [s.windows for s in shown] == list(range(5, len(lines) + 1))
    assert shown[-1].decision.final and "ROLLBACK" in render_text(shown[-1])


def test_status_reads_an_argo_rollouts_evidence_from_mlflow_artifacts(
    registered_models: RegisteredModels, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"mlflow://models/{registered_models.name}/2/status-test-{time.time_ns()}"
    store = MlflowStore(uri, MlflowRegistry(registered_models.tracking_uri))
    for line in _windows("bad")[:3]:
        store.append(parse_record(line))
    argv = ["status", "--policy", str(POLICY), "--evidence", uri,
            "--tracking-uri", registered_models.tracking_uri]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.startswith("rollout bad: stage 5%, window 3")
    assert f"evidence: {uri} (3 windows)" in text


def test_prometheus_scrapes_the_gate_state(tmp_path: Path, prometheus: PrometheusServer) -> None:
    policy = load_policy(POLICY)
    path = _evidence(tmp_path, "bad")  # recall has bounds (early windows are in burn-in)
    port = free_port()
    server, thread = start_server(lambda: read_status(policy, str(path)), port)
    try:
        assert "kpigate_gate_up 1.0" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
        prometheus.scrape(f"127.0.0.1:{port}")
        result = prometheus.wait_for('kpigate_gate_kpi_lower{kpi="recall"}', lambda r: len(r) == 1)
        assert result[0]["metric"]["job"] == "kpigate-router"
        path.write_text("{not json\n")  # the evidence breaks: up 0, nothing else
        prometheus.wait_for("kpigate_gate_up", lambda r: r and r[0]["value"][1] == "0")
    finally:
        server.shutdown()  # type: ignore[attr-defined]
        thread.join(5)


def test_read_status_refuses_an_empty_store(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(StatusError, match="no windows of evidence yet"):
        read_status(load_policy(POLICY), str(empty))

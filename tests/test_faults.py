"""Faults injected into real processes: the rollout holds on missing evidence, survives a killed
runner, refuses a second rollout of the same model, and fails clearly when MLflow is down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from kpigate.backends import BackendSettings, make_backend
from kpigate.engine import Decision
from kpigate.policy import policy_from_dict
from kpigate.registry.base import CANDIDATE, CHAMPION, RegistryUnavailable
from kpigate.registry.mlflow import MlflowRegistry
from kpigate.registry.server import MlflowServer
from kpigate.runner import LocalRunner, model_lock
from kpigate.sources.prometheus import PrometheusSource
from kpigate.sources.router import RouterScrapeSource
from kpigate.steps.evaluate_gate import judge_evidence
from kpigate.steps.soak_and_collect import soak
from kpigate.store.file import FileStore
from tests.prometheus_fixtures import PrometheusServer
from tests.serve_fixtures import ADMIN_TOKEN, FixedModel, constant
from tests.test_runner import Traffic

HOLDING = {
    "max_holds": 2,
    "on_max_holds": "rollback",
    "stages": [{"traffic": 50, "soak": "1s", "interval": "0.5s"}, {"traffic": 100}],
    "kpis": [{"name": "recall", "min_samples": 10}],
}


def judge_looks(source: Any, store: FileStore, looks: int) -> list[Decision]:
    policy = policy_from_dict(HOLDING)
    decisions = []
    for n in range(1, looks + 1):
        soak(policy, store, source, 50, looks=n, interval_s=0.0, rollout="r")
        decisions.append(judge_evidence(policy, store.read(), 50).decision)
    return decisions


def test_prometheus_down_holds_then_takes_the_timeout_action(tmp_path: Path) -> None:
    decisions = judge_looks(PrometheusSource("http://127.0.0.1:9"), FileStore(tmp_path / "e"), 4)
    # Look 2 ends the soak (hold 1 past it), look 3 is hold 2 (max_holds), then the policy's
    # timeout action; never a promotion, never a rollback before the limit.
    assert decisions == [Decision.HOLD] * 3 + [Decision.ROLLBACK]
    records = FileStore(tmp_path / "e").read()
    assert all(r.stale and "unreachable" in r.note for r in records)


def test_prometheus_returning_nothing_holds(prometheus: PrometheusServer, tmp_path: Path) -> None:
    source = PrometheusSource(prometheus.url, matchers='instance="nowhere:1"')
    decisions = judge_looks(source, FileStore(tmp_path / "e"), 3)
    assert decisions == [Decision.HOLD] * 3
    assert FileStore(tmp_path / "e").read()[-1].note == "no router samples in Prometheus"


@pytest.fixture
def small_registry(tmp_path: Path) -> Iterator[tuple[MlflowServer, str]]:
    """A dedicated MLflow server (it gets stopped), with champion v1 and candidate v2."""
    server = MlflowServer(tmp_path / "mlflow")
    server.start()
    client = MlflowClient(tracking_uri=server.tracking_uri, registry_uri=server.tracking_uri)
    client.create_registered_model("faults")
    experiment = client.create_experiment("faults")
    for alias in (CHAMPION, CANDIDATE):
        run = client.create_run(experiment)
        version = client.create_model_version(
            "faults", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
        )
        client.set_registered_model_alias("faults", alias, version.version)
    try:
        yield server, "faults"
    finally:
        server.stop()


@pytest.mark.slow
def test_mlflow_down_is_retried_then_fails_clearly_and_moves_nothing(
    small_registry: tuple[MlflowServer, str],
    start_router: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, name = small_registry
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    router = start_router()
    registry = MlflowRegistry(server.tracking_uri)
    sleeps: list[float] = []
    runner = LocalRunner(
        policy=policy_from_dict({**HOLDING, "registry": {"approval_alias": "candidate",
                                                         "require_signature_match": False}}),
        registry=registry,
        backend=make_backend(BackendSettings(router_url=router.url, admin_token=ADMIN_TOKEN)),
        source=RouterScrapeSource(router.url),
        store=FileStore(tmp_path / "evidence.jsonl"),
        model_name=name,
        rollout_id="faults",
        sleep=sleeps.append,
    )  # fmt: skip
    server.stop()
    with pytest.raises(RegistryUnavailable, match="registry-approval failed after 4 attempts"):
        runner.run("2")
    assert sleeps == [1.0, 2.0, 4.0]  # the backoff
    assert router.admin().get("/admin/state").json()["weight"] == 0  # no traffic moved
    # Promotion with the registry down: the alias is never half-moved; it stays where it was.
    with pytest.raises(RegistryUnavailable, match="promotion"):
        runner._registry(lambda: runner.registry.set_alias(name, CHAMPION, "2"), "promotion")
    server.start()
    assert MlflowRegistry(server.tracking_uri).resolve(name, CHAMPION).version == "1"


RESUMABLE = {
    "name": "resume",
    "holdback": 5,
    "stages": [{"traffic": t, "soak": "1.5s", "interval": "0.5s"} for t in (5, 25, 50, 100)],
    "kpis": [{"name": "error_rate", "direction": "lower", "margin": 0.05, "min_samples": 5}],
    "registry": {"require_signature_match": False},
}


def rollout_command(policy: Path, uri: str, router_url: str, state: Path) -> list[str]:
    return [sys.executable, "-m", "kpigate.cli", "rollout", "--policy", str(policy),
            "--model-name", "faults", "--tracking-uri", uri, "--router-url", router_url,
            "--state-dir", str(state)]  # fmt: skip


@pytest.mark.slow
def test_a_runner_killed_mid_stage_resumes_without_repeating_or_skipping_a_stage(
    small_registry: tuple[MlflowServer, str], start_router: Any, tmp_path: Path
) -> None:
    server, _ = small_registry
    models = {"champion": FixedModel("1", score=constant(0.2)),
              "candidate": FixedModel("2", score=constant(0.2))}  # fmt: skip
    router = start_router(models)
    policy = tmp_path / "policy.yaml"
    policy.write_text(__import__("yaml").safe_dump(RESUMABLE))
    state = tmp_path / "state"
    evidence = state / "faults-2.jsonl"
    command = rollout_command(policy, server.tracking_uri, router.url, state)
    env = {**os.environ, "KPIGATE_ADMIN_TOKEN": ADMIN_TOKEN}
    with Traffic(router):
        first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill it in the middle of the 25% stage
            stages = [r.stage for r in FileStore(evidence).read()] if evidence.exists() else []
            if stages.count(25) >= 2:
                break
            time.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        before = FileStore(evidence).read()
        assert any(r.stage == 25 for r in before) and not any(r.stage == 50 for r in before)
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "PROMOTE" in second.stdout
    after = FileStore(evidence).read()
    assert after[: len(before)] == before  # nothing rewritten
    windows = [r.window for r in after]
    assert windows == list(range(1, len(after) + 1))  # no window repeated or lost
    stages = [r.stage for r in after]
    assert stages == sorted(stages) and set(stages) == {5, 25, 50, 100}  # each stage once, in order
    assert stages.count(5) == [r.stage for r in before].count(5)  # the 5% stage not redone
    assert MlflowRegistry(server.tracking_uri).resolve("faults", CHAMPION).version == "2"


def test_a_second_rollout_of_the_same_model_is_refused(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(__import__("yaml").safe_dump(RESUMABLE))
    with model_lock(tmp_path / "state", "faults"):
        done = subprocess.run(
            rollout_command(policy, "http://127.0.0.1:9", "http://127.0.0.1:9", tmp_path / "state"),
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
        )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "a rollout of 'faults' is already running (pid" in done.stderr

"""The stumbles of issue 14, each as a new user met it: a rollout without the admin token, an
unknown version on a file-based registry, `audit show | head`, the trail followed as it grows,
and environment variables a command reads but its --help did not name."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from kpigate.audit import read_records
from kpigate.audit_cli import follow
from kpigate.cli import main
from kpigate.registry.base import ModelNotFound
from kpigate.registry.mlflow import MlflowRegistry
from tests.trail_helpers import EXAMPLES, replayed_trail

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("scheme", ["sqlite", "file"])
def test_an_unknown_version_on_a_file_based_registry_lists_the_versions(
    scheme: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's local stores give ModelVersion.version as an int (mlflow/store/model_registry/
    dbmodels/models.py: `version = Column(Integer)`; file_store.py reads it with int()), the REST
    store as a str: `_versions_hint` joined the ints and raised TypeError."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps ./mlruns opt-in
    uri = (
        f"sqlite:///{tmp_path / 'mlflow.db'}"
        if scheme == "sqlite"
        else (tmp_path / "mlruns").as_uri()
    )
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("fraud")
    for _ in range(2):
        client.create_model_version("fraud", str(tmp_path / "model"), run_id=None)
    with pytest.raises(ModelNotFound, match=r"has no version 99; latest versions: 1, 2$"):
        MlflowRegistry(uri).resolve("fraud", "99")


def test_a_rollout_without_the_admin_token_says_which_variable_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KPIGATE_ADMIN_TOKEN", raising=False)
    state = tmp_path / "state"
    argv = ["rollout", "--policy", str(EXAMPLES / "demo-policy.yaml"), "--model-name", "fraud",
            "--tracking-uri", "http://127.0.0.1:9", "--state-dir", str(state)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "KPIGATE_ADMIN_TOKEN" in err and "Traceback" not in err
    assert not state.exists()  # no lock, no evidence, no trail


def test_audit_show_into_head_ends_quietly(tmp_path: Path) -> None:
    trail = tmp_path / "trail.jsonl"
    replayed_trail(trail)
    done = subprocess.run(
        f"{sys.executable} -m kpigate.cli audit show --kpis {trail} | head -n 2",
        shell=True, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert len(done.stdout.splitlines()) == 2
    assert done.stderr == "", done.stderr  # no BrokenPipeError traceback


def test_follow_prints_new_records_and_ends_with_the_rollout(tmp_path: Path) -> None:
    full = tmp_path / "full.jsonl"
    replayed_trail(full, ("bad",))
    lines = full.read_bytes().splitlines(keepends=True)
    growing = tmp_path / "trail.jsonl"  # the runner is two records in when we start following
    growing.write_bytes(b"".join(lines[:2]))

    def runner_writes_on(seconds: float) -> None:
        done = len(growing.read_bytes().splitlines())
        growing.write_bytes(b"".join(lines[: done + 3]) + b'{"torn": ')  # a write in progress

    with contextlib.redirect_stdout(io.StringIO()) as buffer:
        assert follow(str(growing), "bad", with_kpis=True, sleep=runner_writes_on) == 0
    out = buffer.getvalue().splitlines()
    records = read_records(full)
    assert len([line for line in out if line.startswith("#")]) == len(records)
    assert "ROLLBACK" in out[-1] and "window" not in out[-1]  # the rollback action ends it


def test_follow_waits_for_a_trail_that_does_not_exist_yet(tmp_path: Path) -> None:
    assert (
        follow(str(tmp_path / "later.jsonl"), None, False, sleep=lambda s: None, max_polls=3) == 0
    )


def _names_read(path: Path) -> set[str]:
    """Environment variables a module reads: env.get("X"), read_secret(env, "X"), *_ENV = "X"."""
    text = path.read_text()
    found = set(
        re.findall(r'(?:env\.get|read_secret\(env,|_number\(env,)\(?\s*"([A-Z][A-Z0-9_]+)"', text)
    )
    found |= set(re.findall(r'_ENV = "([A-Z][A-Z0-9_]+)"', text))
    return found


@pytest.mark.parametrize("command", ["rollout", "demo"])
def test_every_variable_a_rollout_reads_is_in_its_help(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    read = _names_read(ROOT / "kpigate/notify/factory.py")
    read |= _names_read(ROOT / "kpigate/observability/annotations.py")
    assert {"SLACK_WEBHOOK_URL", "PAGERDUTY_ROUTING_KEY", "KPIGATE_GRAFANA_URL"} <= read
    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = capsys.readouterr().out
    extra = {"KPIGATE_ADMIN_TOKEN"} | ({"KPIGATE_AUDIT_KEY"} if command == "rollout" else set())
    for name in read | extra:
        stem = name.removesuffix("_FILE")
        # the NOTIFY_* family and the Slack API/PD events URLs are named as a family
        family = stem.startswith(("KPIGATE_NOTIFY_", "SLACK_API", "PAGERDUTY_EVENTS",
                                  "KPIGATE_GRAFANA_DASHBOARD"))  # fmt: skip
        assert stem in help_text or (family and "docs/operators-local.md" in help_text), name
    doc = (ROOT / "docs/operators-local.md").read_text()
    for name in read | {"KPIGATE_ADMIN_TOKEN", "KPIGATE_ACTOR", "MLFLOW_TRACKING_URI",
                        "KPIGATE_AUDIT_KEY"}:  # fmt: skip
        assert name in doc, name

"""`kpigate demo`, the main job: the recorded replay, and the live 'bad' scenario end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kpigate.audit import verify


def test_recorded_demo_replays_both_scenarios() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kpigate.cli", "demo", "--recorded"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "promoted to 100%: the candidate is champion" in done.stdout
    assert "rolled back: the baseline kept serving" in done.stdout


TOKEN = "admin-token-never-logged-5b1e"
SECRET = "webhook-secret-never-logged-93aa"


@pytest.mark.slow
def test_live_bad_scenario_rolls_back_on_real_parts(tmp_path: Path) -> None:
    """MLflow server, router, relay, webhook, runner, traffic: the bad candidate is rolled back,
    every request is answered, the audit trail verifies, the report is written, and neither
    secret appears in any output, log, report, notification or trail."""
    env = {**os.environ, "KPIGATE_ADMIN_TOKEN": TOKEN, "KPIGATE_WEBHOOK_SECRET": SECRET}
    done = subprocess.run(
        [sys.executable, "-m", "kpigate.cli", "demo", "--scenario", "bad",
         "--workdir", str(tmp_path)],
        capture_output=True, text=True, check=False, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "bad: ROLLBACK" in done.stdout
    assert ", 0 failed," in done.stdout  # the baseline kept serving throughout
    assert verify(tmp_path / "audit.jsonl").ok
    assert (tmp_path / "report-bad.html").read_text().count("<svg") >= 2
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "mlflow" not in p.parts]
    assert {p.name for p in written} >= {"router.log", "audit.jsonl", "notifications.log"}
    for text in [done.stdout, done.stderr, *(p.read_text(errors="replace") for p in written)]:
        assert TOKEN not in text and SECRET not in text
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "the demo left processes running"

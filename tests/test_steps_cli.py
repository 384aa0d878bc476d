"""The step entry points as Argo runs them (python -m kpigate.steps.<step>), on real servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from kpigate.audit import verify
from kpigate.evidence_record import parse_record
from kpigate.registry.mlflow import MlflowRegistry
from tests.serve_fixtures import ADMIN_TOKEN

EXAMPLES = Path(__file__).resolve().parent.parent / "kpigate" / "examples"


def step(name: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"kpigate.steps.{name}", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )  # fmt: skip


@pytest.mark.slow
def test_gate_then_rollback_record_the_rollout_in_the_registry(
    mlflow_server: str, start_router: Any, tmp_path: Path
) -> None:
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    client.create_registered_model("steps-cli")
    run = client.create_run(client.create_experiment("steps-cli"))
    version = client.create_model_version(
        "steps-cli", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    ).version
    # The recorded "bad" rollout of the case study is this rollout's evidence.
    evidence = tmp_path / "evidence.jsonl"
    lines = (EXAMPLES / "fraud-rollout.jsonl").read_text().splitlines()
    bad = [line for line in lines if '"rollout":"bad"' in line]
    evidence.write_text("".join(line + "\n" for line in bad))
    policy = str(EXAMPLES / "policy.yaml")
    out = tmp_path / "out"

    gate = step("evaluate_gate", "--policy", policy, "--evidence", str(evidence), "--stage", "25",
                "--out-dir", str(out), "--model-name", "steps-cli", "--model-version", version,
                "--rollout-id", "wf-abc12")  # fmt: skip
    assert gate.returncode == 0, gate.stderr
    assert "CRITICAL" in gate.stderr.upper() and "wf-abc12" in gate.stderr  # notified
    assert (out / "decision").read_text() == "rollback"
    # The explanation is a log line, not an output (it bloated the workflow status).
    assert not (out / "explanation.json").exists()
    explanation = next(line for line in gate.stdout.splitlines() if line.startswith("{"))
    assert json.loads(explanation)["kpis"]["recall"]["verdict"] == "fail"

    router = start_router()
    done = step(
        "promote_or_rollback", "--action", "rollback", "--model-name", "steps-cli",
        "--model-version", version, "--evidence", str(evidence), "--policy", policy,
        "--rollout-id", "wf-abc12", "--tracking-uri", mlflow_server, "--router-url", router.url,
        KPIGATE_ADMIN_TOKEN=ADMIN_TOKEN, KPIGATE_ACTOR="argo:wf-abc12",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"audit trail of {len(bad)} windows attached" in done.stdout
    assert router.admin().get("/admin/state").json()["detached"] is True
    tags = MlflowRegistry(mlflow_server).get_tags("steps-cli", version)
    assert tags["kpigate.rollout"] == "rolled_back"
    # A decision per window, the rollback and its notification.
    assert tags["kpigate.audit.records"] == str(len(bad) + 2)
    trail = MlflowRegistry(mlflow_server).download_artifact(
        "steps-cli", version, tags["kpigate.audit.artifact"], str(tmp_path / "dl")
    )
    check = verify(trail, expect_head=tags["kpigate.audit.head"])
    assert check.ok, check.problems
    assert "argo:wf-abc12" in Path(trail).read_text()
    assert "CRITICAL" in (done.stdout + done.stderr).upper()  # the console notification


@pytest.mark.slow
def test_argo_retry_after_a_rollback_cannot_resume_the_rollout(
    mlflow_server: str, start_router: Any, tmp_path: Path
) -> None:
    """`argo retry` keeps the workflow's name and its Succeeded deploy nodes and reruns the
    failed ones (FormulateRetryWorkflow, argo-workflows v3.7.10 workflow/util/util.go): after the
    rollback set the candidate to 0% and detached it, the retried deploy or soak must refuse
    (exit 3, not retried), while a new rollout (`argo resubmit`: a new name) may go ahead."""
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    client.create_registered_model("steps-retry")
    run = client.create_run(client.create_experiment("steps-retry"))
    version = client.create_model_version(
        "steps-retry", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    ).version
    router = start_router()
    common = {"MLFLOW_TRACKING_URI": mlflow_server, "KPIGATE_ADMIN_TOKEN": ADMIN_TOKEN}
    uri = ("--tracking-uri", mlflow_server)  # explicit: other tests may leave MLFLOW_* set
    done = step("promote_or_rollback", "--action", "rollback", "--model-name", "steps-retry",
                "--model-version", version, "--rollout-id", "wf-retry1", "--reason", "harm",
                "--router-url", router.url, *uri, **common)  # fmt: skip
    assert done.returncode == 0, done.stderr
    deploy = ("deploy_stage", "--model-name", "steps-retry", "--model-version", version,
              "--weight", "25", "--router-url", router.url, *uri)  # fmt: skip
    retried = step(*deploy, "--rollout-id", "wf-retry1", **common)
    assert retried.returncode == 3, retried.stdout + retried.stderr
    assert "argo resubmit" in retried.stderr
    assert router.admin().get("/admin/state").json()["weight"] == 0
    soak = step("soak_and_collect", "--policy", str(EXAMPLES / "policy.yaml"), "--stage", "25",
                "--evidence", str(tmp_path / "ev.jsonl"), "--model-name", "steps-retry",
                "--model-version", version, "--rollout-id", "wf-retry1", "--router-url", router.url,
                *uri, **common)  # fmt: skip
    assert soak.returncode == 3, soak.stdout + soak.stderr
    assert not (tmp_path / "ev.jsonl").exists()  # no window measured on a detached candidate
    fresh = step(*deploy, "--rollout-id", "wf-retry2", **common)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert router.admin().get("/admin/state").json()["weight"] == 25


@pytest.mark.slow
def test_each_decision_reaches_the_audit_trail_when_it_is_made(
    mlflow_server: str,
    start_router: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The Argo path: evaluate-gate appends its decision to the rollout's trail beside the
    MLflow evidence as it decides (a retry adds nothing), and promote-or-rollback only adds the
    action: each decision carries the time it was made, not the end of the rollout's."""
    from kpigate.audit import HEAD_TAG
    from kpigate.steps import evaluate_gate, promote_or_rollback
    from kpigate.store import open_store

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    client.create_registered_model("steps-trail")
    run = client.create_run(client.create_experiment("steps-trail"))
    version = client.create_model_version(
        "steps-trail", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    ).version
    uri = f"mlflow://models/steps-trail/{version}/wf-trail1"
    store = open_store(uri, mlflow_server)
    lines = (EXAMPLES / "fraud-rollout.jsonl").read_text().splitlines()
    windows = [parse_record(line) for line in lines if '"rollout":"bad"' in line]
    policy = str(EXAMPLES / "policy.yaml")
    gate = ["--policy", policy, "--evidence", uri, "--tracking-uri", mlflow_server,
            "--model-name", "steps-trail", "--model-version", version,
            "--rollout-id", "wf-trail1", "--out-dir", str(tmp_path / "out")]  # fmt: skip
    started: list[str] = []
    for window in windows:
        store.append(window)
        started.append(datetime.now(UTC).isoformat(timespec="milliseconds"))
        assert evaluate_gate.main([*gate, "--stage", str(window.stage)]) == 0
    assert evaluate_gate.main([*gate, "--stage", str(windows[-1].stage)]) == 0  # a retry
    assert "already in the audit trail" in capsys.readouterr().out

    router = start_router()
    monkeypatch.setenv("KPIGATE_ADMIN_TOKEN", ADMIN_TOKEN)
    code = promote_or_rollback.main(["--action", "rollback", "--model-name", "steps-trail",
                                     "--model-version", version, "--evidence", uri,
                                     "--policy", policy, "--rollout-id", "wf-trail1",
                                     "--tracking-uri", mlflow_server,
                                     "--router-url", router.url])  # fmt: skip
    assert code == 0
    assert "(0 replayed from the evidence)" in capsys.readouterr().out
    registry = MlflowRegistry(mlflow_server)
    tags = registry.get_tags("steps-trail", version)
    trail = registry.download_artifact(
        "steps-trail", version, tags["kpigate.audit.artifact"], str(tmp_path / "dl")
    )
    assert verify(trail, expect_head=tags[HEAD_TAG]).ok
    records = [json.loads(line) for line in Path(trail).read_text().splitlines()]
    decisions = [r for r in records if r["type"] == "decision"]
    assert len(decisions) == len({(d["window"], d["stage"]) for d in decisions}) >= 3
    assert not any(d.get("replayed") for d in decisions)
    # each decision was stamped during its own evaluate-gate call, in order
    for decision in decisions:
        index = next(i for i, w in enumerate(windows) if w.window == decision["window"])
        assert decision["time"].rstrip("Z") >= started[index][:23]
    times = [r["time"] for r in records]
    assert times == sorted(times)
    assert [r["type"] for r in records].index("action") > records.index(decisions[-1])


@pytest.mark.slow
def test_an_operator_s_choice_at_a_suspend_is_recorded_as_the_operator_s(
    mlflow_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`on_max_holds: suspend`, then the operator picks rollback at wait-for-operator: the
    template's operator-decision step (evaluate-gate --operator) records that decision in the
    trail with cause `operator` after the gate's HOLD, a retry adds nothing, and the report
    says an operator rolled back, not the gate."""
    import yaml

    from kpigate.evidence_record import record_of
    from kpigate.report import render_report
    from kpigate.steps import evaluate_gate
    from kpigate.store import open_store

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    client.create_registered_model("steps-operator")
    run = client.create_run(client.create_experiment("steps-operator"))
    version = client.create_model_version(
        "steps-operator", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    ).version
    policy = yaml.safe_load((EXAMPLES / "policy.yaml").read_text())
    assert policy["on_max_holds"] == "suspend"
    policy["max_holds"] = 0  # the first look past the soak that holds suspends
    # A one-look stage cannot wait for a cohort to mature (the policy would refuse it), and this
    # test is about the operator's choice, not about labels.
    del policy["labels"]
    policy["stages"][0]["soak"] = policy["stages"][0]["interval"]  # a soak of one look
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    uri = f"mlflow://models/steps-operator/{version}/wf-op1"
    open_store(uri, mlflow_server).append(
        record_of({"rollout": "wf-op1", "window": 1, "stage": 5, "kpis": {}, "stale": True,
                   "note": "Prometheus down"})
    )  # fmt: skip
    gate = ["--policy", str(path), "--evidence", uri, "--tracking-uri", mlflow_server,
            "--stage", "5", "--model-name", "steps-operator", "--model-version", version,
            "--rollout-id", "wf-op1"]  # fmt: skip
    out, chosen = tmp_path / "gate", tmp_path / "operator"
    assert evaluate_gate.main([*gate, "--out-dir", str(out)]) == 0
    assert (out / "suspend").read_text() == "true" and (out / "cause").read_text() == "timeout"
    for _ in range(2):  # the second time: a retried step
        assert evaluate_gate.main([*gate, "--out-dir", str(chosen), "--operator", "rollback"]) == 0
    assert "already in the audit trail" in capsys.readouterr().out
    assert (chosen / "decision").read_text() == "rollback"
    assert (chosen / "cause").read_text() == "operator"

    registry = MlflowRegistry(mlflow_server)
    tags = registry.get_tags("steps-operator", version)
    trail = registry.download_artifact(
        "steps-operator", version, tags["kpigate.audit.artifact"], str(tmp_path / "dl")
    )
    records = [json.loads(line) for line in Path(trail).read_text().splitlines()]
    decisions = [(r["decision"], r["cause"]) for r in records if r["type"] == "decision"]
    assert decisions == [("hold", "timeout"), ("rollback", "operator")]
    assert "rolled back at 5% (window 1) by an operator" in render_report(records)


def test_evaluate_gate_s_looks_output_counts_no_calibration_window(tmp_path: Path) -> None:
    """On Argo the next soak collects until the stage has `looks` windows: with the 24 A/A
    calibration windows (stage 5, like the first stage) counted, it collected 25 windows
    before the gate judged again."""
    from kpigate.steps import evaluate_gate

    arms = {"baseline": {"successes": 80, "trials": 100},
            "candidate": {"successes": 81, "trials": 100}}  # fmt: skip
    evidence = tmp_path / "evidence.jsonl"
    lines = [{"window": i, "stage": 5, "kpis": {"recall": arms}, "calibration": True}
             for i in range(-24, 0)]  # fmt: skip
    lines.append({"window": 1, "stage": 5, "kpis": {"recall": arms}})
    evidence.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    code = evaluate_gate.main(["--policy", str(EXAMPLES / "policy.yaml"), "--evidence",
                               str(evidence), "--stage", "5", "--out-dir", str(out)])  # fmt: skip
    assert code == 0
    assert (out / "decision").read_text() == "hold"
    assert (out / "looks").read_text() == "2"  # one window so far at 5%: the next makes two

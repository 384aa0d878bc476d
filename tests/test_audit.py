"""The audit trail: hash chain round trip, tamper detection, crash safety, the CLI, MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kpigate.audit import (
    GENESIS,
    HEAD_TAG,
    RECORDS_TAG,
    ROLLOUT_TAG,
    AuditTrail,
    attach_to_registry,
    policy_hash,
    read_records,
    verify,
)
from kpigate.cli import main
from tests.trail_helpers import POLICY, replayed_trail


def _trail(tmp_path: Path, n: int = 5) -> Path:
    path = tmp_path / "trail.jsonl"
    trail = AuditTrail(path)
    for i in range(n):
        trail.append({"type": "action", "rollout": "r1", "action": f"step-{i}", "n": i})
    return path


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_append_chains_records_and_verify_accepts_them(tmp_path: Path) -> None:
    path = _trail(tmp_path, 3)
    records = read_records(path)
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[0]["prev"] == GENESIS
    assert records[1]["prev"] == records[0]["hash"]
    assert records[2]["time"].endswith("Z")
    result = verify(path)
    assert result.ok, result.problems
    assert (result.records, result.head, result.torn) == (3, records[2]["hash"], False)


def test_events_cannot_set_the_chain_fields(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seq"):
        AuditTrail(tmp_path / "t.jsonl").append({"seq": 7})


def test_non_finite_numbers_are_kept_as_text(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    AuditTrail(path).append({"e": float("inf"), "x": [float("nan")]})
    assert read_records(path)[0]["e"] == "inf"
    assert verify(path).ok


def test_an_edited_field_is_a_hash_mismatch_on_its_line(tmp_path: Path) -> None:
    path = _trail(tmp_path)
    lines = _lines(path)
    record = json.loads(lines[1])
    record["action"] = "promote"
    lines[1] = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    path.write_bytes(b"".join(lines))
    result = verify(path)
    assert not result.ok
    assert len(result.problems) == 1
    assert result.problems[0].startswith("line 2 (seq 2): hash mismatch: the record was changed")


def test_an_edited_and_rehashed_record_breaks_the_next_link(tmp_path: Path) -> None:
    from kpigate.audit import record_hash

    path = _trail(tmp_path)
    lines = _lines(path)
    record = json.loads(lines[1])
    record["action"] = "promote"
    record["hash"] = record_hash(record)
    lines[1] = (json.dumps(record) + "\n").encode()
    path.write_bytes(b"".join(lines))
    (problem,) = verify(path).problems
    assert problem.startswith("line 3 (seq 3): prev ")
    assert "is not the hash of seq 2 (line 2" in problem


def test_a_deleted_record_is_a_seq_gap(tmp_path: Path) -> None:
    path = _trail(tmp_path)
    lines = _lines(path)
    del lines[2]
    path.write_bytes(b"".join(lines))
    (problem,) = verify(path).problems
    assert problem == (
        "seq 3 missing: the trail jumps from seq 2 (line 2) to seq 4 (line 3): "
        "record(s) were deleted"
    )


def test_a_deleted_first_record_is_reported(tmp_path: Path) -> None:
    path = _trail(tmp_path)
    path.write_bytes(b"".join(_lines(path)[1:]))
    (problem,) = verify(path).problems
    assert problem.startswith("seq 1 missing: the trail jumps from the start to seq 2 (line 1)")


def test_swapped_records_are_out_of_order(tmp_path: Path) -> None:
    path = _trail(tmp_path)
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    path.write_bytes(b"".join(lines))
    (problem,) = verify(path).problems
    assert problem == (
        "records out of order: line 2 holds seq 3, line 3 holds seq 2 "
        "(seq must increase line by line)"
    )


def test_a_truncated_tail_is_reported_as_torn_and_repaired_by_the_next_append(
    tmp_path: Path,
) -> None:
    path = _trail(tmp_path, 4)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 25])  # cut the last record mid-line
    result = verify(path)
    assert not result.ok and result.torn
    assert result.records == 3
    (problem,) = result.problems
    assert problem.startswith("line 4: torn last line (")
    assert "records before it are intact" in problem

    record = AuditTrail(path).append({"type": "action", "action": "after-crash"})
    assert record["seq"] == 4  # the torn record never completed, so it was never seq 4
    repaired = verify(path)
    assert repaired.ok, repaired.problems
    assert repaired.records == 4


def test_a_record_missing_only_its_newline_is_kept(tmp_path: Path) -> None:
    path = _trail(tmp_path, 3)
    path.write_bytes(path.read_bytes()[:-1])
    assert verify(path).torn
    assert AuditTrail(path).append({"action": "next"})["seq"] == 4
    assert verify(path).ok


def test_a_cut_off_end_is_caught_against_the_recorded_head(tmp_path: Path) -> None:
    path = _trail(tmp_path)
    head = verify(path).head
    assert head is not None
    path.write_bytes(b"".join(_lines(path)[:-1]))
    assert verify(path).ok  # without an anchor, removing the end is invisible
    (problem,) = verify(path, expect_head=head).problems
    assert "is not in the trail: records were removed from its end" in problem


_WRITER = """
import sys
from kpigate.audit import AuditTrail
trail = AuditTrail(sys.argv[1])
pad = "x" * 50_000  # long lines: a kill is likely to land mid-write
i = 0
while True:
    trail.append({"type": "action", "action": "tick", "i": i, "pad": pad})
    i += 1
"""


def test_sigkill_while_appending_loses_no_complete_record(tmp_path: Path) -> None:
    path = tmp_path / "trail.jsonl"
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if path.exists() and path.stat().st_size > (attempt + 1) * 1_000_000:
                break
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        result = verify(path)
        # Every complete record verifies; the only problem allowed is a torn last line.
        assert result.records >= 10
        assert [p for p in result.problems if "torn last line" not in p] == []
        seqs = [r["seq"] for r in read_records(path)]
        assert seqs == list(range(1, len(seqs) + 1))
    # The next writer repairs whatever the last kill left and continues the chain.
    AuditTrail(path).append({"action": "resume"})
    final = verify(path)
    assert final.ok, final.problems


def test_decision_event_records_evidence_rules_policy_and_versions(tmp_path: Path) -> None:
    path = tmp_path / "trail.jsonl"
    replayed_trail(path, ("bad",))
    decisions = [r for r in read_records(path) if r["type"] == "decision"]
    last = decisions[-1]
    assert last["decision"] == "rollback" and last["final"] is True
    assert last["policy"]["hash"] == policy_hash(POLICY)
    assert last["policy"]["name"] == "fraud-detector"
    assert last["model"] == {"name": "fraud", "baseline": "1", "candidate": "2"}
    assert last["actor"] == "kpigate-runner@test"
    assert last["stage"] == 25.0 and last["stage_rules"]["looks"] == 6
    recall = last["kpis"]["recall"]
    assert recall["verdict"] == "fail" and recall["action"] == "rollback"
    assert recall["rule"]["margin"] == 0.02 and recall["rule"]["direction"] == "higher"
    assert recall["ci"][1] < 0
    assert set(recall["evidence"]) >= {"e_harm", "harm_threshold"}
    assert 0 < recall["window_values"]["candidate"] < 1
    assert set(last["kpis"]) >= {"recall", "precision", "auc", "latency_p95", "fpr_gap_amount"}
    actions = [r["action"] for r in read_records(path) if r["type"] == "action"]
    assert actions == ["deploy", "deploy", "rollback"]


def test_cli_verify_exits_0_when_intact_and_1_listing_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _trail(tmp_path)
    assert main(["audit", "verify", str(path)]) == 0
    assert "intact, 5 records" in capsys.readouterr().out
    lines = _lines(path)
    del lines[1]
    path.write_bytes(b"".join(lines))
    assert main(["audit", "verify", str(path)]) == 1
    err = capsys.readouterr().err
    assert "NOT intact" in err and "seq 2 missing" in err


def test_cli_show_prints_the_decision_trail_of_one_rollout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "trail.jsonl"
    replayed_trail(path)
    assert main(["audit", "show", str(path), "--rollout", "good"]) == 0
    out = capsys.readouterr().out
    assert "window 14 @ 50%  HOLD" in out and "latency_p95" in out
    assert "PROMOTE (final)" in out and " bad " not in out
    assert "routine soaking looks not shown" in out and "chain: intact" in out
    assert main(["audit", "show", str(path), "--rollout", "nope"]) == 2


@pytest.mark.slow
def test_attach_to_registry_logs_the_trail_and_tags_the_version(
    tmp_path: Path, mlflow_server: str
) -> None:
    from mlflow.tracking import MlflowClient

    from kpigate.registry.mlflow import MlflowRegistry

    # A model of its own: the shared registered model's aliases and tags stay untouched.
    client = MlflowClient(mlflow_server)
    experiment = client.create_experiment(f"audit-attach-{time.time_ns()}")
    run = client.create_run(experiment)
    name = f"kpigate-audit-{time.time_ns()}"
    client.create_registered_model(name)
    mv = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)

    path = tmp_path / "trail.jsonl"
    replayed_trail(path, ("good",))
    registry = MlflowRegistry(mlflow_server)
    result = attach_to_registry(registry, name, mv.version, path, "good")
    assert result.ok
    tags = registry.get_tags(name, mv.version)
    assert tags[RECORDS_TAG] == str(result.records)
    assert tags[HEAD_TAG] == result.head
    assert tags[ROLLOUT_TAG] == "good"
    local = registry.download_artifact(
        name, mv.version, "kpigate/audit/good.jsonl", str(tmp_path / "dl")
    )
    assert Path(local).read_bytes() == path.read_bytes()
    assert verify(local, expect_head=tags[HEAD_TAG]).ok

"""Attacks on the audit trail: a rewrite with a recomputed chain, a forged append after the
anchored head, a trail fabricated from scratch, rewritten evidence. Each passed
`kpigate audit verify` while the chain was plain sha256 and the head was only checked to be
somewhere in the file; each must fail now. One runs against a real MLflow server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from kpigate.audit import (
    HEAD_TAG,
    ROLLOUT_TAG,
    AnchoredHead,
    AuditError,
    AuditKey,
    AuditTrail,
    FileAnchor,
    RegistryAnchor,
    audit_key_from_env,
    read_records,
    record_hash,
    verify,
    verify_evidence,
)
from kpigate.audit_verify import UNKEYED_WARNING
from tests.trail_helpers import replayed_trail, windows_of

SECRET = "0123456789abcdef-test-key-not-for-production"
KEY = AuditKey(SECRET.encode())


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def _write(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join((json.dumps(r) + "\n").encode() for r in records))


def _rechain(records: list[dict[str, Any]], drop_mac: bool) -> list[dict[str, Any]]:
    """What an attacker without the key does after an edit: recompute every hash and link
    with plain sha256, as the trail used to be hashed."""
    prev = "0" * 64
    out = []
    for record in records:
        record = {k: v for k, v in record.items() if k != "hash"}
        if drop_mac:
            record.pop("mac", None)
        record["prev"] = prev
        record["hash"] = prev = record_hash(record)
        out.append(record)
    return out


def _turn_rollback_into_promote(records: list[dict[str, Any]]) -> None:
    final = next(r for r in records if r.get("final"))
    final["decision"] = "promote"
    action = next(r for r in records if r.get("action") == "rollback")
    action["action"] = "promote"


def _audit(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KPIGATE_AUDIT_KEY")}
    return subprocess.run(
        [sys.executable, "-m", "kpigate.cli", "audit", *args],
        capture_output=True, text=True, timeout=120, env={**clean, **env},
    )  # fmt: skip


@pytest.fixture
def key_file(tmp_path: Path) -> str:
    path = tmp_path / "audit.key"
    path.write_text(SECRET + "\n")  # as `echo` writes it
    path.chmod(0o600)
    return str(path)


@pytest.mark.parametrize("drop_mac", [False, True], ids=["mac kept", "mac dropped"])
def test_a_rollback_rewritten_into_a_promote_with_a_recomputed_chain_fails(
    tmp_path: Path, drop_mac: bool, key_file: str
) -> None:
    path = tmp_path / "trail.jsonl"
    replayed_trail(path, ("bad",), key=KEY)
    assert verify(path, key=KEY).ok and verify(path, key=KEY).keyed
    records = _records(path)
    _turn_rollback_into_promote(records)
    _write(path, _rechain(records, drop_mac))

    result = verify(path, key=KEY)
    assert not result.ok
    if drop_mac:
        (problem,) = result.problems
        assert f"{len(records)} record(s) without a MAC" in problem
        assert "forged or fabricated" in problem
    else:
        assert all("hash mismatch" in p for p in result.problems)
        assert len(result.problems) == len(records)
    done = _audit("verify", str(path), KPIGATE_AUDIT_KEY_FILE=key_file)
    assert done.returncode == 1 and "NOT intact" in done.stderr


def test_the_same_rewrite_of_an_unkeyed_trail_passes_but_verify_says_so_loudly(
    tmp_path: Path,
) -> None:
    # The limit of an unkeyed trail, kept visible: this is what every trail used to be.
    path = tmp_path / "trail.jsonl"
    replayed_trail(path, ("bad",), key=None)
    records = _records(path)
    _turn_rollback_into_promote(records)
    _write(path, _rechain(records, drop_mac=True))
    result = verify(path, key=None)
    assert result.ok and not result.keyed
    assert result.warnings == [UNKEYED_WARNING]
    done = _audit("verify", str(path))
    assert done.returncode == 0
    assert "WARNING: UNKEYED TRAIL" in done.stderr and "UNKEYED (sha256 only)" in done.stdout
    assert _audit("verify", str(path), "--require-key").returncode == 2


def test_a_forged_append_after_the_anchored_head_fails_even_when_signed_with_the_key(
    tmp_path: Path, key_file: str
) -> None:
    path, anchor_path = tmp_path / "trail.jsonl", tmp_path / "anchor.json"
    replayed_trail(path, ("bad",), key=KEY, anchor=FileAnchor(anchor_path))
    anchored = FileAnchor(anchor_path).read()
    assert anchored is not None
    assert anchored.head == read_records(path)[-1]["hash"]  # anchored at every append
    assert verify(path, key=KEY, anchors=[anchored]).ok

    # A key holder who cannot write the anchor appends a promote after the rollback.
    forger = AuditTrail(path, key=KEY)
    forger.append({"type": "action", "rollout": "bad", "action": "promote", "ok": True})
    assert verify(path, key=KEY).ok  # the chain alone cannot tell
    (problem,) = verify(path, key=KEY, anchors=[anchored]).problems
    assert "1 records after the anchored head" in problem and "forged" in problem
    done = _audit("verify", str(path), "--anchor-file", str(anchor_path),
                  KPIGATE_AUDIT_KEY_FILE=key_file)  # fmt: skip
    assert done.returncode == 1 and "after the anchored head" in done.stderr

    # A bare --head (the MLflow tag's value) is scoped to the rollout of the record it names.
    done = _audit("verify", str(path), "--head", anchored.head, KPIGATE_AUDIT_KEY_FILE=key_file)
    assert (
        done.returncode == 1 and "records of rollout 'bad' after the anchored head" in done.stderr
    )


def test_records_of_another_rollout_after_a_rollout_scoped_head_are_not_forgeries(
    tmp_path: Path,
) -> None:
    path = tmp_path / "trail.jsonl"
    replayed_trail(path, ("bad",), key=KEY)
    head = read_records(path)[-1]["hash"]
    AuditTrail(path, key=KEY).append({"type": "action", "rollout": "other", "action": "deploy"})
    assert verify(path, key=KEY, anchors=[AnchoredHead(head)]).ok
    whole = verify(path, key=KEY, anchors=[AnchoredHead(head, rollout="*")])
    assert not whole.ok  # a whole-trail anchor (the local file) covers every rollout


def test_a_trail_fabricated_from_scratch_fails(tmp_path: Path, key_file: str) -> None:
    real, anchor_path = tmp_path / "real.jsonl", tmp_path / "anchor.json"
    replayed_trail(real, ("bad",), key=KEY, anchor=FileAnchor(anchor_path))
    fake = tmp_path / "fake.jsonl"
    # The "bad" rollout retold as a promotion by someone without the key: a fresh, whole chain.
    for record in _records(real):
        event = {k: v for k, v in record.items() if k not in ("seq", "time", "prev", "hash", "mac")}
        if event.get("final"):
            event["decision"] = "promote"
        AuditTrail(fake, key=None).append(event)
    assert verify(fake, key=None).ok  # a well-formed chain in itself

    (problem,) = verify(fake, key=KEY).problems
    assert "without a MAC" in problem
    guessed = AuditKey(b"a guessed key, long enough....")
    other = tmp_path / "other.jsonl"
    replayed_trail(other, ("bad",), key=guessed)
    (problem,) = verify(other, key=KEY).problems
    assert f"keyed with key id {guessed.key_id}, not this key ({KEY.key_id})" in problem
    anchored = FileAnchor(anchor_path).read()
    assert anchored is not None
    assert any(
        "is not in the trail" in p for p in verify(other, key=guessed, anchors=[anchored]).problems
    )
    done = _audit("verify", str(fake), KPIGATE_AUDIT_KEY_FILE=key_file)
    assert done.returncode == 1 and "without a MAC" in done.stderr


def test_a_keyed_trail_cannot_pass_without_the_key(tmp_path: Path) -> None:
    path = tmp_path / "trail.jsonl"
    replayed_trail(path, ("bad",), key=KEY)
    (problem,) = verify(path, key=None).problems
    assert "cannot be checked: set KPIGATE_AUDIT_KEY or KPIGATE_AUDIT_KEY_FILE" in problem
    assert _audit("verify", str(path)).returncode == 1


def test_rewritten_evidence_no_longer_matches_the_decision_that_judged_it(
    tmp_path: Path, key_file: str
) -> None:
    path, evidence = tmp_path / "trail.jsonl", tmp_path / "evidence.jsonl"
    replayed_trail(path, ("bad",), key=KEY)
    windows = windows_of("bad")
    evidence.write_text("".join(json.dumps(w) + "\n" for w in windows))
    decisions = [r for r in read_records(path) if r["type"] == "decision"]
    assert len(decisions) == len(windows) and all("evidence_sha256" in r for r in decisions)
    assert verify_evidence(read_records(path), windows) == []

    # Make the candidate's recall look fine in window 3: the judged evidence no longer exists.
    recall = windows[2]["kpis"]["recall"]["candidate"]
    recall["successes"] = recall["trials"]
    evidence.write_text("".join(json.dumps(w) + "\n" for w in windows))
    (problem,) = verify_evidence(read_records(path), windows)
    assert "window 3" in problem and "the evidence was rewritten" in problem
    done = _audit("verify", str(path), "--evidence", str(evidence), KPIGATE_AUDIT_KEY_FILE=key_file)
    assert done.returncode == 1 and "the evidence was rewritten" in done.stderr


class _FlakyAnchor:
    """Fails its first `fail` calls, as a registry blip would."""

    def __init__(self, fail: int) -> None:
        self.fail, self.heads = fail, []  # type: ignore[var-annotated]

    def record(self, record: Mapping[str, Any]) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("MLflow blipped")
        self.heads.append(record["hash"])

    def read(self) -> AnchoredHead | None:
        return AnchoredHead(self.heads[-1], rollout="*") if self.heads else None


def test_a_failing_anchor_loses_no_record_and_the_next_append_anchors_again(
    tmp_path: Path,
) -> None:
    path, anchor = tmp_path / "trail.jsonl", _FlakyAnchor(fail=0)
    trail = AuditTrail(path, key=KEY, anchor=anchor)
    trail.append({"type": "action", "rollout": "r", "action": "start"})
    anchor.fail = 1
    trail.append({"type": "action", "rollout": "r", "action": "deploy"})
    assert trail.anchor_failures == 1 and len(read_records(path)) == 2
    anchored = anchor.read()
    assert anchored is not None
    (problem,) = verify(path, key=KEY, anchors=[anchored]).problems
    assert "the anchor update failed" in problem
    trail.append({"type": "action", "rollout": "r", "action": "promote"})
    anchored = anchor.read()
    assert anchored is not None and verify(path, key=KEY, anchors=[anchored]).ok


def test_the_key_comes_from_the_environment_or_a_file_and_is_checked(
    tmp_path: Path, key_file: str
) -> None:
    assert audit_key_from_env({}) is None
    assert audit_key_from_env({"KPIGATE_AUDIT_KEY": SECRET}) == KEY
    assert audit_key_from_env({"KPIGATE_AUDIT_KEY_FILE": key_file}) == KEY  # newline dropped
    with pytest.raises(AuditError, match="use at least 16 random bytes"):
        audit_key_from_env({"KPIGATE_AUDIT_KEY": "short"})
    with pytest.raises(AuditError, match="both KPIGATE_AUDIT_KEY and KPIGATE_AUDIT_KEY_FILE"):
        audit_key_from_env({"KPIGATE_AUDIT_KEY": SECRET, "KPIGATE_AUDIT_KEY_FILE": key_file})
    assert SECRET not in repr(KEY)
    done = _audit("verify", key_file, KPIGATE_AUDIT_KEY="short")
    assert done.returncode == 2 and "at least 16" in done.stderr and "short" not in done.stdout


def test_a_keyed_trail_keeps_its_crash_repair(tmp_path: Path) -> None:
    path = tmp_path / "trail.jsonl"
    trail = AuditTrail(path, key=KEY)
    for i in range(3):
        trail.append({"type": "action", "rollout": "r", "action": f"step-{i}"})
    path.write_bytes(path.read_bytes()[:-1])  # only the newline lost: the record is kept
    assert trail.append({"type": "action", "rollout": "r", "action": "next"})["seq"] == 4
    path.write_bytes(path.read_bytes()[:-20])  # a torn record: cut, and the chain continues
    assert trail.append({"type": "action", "rollout": "r", "action": "again"})["seq"] == 4
    assert verify(path, key=KEY).ok


@pytest.mark.slow
def test_against_mlflow_the_head_is_anchored_per_append_and_attacks_fail(
    tmp_path: Path, mlflow_server: str, key_file: str
) -> None:
    from mlflow.tracking import MlflowClient

    from kpigate.registry.mlflow import MlflowRegistry

    client = MlflowClient(mlflow_server)
    run = client.create_run(client.create_experiment(f"audit-anchor-{time.time_ns()}"))
    name = f"kpigate-anchor-{time.time_ns()}"
    client.create_registered_model(name)
    mv = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
    registry = MlflowRegistry(mlflow_server)
    anchor = RegistryAnchor(registry, name, mv.version, "bad")

    path = tmp_path / "trail.jsonl"
    trail = AuditTrail(path, key=KEY, anchor=anchor)
    for action in ("start", "deploy"):
        record = trail.append({"type": "action", "rollout": "bad", "action": action})
        tags = registry.get_tags(name, mv.version)  # the tag moved with this very append
        assert (tags[HEAD_TAG], tags[ROLLOUT_TAG]) == (record["hash"], "bad")
    trail.append({"type": "action", "rollout": "bad", "action": "rollback", "ok": True})
    assert trail.anchor_failures == 0
    args = ("--from-mlflow", f"{name}:{mv.version}", "--tracking-uri", mlflow_server)
    done = _audit("verify", str(path), *args, KPIGATE_AUDIT_KEY_FILE=key_file)
    assert done.returncode == 0, done.stderr
    assert "keyed (key id" in done.stdout and "1 anchor(s) checked" in done.stdout
    intact = path.read_bytes()

    # A forged promote after the anchored rollback, signed with the key.
    AuditTrail(path, key=KEY).append({"type": "action", "rollout": "bad", "action": "promote"})
    done = _audit("verify", str(path), *args, KPIGATE_AUDIT_KEY_FILE=key_file)
    assert done.returncode == 1 and "after the anchored head" in done.stderr

    # The rollback rewritten as a promote by a key holder: the chain verifies, the anchor not.
    path.write_bytes(intact)
    records = _records(path)
    records[-1]["action"] = "promote"
    rewritten = path.with_name("rewritten.jsonl")
    for record in records:
        event = {k: v for k, v in record.items() if k not in ("seq", "time", "prev", "hash", "mac")}
        AuditTrail(rewritten, key=KEY).append(event)
    done = _audit("verify", str(rewritten), *args, KPIGATE_AUDIT_KEY_FILE=key_file)
    assert done.returncode == 1 and "is not in the trail" in done.stderr


def test_verify_says_which_anchor_cannot_be_read_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "trail.jsonl"
    AuditTrail(path, key=None).append({"type": "action", "rollout": "r", "action": "start"})
    done = _audit("verify", str(path), "--anchor-file", str(tmp_path / "none.json"))
    assert done.returncode == 2 and "none.json: no such anchor file" in done.stderr
    (tmp_path / "bad.json").write_text("{not json")
    done = _audit("verify", str(path), "--anchor-file", str(tmp_path / "bad.json"))
    assert done.returncode == 2 and "not an audit anchor file" in done.stderr
    done = _audit("verify", str(path), "--from-mlflow", "no-version")
    assert done.returncode == 2 and "expected MODEL:VERSION" in done.stderr
    assert "Traceback" not in done.stderr

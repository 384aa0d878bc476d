"""`kpigate windows`: a rollout's windows rebuilt from the prediction log, piped into replay."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kpigate.cli import main
from kpigate.policy import load_policy, policy_from_dict
from kpigate.replay import Replayer, replay_lines
from kpigate.serve.predlog import Tables
from kpigate.windows import BadInput, parse_stages, parse_time, timeline_windows
from tests.cohort_helpers import engine_for, random_rows, write_rows
from tests.serve_fixtures import Database

T0 = 1_764_496_800.0  # 2025-11-30T10:00:00Z

POLICY = {
    "name": "backtest",
    "max_holds": 6,
    "stages": [
        {"traffic": 5, "soak": "5m", "interval": "1m", "promote_when": "no_harm"},
        {"traffic": 100, "soak": "5m", "interval": "1m"},
    ],
    "labels": {"horizon": "2m", "unlabeled": "negative"},
    "kpis": [
        {"name": "recall", "min_samples": 5},
        {"name": "error_rate", "direction": "lower", "min_samples": 5, "margin": 0.05},
    ],
}


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    return path


@pytest.fixture
def log_url(tmp_path: Path) -> str:
    engine, url = engine_for(Database(None, "kpigate_"), tmp_path)
    rows = random_rows(4000, T0, T0 + 900.0, 120.0, seed=21)
    for row in rows:  # one baseline version, one candidate version
        row["model_version"] = "1" if row["arm"] == "baseline" else "2"
    write_rows(engine, Tables("kpigate_"), rows)
    engine.dispose()
    return url


def _args(policy: Path, url: str, *extra: str) -> list[str]:
    return [
        "windows", "--policy", str(policy), "--model-name", "fraud",
        "--baseline-version", "1", "--candidate-version", "2", "--db-url", url, *extra,
    ]  # fmt: skip


def test_windows_follow_the_timeline_and_hold_label_kpis_until_their_cohort_matures(
    policy_file: Path, log_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "windows.jsonl"
    stages = "5@2025-11-30T10:00,100@2025-11-30T10:07"
    code = main(_args(policy_file, log_url, "--stages", stages, "--to", str(T0 + 900),
                      "--as-of", str(T0 + 900), "-o", str(out)))  # fmt: skip
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["stage"] for r in records] == [5.0] * 7 + [100.0] * 8
    assert records[0]["served_from"] == T0 and records[-1]["served_to"] == T0 + 900
    # Horizon 2 minutes, windows of 1 minute: window 3 (ends T0+180) holds cohort 1.
    assert "recall" not in records[0]["kpis"] and "error_rate" in records[0]["kpis"]
    assert records[0]["pending"]["window"] == 1
    assert [r.get("cohort", {}).get("window") for r in records[:5]] == [None, None, 1, 2, 3]
    assert records[2]["cohort"] == {"window": 1, "stage": 5.0, "matured_at": T0 + 180}
    assert records[2]["kpis"]["recall"]["candidate"]["trials"] > 0
    # The rebuilt windows are valid replay input under the same policy.
    replayer = Replayer(load_policy(policy_file))
    decisions = list(replay_lines(out.read_text().splitlines(), replayer))
    assert len(decisions) == len(records)


def test_as_of_keeps_only_windows_that_had_ended(
    policy_file: Path, log_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "w.jsonl"
    code = main(_args(policy_file, log_url, "--stages", f"5@{T0}", "--to", str(T0 + 900),
                      "--as-of", str(T0 + 250), "-o", str(out)))  # fmt: skip
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["window"] for r in records] == [1, 2, 3, 4]
    assert all(r["served_to"] <= T0 + 250 for r in records)


def test_windows_can_take_their_intervals_from_recorded_evidence(
    policy_file: Path, log_url: str, tmp_path: Path
) -> None:
    evidence = tmp_path / "evidence.jsonl"
    lines: list[dict[str, Any]] = [{"rollout": "fraud-2", "window": i, "stage": 5, "kpis": {},
              "served_from": T0 + 90 * (i - 1), "served_to": T0 + 90 * i} for i in (1, 2, 3, 4)]  # fmt: skip
    evidence.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "w.jsonl"
    code = main(_args(policy_file, log_url, "--evidence", str(evidence), "--as-of",
                      str(T0 + 1000), "-o", str(out)))  # fmt: skip
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["served_from"], r["served_to"]) for r in records] == [
        (line["served_from"], line["served_to"]) for line in lines
    ]
    assert records[0]["rollout"] == "fraud-2"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--stages", "5@yesterday"], "is not a time"),
        (["--stages", "7@2025-11-30T10:00"], "not a stage of the policy"),
        (["--stages", "25@2025-11-30T10:00,5@2025-11-30T11:00"], "must increase"),
        (["--stages", "5"], "TRAFFIC@TIME"),
        ([], "--stages, or --evidence"),
    ],
)
def test_bad_input_exits_2_with_the_reason(
    policy_file: Path,
    log_url: str,
    extra: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(_args(policy_file, log_url, *extra)) == 2
    assert message in capsys.readouterr().err


def test_a_database_password_is_refused_on_the_command_line(
    policy_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "postgresql+psycopg://u:secret@db/kpigate"
    assert main(_args(policy_file, url, "--stages", f"5@{T0}")) == 2
    assert "KPIGATE_DB_URL" in capsys.readouterr().err
    monkeypatch.delenv("KPIGATE_DB_URL", raising=False)
    monkeypatch.delenv("KPIGATE_DB_URL_FILE", raising=False)
    args = _args(policy_file, "x", "--stages", f"5@{T0}")
    args.remove("--db-url")
    args.remove("x")
    assert main(args) == 2
    assert "no database" in capsys.readouterr().err


def test_an_unreadable_log_exits_1(
    policy_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(_args(policy_file, url, "--stages", f"5@{T0}", "--as-of", str(T0 + 120))) == 1
    assert "prediction log query failed" in capsys.readouterr().err


def test_timeline_helpers() -> None:
    assert parse_time("2025-11-30T10:00", "t") == T0
    assert parse_time("2025-11-30T11:00+01:00", "t") == T0
    assert parse_stages(f"5@{T0}, 25@{T0 + 60}") == [(5.0, T0), (25.0, T0 + 60)]
    with pytest.raises(BadInput):
        parse_stages("")
    policy = policy_from_dict(POLICY)
    windows = timeline_windows(policy, [(5.0, 0.0), (100.0, 150.0)], 200.0)
    assert [(w.served_from, w.served_to) for w in windows] == [
        (0.0, 60.0), (60.0, 120.0), (120.0, 150.0), (150.0, 200.0)
    ]  # fmt: skip


def test_soak_and_collect_reads_the_prediction_log_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    from kpigate.steps.soak_and_collect import main as soak_main

    policy = {**POLICY, "stages": [{"traffic": 5, "soak": "1s", "interval": "0.3s"},
                                   {"traffic": 100, "soak": "1s", "interval": "0.3s"}],
              "labels": {"horizon": "0.3s"}}  # fmt: skip
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(policy))
    engine, url = engine_for(Database(None, "kpigate_"), tmp_path)
    now = time.time()
    write_rows(engine, Tables("kpigate_"), random_rows(3000, now, now + 3.0, 0.3, seed=2))
    engine.dispose()
    evidence = tmp_path / "evidence.jsonl"
    args = ["--policy", str(path), "--stage", "5", "--looks", "4", "--source", "predlog",
            "--evidence", str(evidence)]  # fmt: skip
    monkeypatch.delenv("KPIGATE_DB_URL", raising=False)
    monkeypatch.delenv("KPIGATE_DB_URL_FILE", raising=False)
    monkeypatch.setattr("sys.argv", ["soak_and_collect", *args])
    assert soak_main() == 2
    assert "KPIGATE_DB_URL" in capsys.readouterr().err
    monkeypatch.setenv("KPIGATE_DB_URL", url)
    assert soak_main() == 0
    records = [json.loads(line) for line in evidence.read_text().splitlines()]
    assert len(records) == 4
    for before, after in itertools.pairwise(records):
        assert before["served_to"] == after["served_from"]
    assert records[0]["pending"]["window"] == 1 and "recall" not in records[0]["kpis"]
    cohorts = [r["cohort"]["window"] for r in records if "cohort" in r]
    assert cohorts == list(range(1, len(cohorts) + 1)) and cohorts  # each once, in order
    assert all(r["kpis"]["error_rate"]["baseline"] is not None for r in records)

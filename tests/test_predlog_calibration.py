"""A/A calibration windows from the prediction log: the baseline's rows before the rollout,
split in two halves by a hash of the user, counted by the same SQL as a rollout window's, on
SQLite and PostgreSQL (skipped when PostgreSQL is unreachable, unless
KPIGATE_REQUIRE_POSTGRES=1)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kpigate.cli import main
from kpigate.policy import Kpi, Labels, Policy, Stage, load_policy
from kpigate.replay import Replayer, decision_record, replay_lines
from kpigate.serve.predlog import Tables
from kpigate.sources.cohorts import ServedWindow
from kpigate.sources.predlog import (
    CALIBRATION_SALT,
    PredlogReader,
    PredlogSource,
    calibration_half,
)
from kpigate.sources.records import calibration_records, calibration_windows
from tests.cohort_helpers import brute_force, engine_for, random_rows, write_rows
from tests.serve_fixtures import Database

pytest_plugins = ["tests.serve_fixtures"]


def _halved(rows: list[dict[str, Any]], version: str = "1") -> list[dict[str, Any]]:
    """The baseline's answered rows with their arm replaced by the user's half, in Python."""
    return [
        {**r, "arm": calibration_half(r["entity_key"])}
        for r in rows
        if r["arm"] == "baseline" and r["model_version"] == version and not r["shadow"]
    ]


def test_the_half_is_md5_of_the_user_and_splits_users_about_evenly() -> None:
    digest = hashlib.md5(("card-7" + CALIBRATION_SALT).encode()).hexdigest()
    assert calibration_half("card-7") == ("baseline" if digest[0] in "01234567" else "candidate")
    halves = [calibration_half(f"user-{i}") for i in range(10_000)]
    assert 0.47 < halves.count("baseline") / len(halves) < 0.53


def test_calibration_counts_equal_a_python_split_of_the_baseline_rows(
    database: Database, tmp_path: Path
) -> None:
    engine, _ = engine_for(database, tmp_path)
    tables = Tables(database.prefix)
    horizon = 50.0
    rows = random_rows(3000, 0.0, 300.0, horizon, seed=17)
    write_rows(engine, tables, rows)
    reader = PredlogReader(engine, tables, "1", "3")
    halved = _halved(rows)
    for start, end in ((0.0, 100.0), (37.5, 251.0)):
        got = reader.labeled(start, end, horizon, "negative", calibration=True)
        want = brute_force(
            halved, start, end, horizon, "negative", {"baseline": None, "candidate": None}
        )
        assert got.tables == want.tables
        immediate = reader.immediate(start, end, calibration=True)
        inside = [r for r in halved if start <= r["created_at"] < end]
        for half in ("baseline", "candidate"):
            mine = [r for r in inside if r["arm"] == half]
            assert len(mine) > 100  # both halves hold real traffic
            declined = sum(1 for r in mine if r["decision"] == "decline")
            assert immediate.total("decisions", arm=half, decision="decline") == declined
            assert immediate.buckets("latency", arm=half)[float("inf")] == len(mine)
        # errors are the candidate's alone: no half has any
        assert immediate.total("errors") == 0
        # the candidate's rows never enter a calibration window
        candidate_rows = sum(
            1 for r in rows if r["arm"] == "candidate" and start <= r["created_at"] < end
        )
        assert immediate.total("decisions") == len(inside) < len(inside) + candidate_rows
    engine.dispose()


def _policy(**fields: Any) -> Policy:
    fields.setdefault("labels", Labels(horizon=50))
    return Policy(
        stages=(Stage(traffic=5, soak=300, interval=20), Stage(traffic=100, soak=300, interval=20)),
        kpis=(
            Kpi(name="recall", min_samples=1),
            Kpi(name="approval_rate", min_samples=1),
            Kpi(name="error_rate", direction="lower", min_samples=1),
            Kpi(
                name="latency_p95",
                type="quantile",
                quantile=0.95,
                direction="lower",
                margin=5,
                action="hold",
                scope="window",
            ),
        ),
        **fields,
    )


def test_calibration_windows_precede_the_start_and_their_cohorts_have_matured() -> None:
    policy = _policy(calibration={"windows": 3})
    windows = calibration_windows(policy, 1000.0)
    assert [w.index for w, _ in windows] == [-3, -2, -1]
    assert [(w.served_from, w.served_to) for w, _ in windows] == [
        (940, 960),
        (960, 980),
        (980, 1000),
    ]
    # labels.horizon 50: each cohort ends 50 s earlier, matured by the start at 1000
    assert [(c.served_from, c.served_to) for _, c in windows if c] == [
        (890, 910),
        (910, 930),
        (930, 950),
    ]
    assert all(c is not None and c.served_to + 50 <= 1000 for _, c in windows)
    unlabeled = calibration_windows(_policy(labels=None, calibration={"windows": 2}), 1000.0)
    assert [c for _, c in unlabeled] == [None, None]


def test_calibration_records_from_the_log(database: Database, tmp_path: Path) -> None:
    engine, _ = engine_for(database, tmp_path)
    tables = Tables(database.prefix)
    rows = random_rows(3000, 0.0, 300.0, 50.0, seed=23)
    write_rows(engine, tables, rows)
    policy = _policy(calibration={"windows": 20})
    source = PredlogSource(PredlogReader(engine, tables, "1", "3"), policy.labels)
    records = calibration_records(policy, source, "r", 300.0)
    # windows of 20 s from -100 .. 300: those before the log's first row (t < 0) are left out;
    # label cohorts end 50 s earlier, so the last windows' recall comes from served rows
    assert [r.window for r in records] == list(range(-15, 0))
    for record in records:
        assert record.calibration and record.stage == 5 and record.cohort is None
        assert set(record.kpis) <= {"recall", "approval_rate"}  # no error_rate, no window KPI
        assert "approval_rate" in record.kpis
        # the note names the label cohort only when the record holds label KPIs from it
        assert ("recall" in record.kpis) == ("the cohort served" in record.note)
    assert "recall" not in records[0].kpis and "recall" in records[-1].kpis
    last = records[-1].as_json()
    approval = last["kpis"]["approval_rate"]
    window = ServedWindow(-1, 5.0, 280.0, 300.0)
    mine = [r for r in _halved(rows) if window.served_from <= r["created_at"] < window.served_to]
    for half in ("baseline", "candidate"):
        approved = sum(1 for r in mine if r["arm"] == half and r["decision"] == "approve")
        assert approval[half]["successes"] == approved
        assert approval[half]["trials"] == sum(1 for r in mine if r["arm"] == half)
    # No source that cannot split users gives any, and calibration: 0 gives none.
    assert calibration_records(policy, object(), "r", 300.0) == []
    off = _policy(calibration={"windows": 0})
    assert calibration_records(off, source, "r", 300.0) == []
    engine.dispose()


T0 = 1_764_496_800.0


def test_windows_backtest_writes_calibration_first_and_replay_uses_it(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kpigate windows | kpigate replay`: the A/A records precede window 1 and feed the first
    look's variance; the decisions on them are marked calibration."""
    engine, url = engine_for(database, tmp_path)
    rows = random_rows(6000, T0, T0 + 1200.0, 120.0, seed=29)
    for row in rows:
        row["model_version"] = "1" if row["arm"] == "baseline" else "2"
    write_rows(engine, Tables(database.prefix), rows)
    engine.dispose()
    policy = {
        "name": "backtest", "calibration": {"windows": 8},
        "stages": [{"traffic": 5, "soak": "5m", "interval": "1m"},
                   {"traffic": 100, "soak": "5m", "interval": "1m"}],
        "labels": {"horizon": "2m"},
        "kpis": [{"name": "recall", "min_samples": 5}, {"name": "approval_rate", "min_samples": 5}],
    }  # fmt: skip
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    out = tmp_path / "windows.jsonl"
    start = T0 + 900
    db = ["--db-url", url] if url.startswith("sqlite") else []
    if not db:
        monkeypatch.setenv("KPIGATE_DB_URL", url)
    args = [
        "windows", "--policy", str(policy_file), "--model-name", "fraud",
        "--baseline-version", "1", "--candidate-version", "2", *db,
        "--table-prefix", database.prefix, "--stages", f"5@{start}",
        "--to", str(start + 180), "--as-of", str(start + 180), "-o", str(out),
    ]  # fmt: skip
    code = main(args)
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["window"] for r in records] == [-8, -7, -6, -5, -4, -3, -2, -1, 1, 2, 3]
    assert all(r["calibration"] for r in records[:8])
    assert all("calibration" not in r for r in records[8:])
    assert records[7]["served_to"] == start == records[8]["served_from"]
    assert "recall" in records[0]["kpis"]  # cohorts served 2 minutes earlier, all matured
    decisions = list(replay_lines(out.read_text().splitlines(), Replayer(load_policy(policy_file))))
    outputs = [decision_record(rollout, d) for _, rollout, d in decisions]
    assert [o.get("calibration", False) for o in outputs] == [True] * 8 + [False] * 3
    assert [o["look"] for o in outputs[8:]] == [1, 2, 3]
    assert outputs[8]["kpis"]["approval_rate"]["calibration_windows"] == 8


def test_soak_writes_calibration_once_before_the_rollouts_first_window(tmp_path: Path) -> None:
    """soak-and-collect: the first soak of a rollout writes the A/A records, then window 1;
    a retry adds nothing, and the gate's latest decision is a rollout window's."""
    import time

    from kpigate.steps.evaluate_gate import judge_evidence
    from kpigate.steps.soak_and_collect import soak
    from kpigate.store.file import FileStore

    engine, _ = engine_for(Database(None, "kpigate_"), tmp_path)
    now = time.time()
    rows = random_rows(3000, now - 200.0, now, 50.0, seed=31)
    write_rows(engine, Tables("kpigate_"), rows)
    policy = _policy(labels=None, calibration={"windows": 5})
    source = PredlogSource(PredlogReader(engine, Tables("kpigate_")))
    store = FileStore(tmp_path / "evidence.jsonl")
    assert soak(policy, store, source, 5, looks=2, interval_s=0.01, rollout="r") == 2
    assert soak(policy, store, source, 5, looks=2, interval_s=0.01, rollout="r") == 0
    records = store.read()
    assert [(r.window, r.calibration) for r in records] == [
        (-5, True), (-4, True), (-3, True), (-2, True), (-1, True), (1, False), (2, False)
    ]  # fmt: skip
    decision = judge_evidence(policy, records, 5)
    assert not decision.calibration and decision.window == 2 and decision.look == 2
    engine.dispose()

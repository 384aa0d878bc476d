"""`kpigate demo`, the main job: the recorded replay, and the live 'bad' scenario end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kpigate.audit import read_records, verify
from kpigate.casestudy import RunnerTrigger
from kpigate.cli import main
from kpigate.demo import (
    MAX_INTERVAL_S,
    MIN_INTERVAL_S,
    POSITIVES_PER_WINDOW,
    SLOW_INTERVAL_S,
    Pacer,
    achieved_rate,
    describe,
    label_delays,
    resized_window,
    scaled_policy,
    size_windows,
    window_for,
    write_policy,
)
from kpigate.policy import load_policy
from kpigate.steps.promote_or_rollback import Outcome
from tests.trail_helpers import EXAMPLES


def test_recorded_demo_replays_both_scenarios() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kpigate.cli", "demo", "--recorded"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "promoted to 100%: the candidate is champion" in done.stdout
    assert "rolled back for harm on recall at 25%: the baseline kept serving" in done.stdout


def test_recorded_demo_with_a_workdir_writes_the_trail_and_reports_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--recorded", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"report (bad): {tmp_path / 'report-bad.html'}" in out
    assert verify(tmp_path / "audit.jsonl").ok
    actions = [r["action"] for r in read_records(tmp_path / "audit.jsonl") if r["type"] == "action"]
    assert actions == ["promote", "rollback"]
    assert "for harm" in (tmp_path / "report-bad.html").read_text()
    assert "promoted to 100%" in (tmp_path / "report-good.html").read_text()
    assert main(["demo", "--recorded", "--workdir", str(tmp_path)]) == 2  # never appended twice
    assert "already holds an audit trail" in capsys.readouterr().err
    assert len(read_records(tmp_path / "audit.jsonl")) == 2 + sum(
        1 for line in (EXAMPLES / "fraud-rollout.jsonl").read_text().splitlines() if line.strip()
    )


def test_windows_are_sized_to_the_measured_rate() -> None:
    policy = load_policy(EXAMPLES / "demo-policy.yaml")
    fast, capped, crawl = (size_windows(rate, 0.5, policy) for rate in (400.0, 50.0, 10.0))
    assert fast.interval_s == 2.0  # the floor: the latency spike and soak still read well
    assert capped.interval_s == POSITIVES_PER_WINDOW / (50 * 0.5) == 16.0
    assert capped.rate * 0.5 * capped.interval_s == POSITIVES_PER_WINDOW  # labelled frauds
    assert not capped.slow and crawl.slow
    assert capped.looks == (24, 64)  # four stages of six looks; plus max_holds 10 each
    assert "too slow for a short demo" in describe(crawl, 400)
    assert "answers 50 requests/s here (400 asked for): windows of 16 s" in describe(capped, 400)


def test_the_demo_policy_is_scaled_to_the_window_and_its_labels_come_later_than_one(
    tmp_path: Path,
) -> None:
    """Every duration keeps its length in windows; labels arrive later than a window (fraud
    about one, legitimate 2.5) and all of them within the horizon, so none is counted late."""
    policy = load_policy(EXAMPLES / "demo-policy.yaml")
    assert policy.labels is not None and policy.labels.unlabeled == "negative"
    for interval in (MIN_INTERVAL_S, 16.0, SLOW_INTERVAL_S * 2):
        scaled = scaled_policy(policy, interval)  # validated again: cohorts mature in time
        assert scaled.labels is not None
        assert {s.interval for s in scaled.stages} == {interval}
        assert [s.looks for s in scaled.stages] == [s.looks for s in policy.stages]
        assert scaled.labels.horizon == pytest.approx(3 * interval)  # whole windows
        assert scaled.max_staleness == pytest.approx(policy.max_staleness * interval / 10)
        fraud, legit = label_delays(scaled)
        assert fraud == interval and legit == 2.5 * interval  # later than a window
        slowest_fraud = 1.5 * fraud  # the replayer spreads fraud delays 0.5x to 1.5x
        assert max(slowest_fraud, legit) < scaled.labels.horizon
        assert scaled.kpis == policy.kpis
        assert load_policy(write_policy(scaled, tmp_path / f"{interval:g}.yaml")) == scaled


def test_waiting_for_a_rollout_never_joins_an_unstarted_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race of issue 14: `wait()` found the rollout's thread before it was started and
    joined it ("cannot join thread before it is started")."""
    started = threading.Event()
    real_start = threading.Thread.start

    def slow_start(self: threading.Thread) -> None:
        started.set()
        time.sleep(0.3)  # a busy machine between creating the thread and starting it
        real_start(self)

    class QuickRunner:
        def run(self, version: str) -> Outcome:
            return Outcome("promote", version, "fine")

    trigger = RunnerTrigger(lambda name, version: QuickRunner(), tmp_path)  # type: ignore[arg-type,return-value]
    results: list[Any] = []

    def waiter() -> None:
        try:
            results.append(trigger.wait("m", "2", timeout_s=10))
        except BaseException as exc:
            results.append(exc)

    monkeypatch.setattr(threading.Thread, "start", slow_start)
    starter = threading.Thread(target=trigger.start, args=("m", "2"))
    real_start(starter)
    started.wait(5)
    monkeypatch.setattr(threading.Thread, "start", real_start)
    watcher = threading.Thread(target=waiter)
    watcher.start()
    starter.join(10)
    watcher.join(10)
    assert results == [Outcome("promote", "2", "fine")]


TOKEN = "admin-token-never-logged-5b1e"
SECRET = "webhook-secret-never-logged-93aa"


@pytest.mark.slow
@pytest.mark.solo
@pytest.mark.timeout(900)
def test_live_bad_scenario_rolls_back_on_real_parts(tmp_path: Path) -> None:
    """MLflow server, router, relay, webhook, runner, traffic: the bad candidate is rolled back,
    every request is answered, the audit trail verifies, the report is written, and neither
    secret appears in any output, log, report, notification or trail."""
    env = {**os.environ, "KPIGATE_ADMIN_TOKEN": TOKEN, "KPIGATE_WEBHOOK_SECRET": SECRET}
    done = subprocess.run(
        [sys.executable, "-m", "kpigate.cli", "demo", "--scenario", "bad",
         "--workdir", str(tmp_path)],
        capture_output=True, text=True, check=False, timeout=840, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "bad: rolled back for harm on recall" in done.stdout
    assert "requests/s here" in done.stdout and "MLflow UI at http://127.0.0.1:" in done.stdout
    assert ", 0 failed," in done.stdout  # the baseline kept serving throughout
    assert verify(tmp_path / "audit.jsonl").ok
    assert (tmp_path / "report-bad.html").read_text().count("<svg") >= 2
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "mlflow" not in p.parts]
    assert {p.name for p in written} >= {"router.log", "audit.jsonl", "notifications.log"}
    for text in [done.stdout, done.stderr, *(p.read_text(errors="replace") for p in written)]:
        assert TOKEN not in text and SECRET not in text
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "the demo left processes running"


def test_the_rate_is_measured_on_the_routers_own_counter(start_router: Any) -> None:
    from kpigate.casestudy import measure_rate, served_count
    from tests.test_runner import Traffic

    router = start_router()
    with pytest.raises(RuntimeError, match="no traffic reached the router"):
        measure_rate(router.url, seconds=0.1, warmup_timeout_s=0.3)
    with Traffic(router) as traffic:
        rate = measure_rate(router.url, seconds=1.0)
        served = served_count(router.url)
    assert rate > 0
    assert (
        0 < served <= traffic.sent + 40
    )  # answers counted, shadow copies not (one batch in flight)


def test_windows_grow_when_the_achieved_rate_falls_and_never_shrink_within_a_rollout() -> None:
    """The resizing decision: sized for 50 requests/s (16 s windows), a machine that slowed to
    31/s would give windows of 248 labelled frauds, so they grow to hold 400 again; at 40/s
    they still hold 320 (3/4 of 400 is the threshold); a faster machine keeps them."""
    assert window_for(50, 0.5) == 16.0
    assert resized_window(31.0, 0.5, 16.0) == round(POSITIVES_PER_WINDOW / (31 * 0.5), 1) == 25.8
    assert resized_window(40.0, 0.5, 16.0) is None  # 320 >= 300
    assert resized_window(37.0, 0.5, 16.0) == 21.6  # 296 < 300
    assert resized_window(400.0, 0.5, 16.0) is None  # never shorter within a rollout
    assert resized_window(0.0, 0.5, 16.0) == MAX_INTERVAL_S  # a stalled machine: bounded
    assert resized_window(0.0, 0.5, MAX_INTERVAL_S) is None
    # the fraud share counts as much as the rate
    assert resized_window(50.0, 0.25, 16.0) == 32.0


def test_the_achieved_rate_is_taken_over_the_last_two_windows() -> None:
    assert achieved_rate([]) is None and achieved_rate([(0.0, 0.0), (16.0, 800.0)]) is None
    assert achieved_rate([(0.0, 0.0), (16.0, 800.0)], windows=1) == 50.0
    samples = [(0.0, 0.0), (16.0, 800.0), (32.0, 1600.0), (48.0, 2000.0), (64.0, 2400.0)]
    assert achieved_rate(samples) == 25.0  # (2400 - 1600) / 32: the first windows are past


def test_the_pacer_lengthens_the_windows_once_the_traffic_slows() -> None:
    clock, served = [0.0], [0.0]
    pacer = Pacer(0.5, 16.0, served=lambda: served[0], clock=lambda: clock[0])
    pacer.restart(16.0)
    assert pacer.slowed() is None  # no window yet
    for rate in (50.0, 50.0, 30.0):
        clock[0] += 16.0
        served[0] += rate * 16.0
        pacer.sample()
        assert pacer.slowed() is None  # one slow window of two: 40/s, 320 frauds, enough
    clock[0] += 16.0
    served[0] += 30.0 * 16.0
    pacer.sample()
    assert pacer.slowed() == (30.0, round(400 / 15, 1))
    pacer.interval_s = 26.7  # the demo lengthens the windows
    assert pacer.slowed() is None


def test_a_longer_window_keeps_the_rules_and_every_label_inside_the_horizon() -> None:
    """What a mid-rollout resize may change (durations: Policy.rules() is the same) and what it
    must keep: labels scheduled for the old windows (legitimate 2.5 of them) still arrive within
    the new, longer horizon, so a cohort served before the change counts all of them."""
    policy = load_policy(EXAMPLES / "demo-policy.yaml")
    before = scaled_policy(policy, 16.0)
    after = scaled_policy(policy, resized_window(31.0, 0.5, 16.0) or 0.0)
    assert after.rules() == before.rules() == policy.rules()
    assert after.labels is not None and before.labels is not None
    assert max(label_delays(before)[1], 1.5 * label_delays(before)[0]) < before.labels.horizon
    assert after.labels.horizon > before.labels.horizon
    changed = policy.model_copy(update={"max_holds": policy.max_holds + 1})
    assert changed.rules() != policy.rules()


def test_waiting_for_a_rollout_asks_its_timeout_again(tmp_path: Path) -> None:
    """The demo's bound on a rollout grows when its windows do: wait() asks for it while it
    waits, and gives up only when the bound it is given now has passed."""
    release = threading.Event()

    class BlockedRunner:
        def run(self, version: str) -> Outcome:
            release.wait(60)
            return Outcome("promote", version, "fine")

    trigger = RunnerTrigger(lambda name, version: BlockedRunner(), tmp_path)  # type: ignore[arg-type,return-value]
    trigger.start("m", "2")
    with pytest.raises(TimeoutError, match="did not finish in time"):
        trigger.wait("m", "2", timeout_s=lambda: 0.0)
    asked: list[float] = []

    def growing() -> float:
        asked.append(1.0)
        if len(asked) == 3:
            release.set()  # the rollout ends while the bound is 60 s
        return 60.0

    assert trigger.wait("m", "2", timeout_s=growing) == Outcome("promote", "2", "fine")
    assert len(asked) >= 3

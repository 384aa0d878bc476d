"""`kpigate pause | resume | abort | promote` on a real local rollout: an MLflow server, a
uvicorn router with traffic and labels flowing, and the runner polling its control file."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kpigate.audit import AuditTrail, read_records
from kpigate.cli import main
from kpigate.control import ControlError, Order, control_path, read_order, write_order
from kpigate.fraud.registration import register_model
from kpigate.journal import Journal
from kpigate.policy import policy_from_dict
from kpigate.registry.base import CANDIDATE, CHAMPION
from kpigate.registry.mlflow import MlflowRegistry
from kpigate.report import render_report
from kpigate.runner import LocalRunner, model_lock
from kpigate.steps.promote_or_rollback import Outcome
from kpigate.store.file import FileStore
from tests.mlflow_fixtures import FraudFrames, TrainedModels
from tests.serve_fixtures import FixedModel, RouterServer, constant
from tests.test_runner import POLICY, Traffic, make_runner

# Long soaks: the rollout cannot finish by itself while the test steers it.
SLOW = {**POLICY, "stages": [
    {"traffic": 50, "soak": "60s", "interval": "0.3s"},
    {"traffic": 100, "soak": "60s", "interval": "0.3s"},
]}  # fmt: skip
MODEL = "kpigate-control-test"


@pytest.fixture(scope="module")
def control_model(
    mlflow_server: str, trained_models: TrainedModels, fraud_frames: FraudFrames
) -> Iterator[tuple[str, str]]:
    """A model of its own (these tests move its aliases): champion v1, candidate v2."""
    frame = fraud_frames.holdout.iloc[:3000]
    for model, alias in (
        (trained_models.baseline, CHAMPION),
        (trained_models.candidate, CANDIDATE),
    ):
        register_model(model, tracking_uri=mlflow_server, eval_frame=frame, name=MODEL, alias=alias)
    yield mlflow_server, MODEL


class Rollout:
    """The runner in a thread, as `kpigate rollout` runs it: under the model lock, polling
    its state directory for commands."""

    def __init__(self, runner: LocalRunner, state_dir: Path) -> None:
        self.runner, self.state_dir = runner, state_dir
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        self.messages: list[str] = []
        runner.control_dir, runner.control_poll_s = state_dir, 0.05
        runner.on_message = self.messages.append
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with model_lock(self.state_dir, self.runner.model_name):
                self.outcome = self.runner.run("candidate")
        except BaseException as exc:
            self.error = exc

    def windows(self) -> int:
        return len(self.runner.store.read())

    def until(self, what: str, condition: Callable[[], bool], timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert self.error is None, self.error
            assert self.thread.is_alive() or condition(), f"the rollout ended before {what}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def finish(self) -> Outcome:
        self.thread.join(60)
        assert self.error is None, self.error
        assert self.outcome is not None
        return self.outcome


def _runner(
    router: RouterServer, tmp_path: Path, tracking_uri: str, name: str, trail: AuditTrail
) -> LocalRunner:
    policy = policy_from_dict(SLOW)
    runner = make_runner(policy, router, tmp_path, tracking_uri, name)
    runner.journal = Journal(trail=trail, notifier=None, policy=policy, policy_digest="test",
                             model_name=name, rollout_id="test", actor="kpigate-runner:test")  # fmt: skip
    return runner


def _models() -> dict[str, Any]:
    return {"champion": FixedModel("1", score=constant(0.9)),
            "candidate": FixedModel("2", score=constant(0.9))}  # fmt: skip


def test_pause_stops_the_looks_resume_goes_on_and_abort_rolls_back(
    start_router: Any,
    control_model: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tracking_uri, name = control_model
    monkeypatch.setenv("KPIGATE_ACTOR", "alice")
    router = start_router(_models())
    trail = AuditTrail(tmp_path / "audit.jsonl")
    state = tmp_path / "state"
    flags = ["--model-name", name, "--state-dir", str(state)]
    with Traffic(router):
        rollout = Rollout(_runner(router, tmp_path, tracking_uri, name, trail), state)
        rollout.until("two windows", lambda: rollout.windows() >= 2)
        assert main(["pause", *flags, "--reason", "checking a dashboard"]) == 0
        assert "sent to the rollout" in capsys.readouterr().out
        rollout.until("the pause", lambda: any(m.startswith("paused") for m in rollout.messages))
        paused_at = rollout.windows()
        time.sleep(1.0)  # about three intervals: a running runner would add windows
        assert rollout.windows() == paused_at
        assert read_order(state, name) == Order("pause", "alice", read_order(state, name).time,  # type: ignore[union-attr]
                                                "checking a dashboard")  # fmt: skip
        assert main(["resume", *flags]) == 0
        rollout.until("a window after resume", lambda: rollout.windows() > paused_at)
        assert not control_path(state, name).exists()  # the runner took the command
        assert main(["abort", *flags, "--reason", "bad feeling"]) == 0
        outcome = rollout.finish()
    assert outcome.action == "rollback"
    assert outcome.reason == "aborted by alice: bad feeling"
    assert router.admin().get("/admin/state").json()["weight"] == 0
    assert MlflowRegistry(tracking_uri).get_tags(name, "2")["kpigate.rollout"] == "rolled_back"
    assert MlflowRegistry(tracking_uri).resolve(name, CHAMPION).version == "1"
    actions = [(r["action"], (r.get("detail") or {}).get("operator"))
               for r in read_records(trail.path) if r["type"] == "action"]  # fmt: skip
    assert actions[-4:] == [("operator-pause", "alice"), ("operator-resume", "alice"),
                            ("operator-abort", "alice"), ("rollback", None)]  # fmt: skip
    # the abort is the rollout's last decision, the operator's, and the report says so
    decisions = [r for r in read_records(trail.path) if r["type"] == "decision"]
    assert (decisions[-1]["decision"], decisions[-1]["cause"]) == ("rollback", "operator")
    assert "by an operator" in render_report(read_records(trail.path))


def test_promote_passes_the_stage_and_promote_full_makes_the_candidate_champion(
    start_router: Any, control_model: tuple[str, str], tmp_path: Path
) -> None:
    tracking_uri, name = control_model
    router = start_router(_models())
    trail = AuditTrail(tmp_path / "audit.jsonl")
    state = tmp_path / "state"
    flags = ["--model-name", name, "--state-dir", str(state)]
    with Traffic(router):
        rollout = Rollout(_runner(router, tmp_path, tracking_uri, name, trail), state)
        rollout.until("a window at 50%", lambda: rollout.windows() >= 1)
        assert main(["promote", *flags]) == 0
        rollout.until("the 100% stage", lambda: "deploy-stage@100" in rollout.runner.trace)
        assert router.admin().get("/admin/state").json()["weight"] == 95  # 5% holdback
        assert main(["promote", *flags, "--full"]) == 0
        outcome = rollout.finish()
    registry = MlflowRegistry(tracking_uri)
    try:
        assert outcome.action == "promote", outcome.reason
        assert registry.resolve(name, CHAMPION).version == "2"
        kinds = [r["action"] for r in read_records(trail.path) if r["type"] == "action"]
        assert kinds == ["start", "deploy", "operator-promote", "deploy", "operator-promote-full",
                         "promote"]  # fmt: skip
        stages = {float(r.stage) for r in FileStore(tmp_path / "evidence.jsonl").read()}
        assert stages == {50.0, 100.0}
    finally:
        registry.set_alias(name, CHAMPION, "1")
        registry.set_alias(name, CANDIDATE, "2")


def test_a_command_without_a_running_rollout_waits_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--model-name", "m", "--state-dir", str(tmp_path)]
    assert main(["resume", *flags]) == 2
    assert "is not paused" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # --full goes with promote only
        main(["abort", *flags, "--full"])
    assert refused.value.code == 2
    assert main(["abort", *flags]) == 0
    assert "waits in" in capsys.readouterr().out
    assert read_order(tmp_path, "m") is not None
    assert read_order(tmp_path, "m").command == "abort"  # type: ignore[union-attr]
    assert main(["pause", *flags]) == 0  # a newer command replaces the pending one
    assert read_order(tmp_path, "m").command == "pause"  # type: ignore[union-attr]
    assert main(["resume", *flags]) == 0


def test_a_garbled_control_file_is_an_error_and_the_runner_pauses_on_it(tmp_path: Path) -> None:
    control_path(tmp_path, "m").write_text('{"command": "explode"}')
    with pytest.raises(ControlError, match="not a kpigate control file"):
        read_order(tmp_path, "m")
    assert main(["pause", "--model-name", "m", "--state-dir", str(tmp_path)]) == 2
    messages: list[str] = []

    def operator_fixes_it(seconds: float) -> None:  # the runner's sleep while it waits
        write_order(tmp_path, "m", Order("abort", "bob", "t"))

    runner = LocalRunner(
        policy=policy_from_dict(SLOW), registry=None, backend=None, source=None,  # type: ignore[arg-type]
        store=FileStore(tmp_path / "evidence.jsonl"),
        model_name="m", rollout_id="r", control_dir=tmp_path, sleep=operator_fixes_it,
        on_message=messages.append,
    )  # fmt: skip
    decision = runner._heed_operator(50)
    assert messages[0].endswith("pausing until it is fixed")
    assert decision is not None and decision.decision.value == "rollback"
    assert decision.reasons == ("aborted by bob",)
    assert decision.cause.value == "operator" and decision.final
    assert not control_path(tmp_path, "m").exists()
    assert not list(tmp_path.glob(".m.control.*"))  # no temp file left behind

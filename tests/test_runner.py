"""The local runner and the pipeline steps, end to end on real parts: an MLflow server, a
uvicorn router with traffic and late labels flowing, its /metrics, and a JSONL evidence file."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import pytest

from kpigate.backends import BackendSettings, make_backend
from kpigate.engine import Decision
from kpigate.evidence_record import record_of
from kpigate.fraud.registration import register_model
from kpigate.policy import Policy, policy_from_dict
from kpigate.registry.base import CANDIDATE, CHAMPION
from kpigate.registry.mlflow import MlflowRegistry
from kpigate.runner import LocalRunner, RolloutBusy, model_lock
from kpigate.sources.router import RouterScrapeSource
from kpigate.steps.evaluate_gate import judge_evidence
from kpigate.steps.soak_and_collect import soak, stage_windows
from kpigate.store.file import FileStore
from kpigate.workflows.order import ordered_steps
from tests.mlflow_fixtures import FraudFrames, TrainedModels
from tests.serve_fixtures import ADMIN_TOKEN, FixedModel, RouterServer, constant, transactions

POLICY = {
    "name": "runner-test",
    "holdback": 5,
    "max_holds": 3,
    "on_max_holds": "rollback",
    "stages": [
        {"traffic": 50, "soak": "1s", "interval": "0.5s"},
        {"traffic": 100, "soak": "1s", "interval": "0.5s"},
    ],
    "kpis": [
        {"name": "recall", "margin": 0.1, "min_samples": 20},
        {"name": "error_rate", "direction": "lower", "margin": 0.05, "min_samples": 20},
    ],
}


class Traffic:
    """Predictions on fresh cards with their labels right after, until stopped."""

    def __init__(self, router: RouterServer) -> None:
        self.router = router
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0

    def _run(self) -> None:
        cards = count()
        with httpx.Client(base_url=self.router.url, timeout=10) as client:
            while not self.stop.is_set():
                batch = transactions(40, seed=next(cards))
                for tx in batch:
                    tx["card_id"] = f"card-{next(cards)}"
                answers = client.post("/predict", json={"instances": batch}).json()["predictions"]
                labels = [
                    {"request_id": a["request_id"], "label": 1 if i % 3 == 0 else 0}
                    for i, a in enumerate(answers)
                ]
                client.post("/feedback", json=labels)
                self.sent += len(batch)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


@pytest.fixture(scope="module")
def runner_model(
    mlflow_server: str, trained_models: TrainedModels, fraud_frames: FraudFrames
) -> Iterator[tuple[str, str]]:
    """A registered model of its own (aliases move here), champion v1 and candidate v2."""
    name = "kpigate-runner-test"
    frame = fraud_frames.holdout.iloc[:5000]
    register_model(
        trained_models.baseline,
        tracking_uri=mlflow_server,
        eval_frame=frame,
        name=name,
        alias=CHAMPION,
    )
    register_model(
        trained_models.candidate,
        tracking_uri=mlflow_server,
        eval_frame=frame,
        name=name,
        alias=CANDIDATE,
    )
    yield mlflow_server, name


def make_runner(
    policy: Policy, router: RouterServer, tmp_path: Path, tracking_uri: str, name: str
) -> LocalRunner:
    return LocalRunner(
        policy=policy,
        registry=MlflowRegistry(tracking_uri),
        backend=make_backend(
            BackendSettings(kind="router", router_url=router.url, admin_token=ADMIN_TOKEN)
        ),
        source=RouterScrapeSource(router.url),
        store=FileStore(tmp_path / "evidence.jsonl"),
        model_name=name,
        rollout_id="test",
    )


def test_a_sound_candidate_goes_through_every_stage_in_the_dags_order(
    start_router: Any, runner_model: tuple[str, str], tmp_path: Path
) -> None:
    tracking_uri, name = runner_model
    models = {
        "champion": FixedModel("1", score=constant(0.9)),
        "candidate": FixedModel("2", score=constant(0.9)),
    }
    router = start_router(models)
    policy = policy_from_dict(POLICY)
    runner = make_runner(policy, router, tmp_path, tracking_uri, name)
    with Traffic(router):
        outcome = runner.run("candidate")
    assert outcome.action == "promote", outcome.reason
    registry = MlflowRegistry(tracking_uri)
    assert registry.resolve(name, CHAMPION).version == outcome.version == "2"
    state = router.admin().get("/admin/state").json()
    # The new champion serves as the baseline; the candidate arm is detached.
    assert state["detached"] and state["baseline"]["loaded"]
    # The runner's steps, each loop collapsed, are the rendered DAG's happy path.
    collapsed = [s for i, s in enumerate(runner.trace) if i == 0 or runner.trace[i - 1] != s]
    collapsed = [s for i, s in enumerate(collapsed) if s not in collapsed[:i]]
    assert collapsed == ordered_steps(policy)
    records = FileStore(tmp_path / "evidence.jsonl").read()
    assert [r.stage for r in records].count(50) >= 2  # the soak: two looks of 0.5 s
    registry.set_alias(name, CHAMPION, "1")  # leave the model as the next test expects it


def test_a_failing_candidate_is_rolled_back_on_its_error_rate(
    start_router: Any, runner_model: tuple[str, str], tmp_path: Path
) -> None:
    tracking_uri, name = runner_model
    models = {
        "champion": FixedModel("1", score=constant(0.9)),
        "candidate": FixedModel("2", fail=True),
    }
    router = start_router(models)
    runner = make_runner(policy_from_dict(POLICY), router, tmp_path, tracking_uri, name)
    with Traffic(router) as traffic:
        outcome = runner.run("candidate")
        answers = router.client().post("/predict", json=transactions(1, seed=99)[0]).json()
    assert outcome.action == "rollback"
    assert "error_rate" in outcome.reason
    assert traffic.sent > 0
    state = router.admin().get("/admin/state").json()
    assert state["weight"] == 0 and state["detached"]
    assert answers["arm"] == "baseline"
    tags = MlflowRegistry(tracking_uri).get_tags(name, "2")
    assert tags["kpigate.rollout"] == "rolled_back"
    assert MlflowRegistry(tracking_uri).resolve(name, CHAMPION).version == "1"


def test_soak_is_idempotent_and_a_dead_router_gives_stale_windows(tmp_path: Path) -> None:
    policy = policy_from_dict(POLICY)
    store = FileStore(tmp_path / "evidence.jsonl")
    source = RouterScrapeSource("http://127.0.0.1:9")  # nothing listens
    added = soak(policy, store, source, 50, looks=2, interval_s=0.0, rollout="r")
    assert added == 2
    assert soak(policy, store, source, 50, looks=2, interval_s=0.0, rollout="r") == 0
    records = store.read()
    assert [r.window for r in records] == [1, 2]
    assert all(r.stale and r.note.startswith("missing:") for r in records)
    decision = judge_evidence(policy, records, 50)
    assert decision.decision is Decision.HOLD
    assert decision.reasons[0].startswith("stale evidence: missing:")


def test_calibration_windows_are_no_looks_of_the_first_stage(tmp_path: Path) -> None:
    """The demo's bad candidate, rolled back by the gate at window 6, was judged again only at
    window 26: the runner counted the 24 A/A calibration windows (stage 5, like the first
    stage) as looks, so after its first decision it collected 25 windows before the next."""
    policy = policy_from_dict(POLICY)
    store = FileStore(tmp_path / "evidence.jsonl")
    arms = {
        "baseline": {"successes": 80, "trials": 100},
        "candidate": {"successes": 81, "trials": 100},
    }
    for i in range(-24, 0):
        store.append(
            record_of({"window": i, "stage": 50, "kpis": {"recall": arms}, "calibration": True})
        )
    decisions: list[int] = []

    class Stop(Exception):
        pass

    def on_decision(decision: Any) -> None:
        decisions.append(decision.window)
        if len(decisions) == 3:
            raise Stop

    runner = LocalRunner(
        policy=policy, registry=None, backend=None,  # type: ignore[arg-type]
        source=RouterScrapeSource("http://127.0.0.1:9"),  # nothing listens: stale windows
        store=store, model_name="m", rollout_id="r", sleep=lambda s: None,
        on_decision=on_decision,
    )  # fmt: skip
    with pytest.raises(Stop):
        runner._judge_stage(50)
    assert decisions == [1, 2, 3]  # a decision after every window, as soak_and_collect counts
    assert stage_windows(store.read(), 50) == 3 and len(store.read()) == 27


def test_one_rollout_per_model_at_a_time(tmp_path: Path) -> None:
    with model_lock(tmp_path, "fraud"):
        with pytest.raises(RolloutBusy, match="already running"), model_lock(tmp_path, "fraud"):
            pass
        with model_lock(tmp_path, "other-model"):
            pass
    with model_lock(tmp_path, "fraud"):  # released
        pass


def test_shadow_mode_judges_the_candidate_on_copies_while_the_baseline_answers_everything(
    start_router: Any, runner_model: tuple[str, str], tmp_path: Path
) -> None:
    tracking_uri, name = runner_model
    models = {"champion": FixedModel("1", score=constant(0.9)),
              "candidate": FixedModel("2", score=constant(0.9))}  # fmt: skip
    router = start_router(models)
    policy = policy_from_dict({**POLICY, "stages": [*POLICY["stages"][:1], {"traffic": 100}]})
    runner = make_runner(policy, router, tmp_path, tracking_uri, name)
    runner.mode = "shadow"
    seen_arms: set[str] = set()

    def watch(decision: Any) -> None:
        with router.client() as client:
            seen_arms.add(client.post("/predict", json=transactions(1, seed=5)[0]).json()["arm"])

    runner.on_decision = watch
    with Traffic(router):
        decision = runner._judge_stage_after_deploy(50)
    assert decision.decision is Decision.PROMOTE, decision.reasons
    assert seen_arms == {"baseline"}  # shadow: the candidate never answers
    records = FileStore(tmp_path / "evidence.jsonl").read()
    assert all(r.kpis["recall"].candidate for r in records[1:])  # judged on the copies
    MlflowRegistry(tracking_uri).set_alias(name, CHAMPION, "1")


def test_the_runner_s_flags_are_the_steps_own_where_they_mean_the_same() -> None:
    """`kpigate rollout` spells no flag a second time: each flag it shares with a step comes
    from the same definition (steps/inputs.py), with the same type and help; its own flags are
    only where the local runner keeps its state (a local evidence file, locks, the trail)."""
    from kpigate.runner import RolloutInputs
    from kpigate.steps.deploy_stage import DeployStageInputs
    from kpigate.steps.registry_approval import RegistryApprovalInputs
    from kpigate.steps.soak_and_collect import SoakAndCollectInputs

    steps = (RegistryApprovalInputs, DeployStageInputs, SoakAndCollectInputs)
    own = {"evidence", "state_dir", "audit"}
    for name, info in RolloutInputs.model_fields.items():
        if name in own:
            continue
        same = [
            s.__name__ for s in steps
            if name in s.model_fields
            and (s.model_fields[name].annotation, s.model_fields[name].description)
            == (info.annotation, info.description)
        ]  # fmt: skip
        assert same, f"--{name} is defined in kpigate/runner.py, not taken from a step"


def test_a_rollout_may_lengthen_its_windows_between_looks_but_not_change_its_rules(
    start_router: Any, runner_model: tuple[str, str], tmp_path: Path
) -> None:
    """The retime hook (kpigate demo on a machine that slowed): from the 100% stage on, every
    window lasts 1 s instead of 0.5 s and the decisions go on; a hook that changes a margin
    stops the rollout before a window is judged under other rules."""
    tracking_uri, name = runner_model
    models = {
        "champion": FixedModel("1", score=constant(0.9)),
        "candidate": FixedModel("2", score=constant(0.9)),
    }
    router = start_router(models)
    policy = policy_from_dict(POLICY)
    data = policy.model_dump(mode="json")
    longer = policy_from_dict(
        {**data, "stages": [{**s, "soak": 2.0, "interval": 1.0} for s in data["stages"]]}
    )
    assert longer.rules() == policy.rules() and longer != policy
    asked: list[tuple[float, int]] = []

    def retime(stage: float, look: int) -> Policy | None:
        asked.append((stage, look))
        return longer if stage == 100 else None

    runner = make_runner(policy, router, tmp_path, tracking_uri, name)
    runner.retime = retime
    with Traffic(router):
        outcome = runner.run("candidate")
    assert outcome.action == "promote", outcome.reason
    assert runner.policy is longer
    assert asked[0] == (50, 1) and (100, 1) in asked
    records = FileStore(tmp_path / "evidence.jsonl").read()
    lengths = {
        r.stage: float(r.served_to) - float(r.served_from)
        for r in records
        if r.served_to is not None and r.served_from is not None
    }
    assert lengths[100] >= 1.0  # the last window at 100% slept the longer interval
    MlflowRegistry(tracking_uri).set_alias(name, CHAMPION, "1")

    data["kpis"][0]["margin"] = 0.2
    other = policy_from_dict(data)
    assert other.rules() != policy.rules()
    runner = make_runner(policy, router, tmp_path / "other", tracking_uri, name)
    runner.retime = lambda stage, look: other
    with pytest.raises(ValueError, match="not its rules"):
        runner.run("candidate")
    assert FileStore(tmp_path / "other" / "evidence.jsonl").read() == []

"""Every step's exit code, as Argo sees it: service down -> 1 (retried), bad input -> 2,
refused -> 3; one mapping (kpigate/steps/common.py exit_code) from one error base
(kpigate/errors.py). Steps run as the container runs them, `python -m kpigate.steps.<step>`,
against loopback stand-ins that answer as the real services do:

  MLflow      /health and the REST API (mlflow/server/handlers.py: error_code in a JSON body,
              PERMISSION_DENIED -> 403; mlflow/utils/rest_utils.py retries only 429 and 5xx)
  Kubernetes  a kubeconfig pointing at a server answering metav1.Status bodies, as the API
              server does for 5xx, 403 and 404 (kubernetes client: ApiException.status)
  router      the kpigate router's admin API (kpigate/serve/admin.py: 401 on a wrong token)

The WorkflowTemplate retries exit 1 and never 2 or 3 (RETRY in workflows/progressive_delivery.py,
the retryStrategy expression evaluated in argo-workflows workflow/controller/operator.go).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from pytest_httpserver import HTTPServer

from kpigate.steps.common import BAD_INPUT, DONE, REFUSED, RETRY
from tests.manifest_schemas import MANIFESTS

EXAMPLES = Path(__file__).resolve().parent.parent / "kpigate" / "examples"
POLICY = str(EXAMPLES / "policy.yaml")
KSERVE_PATH = "/apis/serving.kserve.io/v1beta1/namespaces/models/inferenceservices/fraud"


def status_body(code: int, message: str) -> str:
    reason = {403: "Forbidden", 404: "NotFound", 500: "InternalError"}.get(code, "Unknown")
    return json.dumps(
        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
         "reason": reason, "code": code}
    )  # fmt: skip


@dataclass
class World:
    """The stand-ins one case runs against, and the environment the step gets."""

    server: HTTPServer
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url_for("").rstrip("/")

    def mlflow(self, health: int = 200, api: int | None = None, code: str = "") -> str:
        self.server.expect_request("/health").respond_with_data("OK", status=health)
        if api is not None:
            body = json.dumps({"error_code": code, "message": f"{code}: not for you"})
            self.server.expect_request(re.compile("^/api/.*")).respond_with_data(
                body, status=api, content_type="application/json"
            )
        self.env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        return self.url

    def kubernetes(self, status: int, message: str) -> None:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
            "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
            "users": [{"name": "sa", "user": {"token": "sa-token"}}],
            "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "sa"}}],
        }  # fmt: skip
        path = self.tmp / "kubeconfig"
        path.write_text(yaml.safe_dump(config))
        self.env["KUBECONFIG"] = str(path)
        self.server.expect_request(KSERVE_PATH).respond_with_data(
            status_body(status, message), status=status, content_type="application/json"
        )

    def router(self, status: int) -> str:
        body = json.dumps({"error": "nope"} if status >= 400 else {"weight": 0, "mode": "canary"})
        self.server.expect_request(re.compile("^/admin/.*")).respond_with_data(
            body, status=status, content_type="application/json"
        )
        self.env["KPIGATE_ADMIN_TOKEN"] = "token"
        return self.url

    def evidence(self) -> str:
        path = self.tmp / "evidence.jsonl"
        lines = (EXAMPLES / "fraud-rollout.jsonl").read_text().splitlines()
        path.write_text("".join(line + "\n" for line in lines if '"rollout":"bad"' in line))
        return str(path)


Case = Callable[[World], list[str]]
KSERVE = ["--backend", "kserve", "--namespace", "models", "--model-name", "fraud"]


def run_step(step: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KUBERNETES_"))}
    return subprocess.run(
        [sys.executable, "-m", f"kpigate.steps.{step}", *args],
        capture_output=True, text=True, timeout=120, env={**clean, **env},
    )  # fmt: skip


def run_in_process(
    step: str,
    args: list[str],
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> subprocess.CompletedProcess[str]:
    """The same entry point without a new interpreter (imports cost seconds on a busy machine).
    Not for Kubernetes: the client reads KUBECONFIG when it is imported."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    module = importlib.import_module(f"kpigate.steps.{step}")
    code = module.main(args)
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


CASES: list[tuple[str, str, Case, int]] = [
    # registry-approval
    ("registry-approval", "MLflow 503", lambda w: ["--model-name", "fraud", "--model-version",
     "3", "--policy", POLICY, "--tracking-uri", w.mlflow(health=503)], RETRY),
    ("registry-approval", "MLflow 403", lambda w: ["--model-name", "fraud", "--model-version",
     "3", "--policy", POLICY, "--tracking-uri", w.mlflow(api=403, code="PERMISSION_DENIED")],
     REFUSED),
    ("registry-approval", "MLflow 500 on the API", lambda w: ["--model-name", "fraud",
     "--model-version", "3", "--policy", POLICY, "--tracking-uri",
     w.mlflow(api=500, code="INTERNAL_ERROR")], RETRY),
    ("registry-approval", "no policy file", lambda w: ["--model-name", "fraud", "--policy",
     str(w.tmp / "missing.yaml"), "--tracking-uri", w.mlflow()], BAD_INPUT),
    # deploy-stage
    ("deploy-stage", "Kubernetes API 500", lambda w: [*KSERVE, "--weight", "5"]
     if w.kubernetes(500, "etcdserver: leader changed") is None else [], RETRY),
    ("deploy-stage", "Kubernetes API 403", lambda w: [*KSERVE, "--weight", "5"]
     if w.kubernetes(403, "inferenceservices is forbidden") is None else [], REFUSED),
    ("deploy-stage", "no such InferenceService", lambda w: [*KSERVE, "--weight", "5"]
     if w.kubernetes(404, "not found") is None else [], BAD_INPUT),
    ("deploy-stage", "router down (503)", lambda w: ["--router-url", w.router(503), "--weight",
     "5"], RETRY),
    ("deploy-stage", "router refuses the token", lambda w: ["--router-url", w.router(401),
     "--weight", "5"], REFUSED),
    ("deploy-stage", "weight 500", lambda w: ["--weight", "500"], BAD_INPUT),
    # soak-and-collect
    ("soak-and-collect", "MLflow 503 (evidence)", lambda w: ["--policy", POLICY, "--stage", "5",
     "--looks", "1", "--interval", "0.01", "--router-url", w.router(200), "--evidence",
     "mlflow://models/fraud/3/wf-1", "--tracking-uri", w.mlflow(health=503)], RETRY),
    ("soak-and-collect", "a stage not in the policy", lambda w: ["--policy", POLICY, "--stage",
     "7", "--evidence", w.evidence()], BAD_INPUT),
    ("soak-and-collect", "a malformed evidence URI", lambda w: ["--policy", POLICY, "--stage",
     "5", "--evidence", "mlflow://models/fraud"], BAD_INPUT),
    # evaluate-gate
    ("evaluate-gate", "MLflow 503 (evidence)", lambda w: ["--policy", POLICY, "--stage", "5",
     "--evidence", "mlflow://models/fraud/3/wf-1", "--tracking-uri", w.mlflow(health=503)],
     RETRY),
    ("evaluate-gate", "MLflow 403 (evidence)", lambda w: ["--policy", POLICY, "--stage", "5",
     "--evidence", "mlflow://models/fraud/3/wf-1", "--tracking-uri",
     w.mlflow(api=403, code="PERMISSION_DENIED")], REFUSED),
    ("evaluate-gate", "a bad policy", lambda w: ["--policy", str(w.tmp / "missing.yaml"),
     "--stage", "5", "--evidence", w.evidence()], BAD_INPUT),
    # the Secret kpigate-audit-key holds a key too short to be secret
    ("evaluate-gate", "an audit key too short", lambda w: ["--policy", POLICY, "--stage", "5",
     "--evidence", w.evidence()] if w.env.update(KPIGATE_AUDIT_KEY="short") is None else [],
     BAD_INPUT),
    # promote-or-rollback
    ("promote-or-rollback", "Kubernetes API 500", lambda w: ["--action", "rollback", *KSERVE,
     "--model-version", "3"] if w.kubernetes(500, "etcd timeout") is None else [], RETRY),
    ("promote-or-rollback", "Kubernetes API 403", lambda w: ["--action", "rollback", *KSERVE,
     "--model-version", "3"] if w.kubernetes(403, "forbidden") is None else [], REFUSED),
    ("promote-or-rollback", "MLflow 503 after the traffic moved", lambda w: ["--action",
     "rollback", "--model-name", "fraud", "--model-version", "3", "--router-url",
     w.router(200), "--tracking-uri", w.mlflow(health=503)], RETRY),
    ("promote-or-rollback", "promote without a version", lambda w: ["--action", "promote",
     "--model-name", "fraud"], BAD_INPUT),
]  # fmt: skip


@pytest.mark.parametrize(
    ("step", "case", "make_args", "expected"),
    CASES,
    ids=[f"{step}: {case}" for step, case, _, _ in CASES],
)
def test_the_exit_code_says_whether_a_retry_can_help(
    step: str,
    case: str,
    make_args: Case,
    expected: int,
    httpserver: HTTPServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    world = World(httpserver, tmp_path)
    args = make_args(world)
    if "KUBECONFIG" in world.env:
        done = run_step(step.replace("-", "_"), args, world.env)
    else:
        done = run_in_process(step.replace("-", "_"), args, world.env, monkeypatch, capfd)
    assert done.returncode == expected, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    kind = {RETRY: "retryable", BAD_INPUT: "bad input", REFUSED: "refused"}[expected]
    assert f"[{kind}, exit {expected}]" in done.stderr


def test_every_step_has_each_kind_of_failure() -> None:
    covered = {(step, code) for step, _, _, code in CASES}
    steps = {step for step, _, _, _ in CASES}
    assert steps == {"registry-approval", "deploy-stage", "soak-and-collect", "evaluate-gate",
                     "promote-or-rollback"}  # fmt: skip
    for step in steps:
        assert (step, RETRY) in covered and (step, BAD_INPUT) in covered, step


def test_the_template_retries_exactly_exit_1() -> None:
    """retryStrategy.expression is evaluated per failed attempt (argo-workflows v3.7.10
    workflow/controller/operator.go, processNodeRetries with lastRetry.exitCode): 1 retried,
    2 and 3 not, a pod Error (eviction, OOM) always."""
    template = yaml.safe_load(
        (MANIFESTS / "argo" / "progressive-delivery.workflowtemplate.yaml").read_text()
    )
    (expression,) = {
        t["retryStrategy"]["expression"] for t in template["spec"]["templates"]
        if "retryStrategy" in t
    }  # fmt: skip

    def retried(status: str, code: int) -> bool:
        text = expression.replace("lastRetry.status", repr(status))
        text = text.replace("asInt(lastRetry.exitCode)", str(code))
        return bool(eval(text.replace("||", " or ").replace("&&", " and ")))

    assert retried("Failed", RETRY)
    assert not retried("Failed", BAD_INPUT) and not retried("Failed", REFUSED)
    assert retried("Error", BAD_INPUT)


def test_a_rollback_moves_traffic_before_it_needs_the_registry(
    httpserver: HTTPServer, tmp_path: Path
) -> None:
    """With MLflow down the rollback still sets weight 0 and detaches, then exits 1 so the retry
    writes the tags: the baseline never waits for the registry."""
    world = World(httpserver, tmp_path)
    router = world.router(200)
    done = run_step("promote_or_rollback", ["--action", "rollback", "--model-name", "fraud",
                    "--model-version", "3", "--router-url", router,
                    "--tracking-uri", world.mlflow(health=503)], world.env)  # fmt: skip
    assert done.returncode == RETRY, done.stderr
    calls = [(r.method, r.path) for r, _ in httpserver.log]
    assert ("PUT", "/admin/state") in calls and ("POST", "/admin/detach") in calls
    assert calls.index(("POST", "/admin/detach")) < calls.index(("GET", "/health"))


def test_the_exit_handler_rolls_back_nothing_when_nothing_was_deployed(
    httpserver: HTTPServer, tmp_path: Path
) -> None:
    """Argo leaves `{{workflow.outputs.parameters.deployed}}` as text when no deploy-stage ran
    (workflow/common/util.go SubstituteParams, unresolved allowed): no traffic call at all."""
    world = World(httpserver, tmp_path)
    router = world.router(200)
    for version in ("{{workflow.outputs.parameters.deployed}}", ""):
        done = run_step("promote_or_rollback", ["--action", "rollback", "--if-deployed",
                        "--model-name", "fraud", "--model-version", version,
                        "--router-url", router], world.env)  # fmt: skip
        assert done.returncode == DONE, done.stderr
        assert "nothing to roll back" in done.stdout
    assert httpserver.log == []


def test_deploy_stage_reports_what_it_deploys_before_changing_traffic(
    httpserver: HTTPServer, tmp_path: Path
) -> None:
    world = World(httpserver, tmp_path)
    out = tmp_path / "out"
    done = run_step("deploy_stage", ["--router-url", world.router(503), "--weight", "5",
                    "--model-version", "7", "--out-dir", str(out)], world.env)  # fmt: skip
    assert done.returncode == RETRY
    assert (out / "deployed").read_text() == "7"  # a partial change is still rolled back


def test_a_granted_continue_suppresses_the_suspend_for_that_many_looks() -> None:
    """evaluate-gate's suspend output after an operator's `continue` with looks=N at a suspend
    whose evaluation said looks=L (the stage had L-1 windows): N more windows without asking."""
    from kpigate.engine import Decision, GateDecision
    from kpigate.steps.evaluate_gate import suspends

    held = GateDecision(window=9, stage=25, decision=Decision.HOLD, reasons=("timeout",),
                        kpis={}, look=6, holds=6, suspend=True)  # fmt: skip
    assert suspends(held, stage_windows=6, grant_from=0, grant=0)  # no grant: as decided
    # suspended at 6 windows (looks=7), the operator granted 2 more looks
    assert not suspends(held, stage_windows=7, grant_from=7, grant=2)
    assert suspends(held, stage_windows=8, grant_from=7, grant=2)
    calm = GateDecision(window=9, stage=25, decision=Decision.HOLD, reasons=("soaking",),
                        kpis={}, look=2, holds=0, suspend=False)  # fmt: skip
    assert not suspends(calm, stage_windows=8, grant_from=7, grant=2)


def test_prometheus_down_during_a_soak_is_a_stale_window_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A metrics source that is down gives missing evidence, which holds: exit 0 with a stale
    window. Exit 1 would be retried and, after the last retry, end in the exit handler's
    rollback: missing evidence must never roll back."""
    evidence = tmp_path / "evidence.jsonl"
    done = run_in_process("soak_and_collect", ["--policy", POLICY, "--stage", "5", "--looks",
                          "1", "--interval", "0.01", "--source", "prometheus",
                          "--prometheus-url", "http://127.0.0.1:9", "--evidence",
                          str(evidence)], {}, monkeypatch, capfd)  # fmt: skip
    assert done.returncode == DONE, done.stderr
    (window,) = [json.loads(line) for line in evidence.read_text().splitlines()]
    assert window["stale"] is True and window["kpis"] == {}
    assert "missing" in window["note"]


def test_a_metrics_source_comes_from_the_factory_like_a_backend() -> None:
    from kpigate.errors import Kind
    from kpigate.sources.base import SourceError
    from kpigate.sources.factory import SOURCES, SourceSettings, make_source

    assert make_source(SourceSettings(kind="router")).name == "router"
    assert set(SOURCES) == {"router", "prometheus", "predlog"}
    bad_settings = (
        SourceSettings(kind="statsd"),
        SourceSettings(kind="prometheus"),
        SourceSettings(kind="predlog"),  # no policy
    )
    for bad in bad_settings:
        with pytest.raises(SourceError) as error:
            make_source(bad)
        assert error.value.kind is Kind.BAD_INPUT


def test_router_and_prometheus_refuse_a_horizon_that_is_not_whole_windows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The routers count a prediction one horizon after it was served (serve/maturity.py), so
    a window's matured counters are one cohort only when the horizon is whole intervals; the
    predlog source reads cohorts exactly and accepts any horizon."""
    from kpigate.errors import Kind
    from kpigate.policy import Policy, policy_from_dict
    from kpigate.sources.base import SourceError
    from kpigate.sources.factory import SourceSettings, make_source

    def policy(horizon: str) -> Policy:
        return policy_from_dict({
            "stages": [{"traffic": 50, "soak": "1h", "interval": "10m"},
                       {"traffic": 100, "soak": "2h", "interval": "20m"}],
            "labels": {"horizon": horizon},
            "kpis": [{"name": "recall", "margin": 0.02}],
        })  # fmt: skip

    uneven = policy("30m")  # 3 windows at 50%, 1.5 at 100%
    assert [s.traffic for s in uneven.uneven_horizon_stages()] == [100]
    assert policy("40m").uneven_horizon_stages() == []
    for kind in ("router", "prometheus"):
        with pytest.raises(SourceError, match=r"stage 100% \(interval 1200s\)") as error:
            make_source(
                SourceSettings(kind=kind, prometheus_url="http://127.0.0.1:9", policy=uneven)
            )
        assert error.value.kind is Kind.BAD_INPUT
    assert make_source(SourceSettings(kind="router", policy=policy("40m"))).name == "router"
    monkeypatch.setenv("KPIGATE_DB_URL", "sqlite://")
    assert make_source(SourceSettings(kind="predlog", policy=uneven)).name == "predlog"

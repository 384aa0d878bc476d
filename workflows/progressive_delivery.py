"""The Argo WorkflowTemplate "progressive-delivery", built with Hera from a rollout policy.

Shape (stages unrolled from policy.stages):

    registry-approval
      -> for each stage t:  deploy-t -> soak-t -> gate-t (judge-stage: evaluate, HOLD loops)
           gate-t PROMOTE  -> next stage (before the last one: optional manual approval)
           gate-t other    -> rollback-t -> rolled-back-t (fails the workflow on purpose)
      -> promote (after the last stage's PROMOTE)
    onExit: roll back when the workflow did not succeed (failed, errored or stopped), and only
            if it deployed the candidate (deploy-stage's global output `deployed`)

Every edge is gated on `<task>.Succeeded` (never a bare `depends: <task>`, which Argo also
satisfies when the task was skipped) and, after a gate, on the gate's decision.

Evidence (the per-window KPI counts collected so far) lives outside the pods, at the URI passed
to soak-and-collect, evaluate-gate and promote-or-rollback as `--evidence`:
`<evidence-store>/<model-name>/<version>/<workflow name>`, where <version> is the number
registry-approval resolved (the argument may be an alias or empty) and every later step takes as
its input `version`. With the default store
`mlflow://models` that is the candidate version's MLflow run artifacts; a path on a mounted
volume works too. Keyed by the workflow's name, it survives step boundaries, step retries,
resume after a suspend and `argo retry` (same name), while `argo resubmit` (a new name)
starts a fresh rollout from the first stage with fresh evidence, as it redeploys from there.
Argo artifacts would not do: a retried step cannot read outputs of its own failed attempt.

Needs Argo Workflows >= 3.6 (`synchronization.mutexes`; reviewed against v3.7.10) and Hera
>= 5.19, which knows the field (older Hera drops it silently, and the mutex with it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hera.workflows import (
    DAG,
    Container,
    Env,
    Parameter,
    RetryStrategy,
    SecretEnv,
    Step,
    Steps,
    Suspend,
    Task,
    WorkflowTemplate,
)
from hera.workflows import models as m

from kpigate import __version__
from kpigate.audit_chain import KEY_ENV
from kpigate.policy import Policy
from kpigate.sources.predlog import DB_URL_ENV
from kpigate.steps.deploy_stage import DeployStageInputs
from kpigate.steps.evaluate_gate import EvaluateGateInputs
from kpigate.steps.promote_or_rollback import PromoteOrRollbackInputs
from kpigate.steps.registry_approval import RegistryApprovalInputs
from kpigate.steps.soak_and_collect import SoakAndCollectInputs
from kpigate.steps.spec import StepInputs, argo_flags, argo_inputs, wf

TEMPLATE_NAME = "progressive-delivery"
SERVICE_ACCOUNT = "kpigate-steps"
POLICY_DIR = "/etc/kpigate/policy"
POLICY_FILE = f"{POLICY_DIR}/policy.yaml"  # the ConfigMap must hold the key policy.yaml
OUT_DIR = "/tmp/outputs"
ADMIN_TOKEN_SECRET = "kpigate-router-admin"  # key `token`; optional unless backend=router
# Optional Secrets (the template works without them): the audit trail's HMAC key, for the steps
# that append to the trail (kpigate/audit_chain.py), and the prediction log's database URL, for
# soak-and-collect with metrics-source=predlog (kpigate/sources/predlog.py). Never in argv.
AUDIT_KEY_SECRET = "kpigate-audit-key"  # key `key`
PREDLOG_DB_SECRET = "kpigate-predlog-db"  # key `url`
DEFAULT_IMAGE = f"kpigate-step:{__version__}"

# name -> (default or None when required, description, enum)
ARGUMENTS: dict[str, tuple[str | None, str, list[str] | None]] = {
    "model-name": ("fraud", "Registered model name in the MLflow registry.", None),
    "model-version": (
        None,
        "Model version to roll out: a number (e.g. 7), an alias, or empty for the alias "
        "candidate. registry-approval resolves it once; every later step uses that number. The "
        "MLflow trigger fills it in from the registry event.",
        None,
    ),
    "policy-configmap": (
        "kpigate-policy",
        "ConfigMap holding the rollout policy under the key policy.yaml (create it with: "
        "kubectl create configmap kpigate-policy --from-file=policy.yaml=manifests/policy.yaml).",
        None,
    ),
    "backend": (
        "router",
        "Traffic backend that moves the candidate's share: the kpigate router, a KServe "
        "InferenceService, a Seldon Core v1 SeldonDeployment or an Istio VirtualService.",
        ["router", "kserve", "seldon", "istio"],
    ),
    "traffic-mode": (
        "canary",
        "canary: the candidate answers its share of requests; shadow: it scores a copy of "
        "them while the baseline answers (router, Istio, Seldon; not KServe).",
        ["canary", "shadow"],
    ),
    "backend-namespace": (
        "",
        "Namespace of the InferenceService, SeldonDeployment or VirtualService "
        "(empty: the workflow's namespace). Not used by the router backend.",
        None,
    ),
    "backend-resource": (
        "",
        "Name of the InferenceService, SeldonDeployment or VirtualService (empty: the model "
        "name, for every step that changes traffic). Not used by the router backend.",
        None,
    ),
    "backend-baseline": (
        "baseline",
        "Seldon predictor name / Istio subset of the baseline (the current champion).",
        None,
    ),
    "backend-candidate": (
        "candidate",
        "Seldon predictor name / Istio subset of the candidate.",
        None,
    ),
    "kserve-form": (
        "canaryTrafficPercent",
        "KServe only: spec.predictor.canaryTrafficPercent, or the v0.20 spec.canary list.",
        ["canaryTrafficPercent", "canary"],
    ),
    "router-url": (
        "http://kpigate-router:8080",
        "Base URL of the kpigate router (admin API for the router backend; /metrics for the "
        "router metrics source). The admin token comes from the Secret "
        f"{ADMIN_TOKEN_SECRET} (key token).",
        None,
    ),
    "metrics-source": (
        "router",
        "Where KPI window counts come from: the router's /metrics directly, Prometheus (with "
        "the policy's PromQL KPIs), or predlog: SQL on the prediction log, its database URL "
        f"from the Secret {PREDLOG_DB_SECRET} (key url).",
        ["router", "prometheus", "predlog"],
    ),
    "prometheus-url": (
        "http://prometheus-operated.monitoring:9090",
        "Prometheus base URL, used when metrics-source is prometheus.",
        None,
    ),
    "tracking-uri": (
        "http://mlflow.mlflow:5000",
        "MLflow tracking and registry URI (also set as MLFLOW_TRACKING_URI in every step).",
        None,
    ),
    "evidence-store": (
        "mlflow://models",
        "Where KPI evidence is kept between steps, retries and reruns: mlflow://models keeps "
        "it in the candidate version's MLflow run artifacts; a path (e.g. /evidence on a "
        "mounted volume) works too. The rollout's evidence is "
        "<store>/<model-name>/<model-version>/<workflow name>.",
        None,
    ),
    "manual-approval": (
        "false",
        "true: suspend before the last (100%) stage until an operator resumes with "
        "approve=yes; approve=no rolls back.",
        ["false", "true"],
    ),
    "image": (DEFAULT_IMAGE, "Step container image (images/step.Dockerfile).", None),
}


def task_output(task: str, name: str) -> str:
    """A reference to a DAG task's output parameter."""
    return "{{tasks." + task + ".outputs.parameters." + name + "}}"


VERSION = "{{inputs.parameters.version}}"  # the number registry-approval resolved
EVIDENCE = f"{wf('evidence-store')}/{wf('model-name')}/{VERSION}/{{{{workflow.name}}}}"
# Set by deploy-stage before it first changes traffic (a global output, so the exit handler
# sees it); unset, it stays the literal text (workflow/common/util.go SubstituteParams allows
# unresolved globals) and promote-or-rollback --if-deployed rolls nothing back.
DEPLOYED = "{{workflow.outputs.parameters.deployed}}"
EXIT_EVIDENCE = f"{wf('evidence-store')}/{wf('model-name')}/{DEPLOYED}/{{{{workflow.name}}}}"
# The champion's version when the rollout started: registry-approval's global output, so every
# later step (and the exit handler) sees it without passing it from task to task.
BASELINE = "{{workflow.outputs.parameters.baseline-version}}"

# Steps exit 2 on bad input and 3 when they refuse (e.g. an unapproved version): retrying cannot
# change either, so only crashes, pod errors and network failures are retried. No
# backoff.maxDuration: it counts from the first attempt's start (workflow/controller/operator.go),
# so a soak pod evicted after its 10-minute interval could never be retried.
RETRY = RetryStrategy(
    limit=3,
    retry_policy="Always",
    expression=(
        "lastRetry.status == 'Error' || "
        "(asInt(lastRetry.exitCode) != 2 && asInt(lastRetry.exitCode) != 3)"
    ),
    backoff=m.Backoff(duration="10s", factor=m.IntOrString(root=2)),
)


TOKENS = {"$POLICY": POLICY_FILE, "$EVIDENCE": EVIDENCE, "$OUT_DIR": OUT_DIR,
          "$VERSION": VERSION, "$BASELINE": BASELINE}  # fmt: skip


def step_args(spec: type[StepInputs], **overrides: str | bool) -> dict[str, str | None]:
    """What the template passes a step: its spec's `argo` values (steps/spec.py), with the
    template's own values in place of their tokens."""
    flags = argo_flags(spec, **overrides)
    return {k: TOKENS.get(v, v) if v is not None else None for k, v in flags.items()}


def _secret_env(name: str, secret: str, key: str) -> SecretEnv:
    return SecretEnv(name=name, secret_name=secret, secret_key=key, optional=True)


AUDIT_KEY = _secret_env(KEY_ENV, AUDIT_KEY_SECRET, "key")
PREDLOG_DB_URL = _secret_env(DB_URL_ENV, PREDLOG_DB_SECRET, "url")


def stage_slug(traffic: float) -> str:
    """A task-name-safe label for a stage: 5 -> "5", 12.5 -> "12-5"."""
    return f"{traffic:g}".replace(".", "-")


def _step_container(
    name: str,
    module: str,
    flags: Mapping[str, str | None],
    outputs: dict[str, str] | None = None,
    retry: bool = True,
    global_outputs: dict[str, str] | None = None,
    secrets: Sequence[SecretEnv] = (),
) -> Container:
    """A step that runs `python -m kpigate.steps.<module>` with the policy mounted; its inputs
    are the template inputs its arguments reference."""
    inputs = argo_inputs(flags)
    return Container(
        name=name,
        image=wf("image"),
        command=["python", "-m", f"kpigate.steps.{module}"],
        args=[
            item
            for flag, value in flags.items()
            for item in ((flag,) if value is None else (flag, value))
        ],
        inputs=[Parameter(name=n) for n in inputs],
        outputs=[
            Parameter(
                name=n,
                value_from=m.ValueFrom(path=f"{OUT_DIR}/{f}"),
                global_name=(global_outputs or {}).get(n),
            )
            for n, f in (outputs or {}).items()
        ],
        env=[
            Env(name="MLFLOW_TRACKING_URI", value=wf("tracking-uri")),
            Env(name="PYTHONUNBUFFERED", value="1"),
            SecretEnv(
                name="KPIGATE_ADMIN_TOKEN",
                secret_name=ADMIN_TOKEN_SECRET,
                secret_key="token",
                optional=True,
            ),
            *secrets,
        ],
        volume_mounts=[m.VolumeMount(name="policy", mount_path=POLICY_DIR, read_only=True)],
        retry_strategy=RETRY if retry else None,
    )


def _decision(task: str) -> str:
    return task_output(task, "decision")


def build(policy: Policy) -> WorkflowTemplate:
    """The WorkflowTemplate for a policy's stages; the steps read the policy itself at run time
    from the ConfigMap, so only the number and weights of the stages are fixed here."""
    arguments = [
        Parameter(name=n, description=d, enum=e)
        if v is None
        else Parameter(name=n, value=v, description=d, enum=e)
        for n, (v, d, e) in ARGUMENTS.items()
    ]
    with WorkflowTemplate(
        name=TEMPLATE_NAME,
        annotations={
            "workflows.argoproj.io/description": (
                "Progressive delivery of an MLflow model version through "
                + " -> ".join(f"{s.traffic:g}%" for s in policy.stages)
                + " of traffic, gated by quality KPIs (kpigate)."
            ),
            "kpigate.io/policy": policy.name,
        },
        labels={"app.kubernetes.io/part-of": "kpigate"},
        entrypoint="rollout",
        on_exit="exit-handler",
        service_account_name=SERVICE_ACCOUNT,
        arguments=arguments,
        # One rollout per model at a time: a second one waits for the first to finish.
        synchronization=m.Synchronization(
            mutexes=[m.Mutex(name=f"kpigate-rollout-{wf('model-name')}")]
        ),
        volumes=[
            m.Volume(name="policy", config_map=m.ConfigMapVolumeSource(name=wf("policy-configmap")))
        ],
    ) as template:
        # Every step's arguments and inputs come from its one definition (steps/<step>.py
        # *Inputs, the shared ones in steps/inputs.py and kpigate/backends/cli.py).
        registry_approval = _step_container(
            "registry-approval",
            "registry_approval",
            step_args(RegistryApprovalInputs),
            outputs={
                "version": "version",
                "approved": "approved",
                "reason": "reason",
                "baseline-version": "baseline-version",
            },
            global_outputs={"baseline-version": "baseline-version"},
        )
        # --model-name is the default resource name, as for promote-or-rollback; --rollout-id
        # refuses (exit 3) when this workflow was rolled back: `argo retry` after it.
        deploy_stage = _step_container(
            "deploy-stage",
            "deploy_stage",
            step_args(DeployStageInputs),
            outputs={"deployed": "deployed"},
            global_outputs={"deployed": "deployed"},
        )
        soak_and_collect = _step_container(
            "soak-and-collect", "soak_and_collect", step_args(SoakAndCollectInputs),
            secrets=[PREDLOG_DB_URL],
        )  # fmt: skip
        evaluate_gate = _step_container(
            "evaluate-gate",
            "evaluate_gate",
            step_args(EvaluateGateInputs),
            # No explanation output: ~7.6 KB per look in the workflow status, read by nothing,
            # pushes a long rollout toward etcd's object size limit. The log and the audit
            # trail carry the explanation.
            outputs={
                "decision": "decision",
                "cause": "cause",
                "suspend": "suspend",
                "looks": "looks",
            },
            secrets=[AUDIT_KEY],
        )
        # The operator's promote or rollback at a suspend, recorded as the stage's decision
        # with cause `operator` (in the trail, the report, the notification), not the gate's.
        operator_decision = _step_container(
            "operator-decision",
            "evaluate_gate",
            step_args(
                EvaluateGateInputs,
                operator="{{inputs.parameters.action}}",
                grant_from=False,
                grant=False,
            ),
            outputs={"decision": "decision", "cause": "cause"},
            secrets=[AUDIT_KEY],
        )
        promote_or_rollback = _step_container(
            "promote-or-rollback",
            "promote_or_rollback",
            step_args(PromoteOrRollbackInputs),
            secrets=[AUDIT_KEY],
        )
        # The exit handler sees no task outputs: it rolls back the version deploy-stage
        # reported, and nothing when no deploy ran (a rejection, a failure before 5%).
        exit_rollback = _step_container(
            "exit-rollback",
            "promote_or_rollback",
            step_args(
                PromoteOrRollbackInputs,
                action="rollback",
                if_deployed=True,
                model_version=DEPLOYED,
                evidence=EXIT_EVIDENCE,
            ),
            secrets=[AUDIT_KEY],
        )
        # Ends a rolled-back rollout as Failed, with the reason as the node's message, so a
        # rollback never looks like a quiet success in the UI, the CLI or a CI gate.
        # FallbackToLogsOnError: the reason printed on exit becomes the container's termination
        # message, which Argo appends to the node's message (workflow/controller/operator.go).
        rolled_back = Container(
            name="rolled-back",
            image=wf("image"),
            command=["python", "-c", "import sys; sys.exit(sys.argv[1])"],
            args=["{{inputs.parameters.reason}}"],
            inputs=[Parameter(name="reason")],
            termination_message_policy="FallbackToLogsOnError",
        )
        # At a suspend (hold limit reached, on_max_holds: suspend) the operator chooses, through
        # suspend inputs with defaults so that a plain `argo resume` works (util.go, as for
        # manual-approval): continue for N more looks without suspending again, promote the
        # stage, or roll back.
        choice_help = (
            "continue: collect and judge `looks` more windows without suspending again; "
            "promote: pass this stage; rollback: roll back now"
        )
        looks_help = "with continue: how many more looks before the gate may suspend again"
        wait_for_operator = Suspend(
            name="wait-for-operator",
            inputs=[
                Parameter(
                    name="action",
                    default="continue",
                    enum=["continue", "promote", "rollback"],
                    description=choice_help,
                ),
                Parameter(name="looks", default="3", description=looks_help),
            ],
            outputs=[
                Parameter(
                    name=name,
                    description=text,
                    value_from=m.ValueFrom(supplied=m.SuppliedValueFrom(), default=default),
                )
                for name, default, text in (
                    ("action", "continue", choice_help),
                    ("looks", "3", looks_help),
                )
            ],
        )
        # Inputs and a supplied output with a default, spelled out: Hera's intermediate
        # parameters drop the default, and without one `argo resume` fails with "raw output
        # parameter 'approve' has not been set" (workflow/util/util.go). Resuming the
        # approval is the approval; `argo node set ... approve=no` then resume declines.
        approve_help = "yes: go to the last stage (100%); no: roll back"
        ask_approval = Suspend(
            name="manual-approval",
            inputs=[
                Parameter(
                    name="approve", default="yes", enum=["yes", "no"], description=approve_help
                )
            ],
            outputs=[
                Parameter(
                    name="approve",
                    description=approve_help,
                    value_from=m.ValueFrom(supplied=m.SuppliedValueFrom(), default="yes"),
                )
            ],
        )

        # HOLD loops inside the stage: evaluate; when the step says so (the policy's hold limit
        # reached and on_max_holds: suspend), wait for `argo resume`; on HOLD collect one more
        # interval and judge again. The stage's decision is the first non-HOLD one. The soak is
        # this loop too (the gate holds with "soaking" until the soak's last look), so a harmful
        # candidate is rolled back at the first look with enough evidence. `looks` (from
        # evaluate-gate) is the stage's window count plus one: collecting up to it is
        # idempotent, so a retried collect step never adds a second window.
        grant = {"grant-from": "{{inputs.parameters.grant-from}}",
                 "grant": "{{inputs.parameters.grant}}"}  # fmt: skip
        with Steps(
            name="judge-stage",
            inputs=[
                Parameter(name="stage"),
                Parameter(name="version"),
                # An operator's "continue for N looks": no suspend before the stage has
                # grant-from - 1 + grant windows (0, 0: no grant).
                Parameter(name="grant-from", default="0"),
                Parameter(name="grant", default="0"),
            ],
            outputs=[
                Parameter(
                    name=name,
                    value_from=m.ValueFrom(
                        expression=(
                            "steps.evaluate.outputs.parameters.decision != 'hold'"
                            f" ? steps.evaluate.outputs.parameters.{name}"
                            " : (steps.evaluate.outputs.parameters.suspend == 'true'"
                            f" ? steps.ask.outputs.parameters.{name}"
                            f" : steps.rejudge.outputs.parameters.{name})"
                        )
                    ),
                )
                for name in ("decision", "cause")
            ],
        ):
            stage = {"stage": "{{inputs.parameters.stage}}", "version": VERSION}
            Step(name="evaluate", template=evaluate_gate, arguments={**stage, **grant})
            Step(
                name="ask",
                template="operator-choice",
                arguments={**stage, "looks": "{{steps.evaluate.outputs.parameters.looks}}"},
                when="{{steps.evaluate.outputs.parameters.suspend}} == true",
            )
            hold = (
                "{{steps.evaluate.outputs.parameters.decision}} == hold && "
                "{{steps.evaluate.outputs.parameters.suspend}} != true"
            )
            Step(
                name="collect",
                template=soak_and_collect,
                arguments={**stage, "looks": "{{steps.evaluate.outputs.parameters.looks}}"},
                when=hold,
            )
            Step(
                name="rejudge",
                template="judge-stage",
                arguments={**stage, **grant},
                when=hold,
            )

        with Steps(
            name="operator-choice",
            inputs=[Parameter(name="stage"), Parameter(name="version"), Parameter(name="looks")],
            outputs=[
                Parameter(
                    name=name,
                    value_from=m.ValueFrom(
                        expression=(
                            "steps.wait.outputs.parameters.action == 'continue'"
                            f" ? steps.rejudge.outputs.parameters.{name}"
                            f" : steps.record.outputs.parameters.{name}"
                        )
                    ),
                )
                for name in ("decision", "cause")
            ],
        ):
            stage = {"stage": "{{inputs.parameters.stage}}", "version": VERSION}
            Step(name="wait", template=wait_for_operator)
            more = "{{steps.wait.outputs.parameters.action}} == continue"
            Step(
                name="record",
                template=operator_decision,
                arguments={**stage, "action": "{{steps.wait.outputs.parameters.action}}"},
                when="{{steps.wait.outputs.parameters.action}} != continue",
            )
            Step(
                name="collect",
                template=soak_and_collect,
                arguments={**stage, "looks": "{{inputs.parameters.looks}}"},
                when=more,
            )
            Step(
                name="rejudge",
                template="judge-stage",
                arguments={
                    **stage,
                    "grant-from": "{{inputs.parameters.looks}}",
                    "grant": "{{steps.wait.outputs.parameters.looks}}",
                },
                when=more,
            )

        with Steps(
            name="approval-gate",
            inputs=[Parameter(name="required")],
            outputs=[
                Parameter(
                    name="approve",
                    value_from=m.ValueFrom(
                        expression=(
                            "inputs.parameters.required == 'true'"
                            " ? steps.ask.outputs.parameters.approve : 'yes'"
                        )
                    ),
                )
            ],
        ):
            Step(
                name="ask",
                template=ask_approval,
                when="{{inputs.parameters.required}} == true",
            )

        with Steps(name="exit-handler"):
            Step(
                name="rollback-unless-succeeded",
                template=exit_rollback,
                when="{{workflow.status}} != Succeeded",
            )

        with DAG(name="rollout"):
            _rollout_tasks(
                policy,
                registry_approval,
                deploy_stage,
                soak_and_collect,
                promote_or_rollback,
                rolled_back,
            )
    return template


def _rollout_tasks(
    policy: Policy,
    registry_approval: Container,
    deploy_stage: Container,
    soak_and_collect: Container,
    promote_or_rollback: Container,
    rolled_back: Container,
) -> None:
    Task(name="registry-approval", template=registry_approval)
    # A rejection is an answer: the step exits 0 with approved=false, and this ends Failed.
    approved = task_output("registry-approval", "approved")
    version = {"version": task_output("registry-approval", "version")}
    Task(
        name="rejected",
        template=rolled_back,
        arguments={
            "reason": "registry-approval rejected the version: "
            + task_output("registry-approval", "reason")
        },
        depends="registry-approval.Succeeded",
        when=f"{approved} != true",
    )
    after, when = "registry-approval.Succeeded", f"{approved} == true"
    last = len(policy.stages) - 1
    for index, stage in enumerate(policy.stages):
        slug = stage_slug(stage.traffic)
        if index == last:
            # Optional manual approval before the last stage: "no" rolls back.
            approve = f"approve-{slug}"
            Task(
                name=approve,
                template="approval-gate",
                arguments={"required": wf("manual-approval")},
                depends=after,
                when=when,
            )
            answer = task_output(approve, "approve")
            _roll_back(
                f"declined-{slug}",
                promote_or_rollback,
                rolled_back,
                version,
                depends=f"{approve}.Succeeded",
                when=f"{answer} != yes",
                reason=f"rolled back: the operator declined the {stage.traffic:g}% stage",
            )
            after, when = f"{approve}.Succeeded", f"{answer} == yes"
        weight = policy.candidate_weight(stage)
        Task(
            name=f"deploy-{slug}",
            template=deploy_stage,
            arguments={"weight": f"{weight:g}", **version},
            depends=after,
            when=when,
        )
        Task(
            name=f"soak-{slug}",
            template=soak_and_collect,
            # The first window only; judge-stage collects the rest of the soak look by look.
            arguments={"stage": f"{stage.traffic:g}", "looks": "1", **version},
            depends=f"deploy-{slug}.Succeeded",
        )
        gate = f"gate-{slug}"
        Task(
            name=gate,
            template="judge-stage",
            arguments={"stage": f"{stage.traffic:g}", **version},
            depends=f"soak-{slug}.Succeeded",
        )
        # Anything but PROMOTE rolls back: a decision the template does not know must not
        # end in a quiet success.
        _roll_back(
            f"rollback-{slug}",
            promote_or_rollback,
            rolled_back,
            version,
            depends=f"{gate}.Succeeded",
            when=f"{_decision(gate)} != promote",
            reason=f"rolled back at the {stage.traffic:g}% stage: decided "
            + _decision(gate)
            + ", cause "
            + task_output(gate, "cause"),
        )
        after, when = f"{gate}.Succeeded", f"{_decision(gate)} == promote"
    Task(
        name="promote",
        template=promote_or_rollback,
        arguments={"action": "promote", **version},
        depends=after,
        when=when,
    )


def _roll_back(
    name: str,
    promote_or_rollback: Container,
    rolled_back: Container,
    version: dict[str, str],
    depends: str,
    when: str,
    reason: str,
) -> None:
    Task(
        name=name,
        template=promote_or_rollback,
        arguments={"action": "rollback", **version},
        depends=depends,
        when=when,
    )
    Task(
        name=f"{name}-end",
        template=rolled_back,
        arguments={"reason": reason},
        depends=f"{name}.Succeeded",
    )


def render(policy: Policy) -> str:
    """The WorkflowTemplate as YAML, exactly as checked in under manifests/argo/."""
    header = (
        "# Generated by `kpigate render-workflow` from manifests/policy.yaml: do not edit.\n"
        "# Source: workflows/progressive_delivery.py\n"
    )
    text: str = build(policy).to_yaml()
    return header + text


def manifest(policy: Policy) -> dict[str, Any]:
    data: dict[str, Any] = build(policy).to_dict()
    return data

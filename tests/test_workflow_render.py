"""The rendered WorkflowTemplate: golden file, Argo schema, gating on Succeeded and decisions."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kpigate.cli import main
from kpigate.policy import Kpi, Policy, Stage, load_policy
from kpigate.steps.spec import StepInputs, flag, parse
from kpigate.workflows.order import dag_tasks, dependencies, ordered_steps
from kpigate.workflows.progressive_delivery import ARGUMENTS, manifest, step_args
from kpigate.workflows.render import CONFIGMAP_FILE, WORKFLOW_FILE, rendered_files
from tests.manifest_schemas import MANIFESTS, argo_errors

POLICY_FILE = MANIFESTS / "policy.yaml"
RESOLVED = {"name": "version", "value": "{{tasks.registry-approval.outputs.parameters.version}}"}


@pytest.fixture(scope="module")
def checked_in() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((MANIFESTS / WORKFLOW_FILE).read_text())
    return data


def test_checked_in_manifests_match_a_fresh_render() -> None:
    for relative, text in rendered_files(POLICY_FILE).items():
        assert (MANIFESTS / relative).read_text() == text, (
            f"manifests/{relative} is stale: run `kpigate render-workflow`"
        )


def test_render_cli_check_reports_stale_files(tmp_path: Path, capsys: Any) -> None:
    out = str(tmp_path)
    assert main(["render-workflow", "--policy", str(POLICY_FILE), "--out", out, "--check"]) == 1
    assert main(["render-workflow", "--policy", str(POLICY_FILE), "--out", out]) == 0
    assert main(["render-workflow", "--policy", str(POLICY_FILE), "--out", out, "--check"]) == 0
    assert (tmp_path / CONFIGMAP_FILE).read_text() == (MANIFESTS / CONFIGMAP_FILE).read_text()
    assert main(["render-workflow", "--policy", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read the policy file" in capsys.readouterr().err


def test_default_policy_loads_and_covers_table_2() -> None:
    policy = load_policy(POLICY_FILE)
    assert [s.traffic for s in policy.stages] == [5, 25, 50, 100]
    assert {k.category.value for k in policy.kpis} == {
        "performance",
        "operational",
        "business",
        "ethical",
    }


def test_rendered_template_matches_the_argo_schema(checked_in: dict[str, Any]) -> None:
    assert argo_errors(checked_in) == []


@pytest.mark.parametrize(
    ("where", "typo"),
    [
        ((), "entrypiont"),
        (("templates", 0), "retryStrateg"),
        (("templates", 0, "container"), "comand"),
    ],
)
def test_an_injected_typo_is_rejected(
    checked_in: dict[str, Any], where: tuple[Any, ...], typo: str
) -> None:
    broken = copy.deepcopy(checked_in)
    node: Any = broken["spec"]
    for key in where:
        node = node[key]
    node[typo] = "x"
    assert any(typo in e for e in argo_errors(broken))


def test_configmap_is_a_valid_kubernetes_object() -> None:
    import kubernetes_validate

    configmap = yaml.safe_load((MANIFESTS / CONFIGMAP_FILE).read_text())
    kubernetes_validate.validate(configmap, "1.30", strict=True)
    assert configmap["data"]["policy.yaml"] == POLICY_FILE.read_text()


def _by_name(tasks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in tasks}


def test_every_edge_waits_for_success_and_the_gate_decision(checked_in: dict[str, Any]) -> None:
    tasks = _by_name(dag_tasks(checked_in))
    for task in tasks.values():
        depends = task.get("depends")
        if task["name"] == "registry-approval":
            assert depends is None
            continue
        # Exactly one predecessor, and only its success counts (never a bare name, which
        # Argo also satisfies when the predecessor was skipped).
        assert re.fullmatch(r"[\w-]+\.Succeeded", depends or ""), task
    chain = [("registry-approval", "approved", "== true")]
    for slug in ("5", "25", "50"):
        chain.append((f"gate-{slug}", "decision", "== promote"))
    for (gate, output, condition), slug in zip(chain, ("5", "25", "50", None), strict=True):
        reference = f"{{{{tasks.{gate}.outputs.parameters.{output}}}}}"
        if slug is None:  # the last stage goes through the approval gate
            approve = tasks["approve-100"]
            assert approve["depends"] == f"{gate}.Succeeded"
            assert approve["when"] == f"{reference} {condition}"
            deploy = tasks["deploy-100"]
            assert deploy["depends"] == "approve-100.Succeeded"
            assert deploy["when"] == "{{tasks.approve-100.outputs.parameters.approve}} == yes"
            continue
        deploy = tasks[f"deploy-{slug}"]
        assert deploy["depends"] == f"{gate}.Succeeded"
        assert deploy["when"] == f"{reference} {condition}"
        assert tasks[f"soak-{slug}"]["depends"] == f"deploy-{slug}.Succeeded"
        assert tasks[f"gate-{slug}"]["depends"] == f"soak-{slug}.Succeeded"
        assert tasks[f"gate-{slug}"]["template"] == "judge-stage"
    promote = tasks["promote"]
    assert promote["depends"] == "gate-100.Succeeded"
    assert promote["when"] == "{{tasks.gate-100.outputs.parameters.decision}} == promote"


def test_every_decision_but_promote_rolls_back_and_fails(checked_in: dict[str, Any]) -> None:
    tasks = _by_name(dag_tasks(checked_in))
    for slug in ("5", "25", "50", "100"):
        rollback = tasks[f"rollback-{slug}"]
        assert rollback["depends"] == f"gate-{slug}.Succeeded"
        assert (
            rollback["when"] == f"{{{{tasks.gate-{slug}.outputs.parameters.decision}}}} != promote"
        )
        assert rollback["arguments"]["parameters"] == [
            {"name": "action", "value": "rollback"},
            RESOLVED,
        ]
        assert tasks[f"rollback-{slug}-end"]["template"] == "rolled-back"
    declined = tasks["declined-100"]
    assert declined["when"] == "{{tasks.approve-100.outputs.parameters.approve}} != yes"
    assert tasks["declined-100-end"]["template"] == "rolled-back"
    assert tasks["rejected"]["template"] == "rolled-back"
    templates = {t["name"]: t for t in checked_in["spec"]["templates"]}
    # The end of a rolled-back rollout exits non-zero, so the workflow ends Failed; its reason
    # reaches the node's message through the termination message (operator.go: "%s (exit code
    # %d): %s" with the container's terminated.message).
    container = templates["rolled-back"]["container"]
    assert container["command"][-1] == "import sys; sys.exit(sys.argv[1])"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_hold_loops_within_the_stage_and_can_suspend(checked_in: dict[str, Any]) -> None:
    templates = {t["name"]: t for t in checked_in["spec"]["templates"]}
    judge = templates["judge-stage"]
    steps = {s["name"]: s for group in judge["steps"] for s in group}
    assert [group[0]["name"] for group in judge["steps"]] == [
        "evaluate",
        "ask",
        "collect",
        "rejudge",
    ]
    assert steps["evaluate"]["template"] == "evaluate-gate"
    assert steps["ask"]["template"] == "operator-choice"
    assert steps["ask"]["when"] == "{{steps.evaluate.outputs.parameters.suspend}} == true"
    hold = (
        "{{steps.evaluate.outputs.parameters.decision}} == hold && "
        "{{steps.evaluate.outputs.parameters.suspend}} != true"
    )
    assert steps["collect"]["when"] == hold and steps["rejudge"]["when"] == hold
    # One more window than the stage has (an output of evaluate-gate): idempotent on retry.
    looks = {"name": "looks", "value": "{{steps.evaluate.outputs.parameters.looks}}"}
    assert looks in steps["collect"]["arguments"]["parameters"]
    assert steps["rejudge"]["template"] == "judge-stage"  # recursion
    expression = judge["outputs"]["parameters"][0]["valueFrom"]["expression"]
    assert "steps.rejudge.outputs.parameters.decision" in expression
    assert "steps.ask.outputs.parameters.decision" in expression


def test_at_a_suspend_the_operator_continues_promotes_or_rolls_back(
    checked_in: dict[str, Any],
) -> None:
    """The suspend's choices are inputs with defaults and supplied outputs with defaults, so a
    plain `argo resume` continues (OverrideOutputParametersWithDefault, argo-workflows v3.7.10
    workflow/util/util.go) and `argo node set --output-parameter action=promote` (or the UI's
    resume dialog) picks another; continue grants N looks before the gate may suspend again."""
    templates = {t["name"]: t for t in checked_in["spec"]["templates"]}
    wait = templates["wait-for-operator"]
    inputs = {p["name"]: p for p in wait["inputs"]["parameters"]}
    assert inputs["action"]["enum"] == ["continue", "promote", "rollback"]
    assert inputs["action"]["default"] == "continue" and inputs["looks"]["default"] == "3"
    outputs = {p["name"]: p["valueFrom"] for p in wait["outputs"]["parameters"]}
    assert outputs == {
        "action": {"supplied": {}, "default": "continue"},
        "looks": {"supplied": {}, "default": "3"},
    }
    choice = templates["operator-choice"]
    steps = {s["name"]: s for group in choice["steps"] for s in group}
    assert steps["wait"]["template"] == "wait-for-operator"
    more = "{{steps.wait.outputs.parameters.action}} == continue"
    assert steps["collect"]["when"] == more and steps["rejudge"]["when"] == more
    granted = {p["name"]: p["value"] for p in steps["rejudge"]["arguments"]["parameters"]}
    assert granted["grant-from"] == "{{inputs.parameters.looks}}"
    assert granted["grant"] == "{{steps.wait.outputs.parameters.looks}}"
    # promote or rollback become the stage's decision, which the DAG already acts on, through
    # operator-decision (evaluate-gate --operator), which records it with cause `operator`
    assert steps["record"]["template"] == "operator-decision"
    assert steps["record"]["when"] == "{{steps.wait.outputs.parameters.action}} != continue"
    chosen = {"name": "action", "value": "{{steps.wait.outputs.parameters.action}}"}
    assert chosen in steps["record"]["arguments"]["parameters"]
    outputs = {p["name"]: p["valueFrom"]["expression"] for p in choice["outputs"]["parameters"]}
    for name in ("decision", "cause"):
        assert outputs[name].endswith(f": steps.record.outputs.parameters.{name}")
    record = templates["operator-decision"]["container"]["args"]
    assert record[record.index("--operator") + 1] == "{{inputs.parameters.action}}"
    assert "--grant" not in record  # a recorded choice never suspends
    args = templates["evaluate-gate"]["container"]["args"]
    assert args[args.index("--grant") + 1] == "{{inputs.parameters.grant}}"
    assert "--operator" not in args


def test_manual_approval_can_be_given_with_argo_resume(checked_in: dict[str, Any]) -> None:
    """`argo resume` fills every supplied output from valueFrom.default and fails without one
    ("raw output parameter 'approve' has not been set": OverrideOutputParametersWithDefault,
    argo-workflows v3.7.10 workflow/util/util.go): resuming approves; `argo node set
    --output-parameter approve=no` before resuming declines (docs/operators.md)."""
    templates = {t["name"]: t for t in checked_in["spec"]["templates"]}
    ask = templates["manual-approval"]
    (param,) = ask["inputs"]["parameters"]
    assert param["name"] == "approve" and param["enum"] == ["yes", "no"]
    assert param["default"] == "yes"
    for output in ask["outputs"]["parameters"]:
        assert output["valueFrom"] == {"supplied": {}, "default": "yes"}


def test_exit_handler_mutex_retries_and_policy_volume(checked_in: dict[str, Any]) -> None:
    spec = checked_in["spec"]
    templates = {t["name"]: t for t in spec["templates"]}
    assert spec["onExit"] == "exit-handler"
    (step,) = templates["exit-handler"]["steps"][0]
    assert step["when"] == "{{workflow.status}} != Succeeded"
    assert step["template"] == "exit-rollback"
    assert spec["synchronization"] == {
        "mutexes": [{"name": "kpigate-rollout-{{workflow.parameters.model-name}}"}]
    }
    assert spec["volumes"] == [
        {"name": "policy", "configMap": {"name": "{{workflow.parameters.policy-configmap}}"}}
    ]
    networked = [t for t in spec["templates"] if "container" in t and t["name"] != "rolled-back"]
    assert len(networked) == 7
    for template in networked:
        retry = template["retryStrategy"]
        assert retry["limit"] == 3 and retry["backoff"]["factor"] == 2, template["name"]
        assert template["container"]["command"][:2] == ["python", "-m"]


def test_a_soak_can_be_retried_after_its_first_attempt_s_start(checked_in: dict[str, Any]) -> None:
    """backoff.maxDuration is a deadline from the first attempt's StartedAt (argo-workflows
    v3.7.10 workflow/controller/operator.go, processNodeRetries): a soak pod sleeps a whole
    interval (10 min by default), so any maxDuration below soak + retries fails the retry."""
    for template in checked_in["spec"]["templates"]:
        if "retryStrategy" in template:
            assert "maxDuration" not in template["retryStrategy"].get("backoff", {})


def test_the_exit_handler_rolls_back_only_what_this_workflow_deployed(
    checked_in: dict[str, Any],
) -> None:
    """deploy-stage reports the version as the global output `deployed` before it changes
    traffic; the exit handler passes that to promote-or-rollback --if-deployed. When no deploy
    ran (a rejection, a failure before 5%), Argo leaves the reference unresolved in the
    arguments (SubstituteParams allows it: workflow/common/util.go) and the step does nothing."""
    templates = {t["name"]: t for t in checked_in["spec"]["templates"]}
    deploy = templates["deploy-stage"]
    (output,) = deploy["outputs"]["parameters"]
    assert output["globalName"] == "deployed"
    assert output["valueFrom"]["path"] == "/tmp/outputs/deployed"
    args = templates["exit-rollback"]["container"]["args"]
    assert "--if-deployed" in args
    assert args[args.index("--model-version") + 1] == "{{workflow.outputs.parameters.deployed}}"
    assert args[args.index("--action") + 1] == "rollback"


def test_every_step_after_approval_uses_the_resolved_version(checked_in: dict[str, Any]) -> None:
    """registry-approval resolves an alias or an empty model-version; nothing after it reads
    the raw argument (with an alias, promote would move `champion` to an alias name)."""
    tasks = _by_name(dag_tasks(checked_in))
    for name, task in tasks.items():
        if task["template"] in ("rolled-back", "registry-approval", "approval-gate"):
            continue
        assert RESOLVED in task["arguments"]["parameters"], name
    for template in checked_in["spec"]["templates"]:
        if template["name"] != "registry-approval":
            assert "workflow.parameters.model-version" not in yaml.safe_dump(template)


def test_the_rendered_template_keeps_its_mutex() -> None:
    """synchronization.mutexes needs Argo >= 3.6 and Hera >= 5.19; an older Hera drops the
    field silently. pyproject pins hera>=5.19."""
    import hera

    major, minor = (int(p) for p in hera.__version__.split(".")[:2])
    assert (major, minor) >= (5, 19)
    rendered = manifest(load_policy(POLICY_FILE))
    assert rendered["spec"]["synchronization"]["mutexes"][0]["name"].startswith("kpigate-rollout-")


def test_arguments_are_described_for_the_argo_ui(checked_in: dict[str, Any]) -> None:
    parameters = checked_in["spec"]["arguments"]["parameters"]
    assert [p["name"] for p in parameters] == list(ARGUMENTS)
    for parameter in parameters:
        assert len(parameter.get("description", "")) > 20, parameter["name"]
        if parameter["name"] != "model-version":  # the one required argument
            assert "value" in parameter, parameter["name"]
    used = set(re.findall(r"workflow\.parameters\.([\w-]+)", yaml.safe_dump(checked_in["spec"])))
    assert used == set(ARGUMENTS)


def test_evidence_uri_is_the_same_for_every_step(checked_in: dict[str, Any]) -> None:
    uris = set()
    for template in checked_in["spec"]["templates"]:
        args = template.get("container", {}).get("args", [])
        if "--evidence" in args:
            uris.add(args[args.index("--evidence") + 1])
    assert uris == {
        "{{workflow.parameters.evidence-store}}/{{workflow.parameters.model-name}}/"
        "{{inputs.parameters.version}}/{{workflow.name}}",
        # the exit handler's: the version deploy-stage reported
        "{{workflow.parameters.evidence-store}}/{{workflow.parameters.model-name}}/"
        "{{workflow.outputs.parameters.deployed}}/{{workflow.name}}",
    }


def test_step_order_of_the_default_policy() -> None:
    assert ordered_steps(load_policy(POLICY_FILE)) == [
        "registry-approval",
        *[
            f"{step}@{t}"
            for t in (5, 25, 50)
            for step in ("deploy-stage", "soak-and-collect", "evaluate-gate")
        ],
        "approval-gate@100",
        "deploy-stage@100",
        "soak-and-collect@100",
        "evaluate-gate@100",
        "promote-or-rollback@promote",
    ]


def test_stages_are_unrolled_from_the_policy() -> None:
    policy = Policy(
        stages=(Stage(traffic=12.5, soak=600, interval=300), Stage(traffic=100)),
        holdback=0,
        kpis=(Kpi(name="recall"),),
    )
    tasks = _by_name(dag_tasks(manifest(policy)))
    assert tasks["deploy-12-5"]["arguments"]["parameters"] == [
        {"name": "weight", "value": "12.5"},
        RESOLVED,
    ]
    # The first window only: the judge loop collects the rest of the soak look by look.
    assert tasks["soak-12-5"]["arguments"]["parameters"][1] == {"name": "looks", "value": "1"}
    assert tasks["deploy-100"]["arguments"]["parameters"] == [
        {"name": "weight", "value": "100"},
        RESOLVED,
    ]
    assert ordered_steps(policy)[1:4] == [
        "deploy-stage@12-5",
        "soak-and-collect@12-5",
        "evaluate-gate@12-5",
    ]
    assert all(dependencies(t) for n, t in tasks.items() if n != "registry-approval")
    assert argo_errors(manifest(policy)) == []


def _step_templates(manifest: dict[str, Any]) -> dict[str, tuple[dict[str, Any], Any]]:
    """Every template that runs a step -> (template, the step module)."""
    import importlib

    out = {}
    for template in manifest["spec"]["templates"]:
        command = template.get("container", {}).get("command", [])
        if command[:2] == ["python", "-m"]:
            out[template["name"]] = (template, importlib.import_module(command[2]))
    return out


def _spec_of(module: Any) -> type[StepInputs]:
    """The step's one definition of its inputs: the StepInputs model its module defines."""
    (spec,) = [
        v for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, StepInputs) and v.__module__ == module.__name__
    ]  # fmt: skip
    return spec


# A value for each input a step's arguments reference, as Argo would substitute it at run time.
SAMPLES = {"stage": "25", "weight": "25", "looks": "3", "grant-from": "0", "grant": "0",
           "action": "rollback", "version": "7", "baseline-version": "6", "model-version": "7"}  # fmt: skip


def _as_run(args: list[str]) -> list[str]:
    """The arguments as Argo would run them: each workflow argument at its default, each
    input and global output at a sample value, workflow.name and .namespace made up."""
    defaults = {p["name"]: p.get("value") for p in manifest(load_policy(POLICY_FILE))["spec"][
        "arguments"]["parameters"]}  # fmt: skip

    def sample(match: re.Match[str]) -> str:
        scope, _, name = match.group(1).rpartition(".")
        if scope == "workflow.parameters" and defaults.get(name) is not None:
            return str(defaults[name])
        return SAMPLES.get(name, f"sample-{name}")

    return [re.sub(r"\{\{([\w.-]+)\}\}", sample, a) for a in args]


def _parsed(module: Any, args: list[str]) -> Any:
    import argparse

    parser = argparse.ArgumentParser(exit_on_error=False)
    module.add_arguments(parser)
    return parse(_spec_of(module), parser.parse_args(_as_run(args)))


def test_every_step_s_arguments_come_from_its_one_definition(checked_in: dict[str, Any]) -> None:
    """Each step's inputs are one pydantic model (steps/<step>.py, the shared ones in
    steps/inputs.py and kpigate/backends/cli.py): the rendered arguments are what the model
    says the template passes, the step's own parser accepts them (every required flag there,
    none unknown), and the template's inputs are exactly those the arguments reference."""
    steps = _step_templates(checked_in)
    assert set(steps) == {"registry-approval", "deploy-stage", "soak-and-collect",
                          "evaluate-gate", "operator-decision", "promote-or-rollback",
                          "exit-rollback"}  # fmt: skip
    for name, (template, module) in steps.items():
        args = template["container"]["args"]
        spec = _spec_of(module)
        passed = [a for a in args if a.startswith("--")]
        if name not in ("operator-decision", "exit-rollback"):  # these override some values
            assert args == [
                item
                for option, value in step_args(spec).items()
                for item in ((option,) if value is None else (option, value))
            ], name
        assert set(passed) <= {flag(f) for f in spec.model_fields}, name
        _parsed(module, args)  # raises on a missing or unknown flag
        referenced = set(re.findall(r"\{\{inputs\.parameters\.([\w-]+)\}\}", " ".join(args)))
        assert {
            p["name"] for p in template.get("inputs", {}).get("parameters", [])
        } == referenced, name


def test_every_reference_in_a_step_s_arguments_resolves_on_argo(
    checked_in: dict[str, Any],
) -> None:
    """Argo substitutes a step's arguments from its inputs, the workflow's arguments, the
    global outputs some template declares (globalName; argo-workflows v3.7.10
    workflow/controller/operator.go addParamToGlobalScope) and the globals workflow.name and
    workflow.namespace (workflow/common/common.go): nothing else would resolve."""
    spec = checked_in["spec"]
    arguments = {p["name"] for p in spec["arguments"]["parameters"]}
    global_outputs = {
        p["globalName"]
        for t in spec["templates"]
        for p in t.get("outputs", {}).get("parameters", [])
        if "globalName" in p
    }
    assert global_outputs == {"deployed", "baseline-version"}
    for name, (template, _) in _step_templates(checked_in).items():
        inputs = {p["name"] for p in template.get("inputs", {}).get("parameters", [])}
        for ref in re.findall(r"\{\{([\w.-]+)\}\}", " ".join(template["container"]["args"])):
            scope, _, leaf = ref.rpartition(".")
            assert (
                (scope == "inputs.parameters" and leaf in inputs)
                or (scope == "workflow.parameters" and leaf in arguments)
                or (scope == "workflow.outputs.parameters" and leaf in global_outputs)
                or ref in ("workflow.name", "workflow.namespace")
            ), f"{name}: {{{{{ref}}}}}"


def test_soak_and_collect_gets_every_value_a_promql_kpi_may_name(
    checked_in: dict[str, Any],
) -> None:
    """A KPI's PromQL may name the model, the namespace and both versions (kpigate/sources/
    promql.py QueryContext); an empty one exits 2. The rendered soak-and-collect arguments,
    through the step's own parser, give every one of them a value."""
    import dataclasses

    from kpigate.sources.promql import QueryContext
    from kpigate.steps.soak_and_collect import source_settings

    template, module = _step_templates(checked_in)["soak-and-collect"]
    args = _parsed(module, template["container"]["args"])
    context = source_settings(args, load_policy(POLICY_FILE)).context
    assert context is not None
    for item in dataclasses.fields(QueryContext):
        assert getattr(context, item.name), item.name


def test_the_steps_that_append_to_the_trail_get_the_audit_key_optionally(
    checked_in: dict[str, Any],
) -> None:
    """KPIGATE_AUDIT_KEY (kpigate/audit_chain.py) from an optional Secret: every step that
    appends to the audit trail keys it when the Secret exists, and the template runs without
    it. The prediction log's URL reaches soak-and-collect the same way, never through argv."""
    from kpigate.audit_chain import KEY_ENV
    from kpigate.sources.predlog import DB_URL_ENV

    def secret_env(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {
            e["name"]: e["valueFrom"]["secretKeyRef"]
            for e in template["container"].get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }

    steps = _step_templates(checked_in)
    trail = {"evaluate-gate", "operator-decision", "promote-or-rollback", "exit-rollback"}
    for name, (template, _) in steps.items():
        env = secret_env(template)
        assert (KEY_ENV in env) == (name in trail), name
        assert (DB_URL_ENV in env) == (name == "soak-and-collect"), name
        assert all(ref["optional"] is True for ref in env.values()), name
        assert not any(
            "db" in a.lower() and "url" in a.lower() for a in template["container"]["args"]
        )
    assert secret_env(steps["evaluate-gate"][0])[KEY_ENV] == {
        "name": "kpigate-audit-key", "key": "key", "optional": True
    }  # fmt: skip
    (source,) = [p for p in checked_in["spec"]["arguments"]["parameters"]
                 if p["name"] == "metrics-source"]  # fmt: skip
    assert source["enum"] == ["router", "prometheus", "predlog"]


def test_every_test_the_argo_docs_cite_exists() -> None:
    """docs/pipeline.md and docs/operators.md back their claims with tests by name: each named
    test is there (a renamed or removed test would leave a claim unbacked)."""
    root = MANIFESTS.parent
    cited = 0
    for doc in ("docs/pipeline.md", "docs/operators.md"):
        text = re.sub(r"`\s*\n\s*", "`", (root / doc).read_text())  # a citation split over lines
        text = re.sub(r"::\s*\n\s*", "::", text)
        for path, name in re.findall(r"(tests/test_\w+\.py)::(test_\w+)", text):
            cited += 1
            assert f"def {name}(" in (root / path).read_text(), f"{doc}: {path}::{name}"
    assert cited >= 8

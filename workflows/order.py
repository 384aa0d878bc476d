"""The order in which a rendered rollout DAG runs its steps when every gate promotes.

A local runner that claims to run "the same steps in the same order" compares itself with
`ordered_steps(policy)`, which reads the rendered manifest rather than restating the design.
"""

from __future__ import annotations

import re
from typing import Any

from kpigate.policy import Policy

# What a task's template runs, in step names (the judge loop starts with evaluate-gate).
_STEP_OF_TEMPLATE = {"judge-stage": "evaluate-gate"}
# The happy path: every gate promotes, every approval says yes.
_HAPPY_OUTPUTS = {"decision": "promote", "approve": "yes", "approved": "true"}
_OUTPUT_REF = re.compile(r"\{\{tasks\.([\w-]+)\.outputs\.parameters\.(\w+)\}\}")
_CONDITION = re.compile(r"^\s*(\S+)\s*(==|!=)\s*(\S+)\s*$")
_DEPENDENCY = re.compile(r"([\w-]+)\.Succeeded")


def dag_tasks(manifest: dict[str, Any], dag: str = "rollout") -> list[dict[str, Any]]:
    template = next(t for t in manifest["spec"]["templates"] if t["name"] == dag)
    tasks: list[dict[str, Any]] = template["dag"]["tasks"]
    return tasks


def dependencies(task: dict[str, Any]) -> list[str]:
    return _DEPENDENCY.findall(task.get("depends", ""))


def _holds(when: str | None) -> bool:
    if not when:
        return True
    text = _OUTPUT_REF.sub(lambda match: _HAPPY_OUTPUTS.get(match.group(2), "?"), when)
    match = _CONDITION.match(text)
    if not match:
        raise ValueError(f"cannot read the condition {when!r}")
    left, op, right = match.groups()
    return (left == right) == (op == "==")


def happy_path(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The DAG tasks that run, in order, when every gate decides PROMOTE."""
    pending = list(dag_tasks(manifest))
    done: list[dict[str, Any]] = []
    names: set[str] = set()
    progress = True
    while pending and progress:
        progress = False
        for task in list(pending):
            if all(d in names for d in dependencies(task)):
                pending.remove(task)
                progress = True
                if _holds(task.get("when")):
                    done.append(task)
                    names.add(task["name"])
                break
    return done


def _label(task: dict[str, Any]) -> str:
    template = str(task["template"])
    step = _STEP_OF_TEMPLATE.get(template, template)
    if task["name"] == "registry-approval":
        return step
    if task["name"] == "promote":
        return f"{step}@promote"
    return f"{step}@{task['name'].split('-', 1)[1]}"


def ordered_steps(policy: Policy) -> list[str]:
    """Step names in run order for a policy, e.g. ["registry-approval", "deploy-stage@5",
    "soak-and-collect@5", "evaluate-gate@5", ..., "promote-or-rollback@promote"]. The suffix is
    the stage's traffic percent. The approval gate before the last stage ("approval-gate@100")
    always runs and suspends only when the workflow argument manual-approval is true."""
    from kpigate.workflows.progressive_delivery import manifest

    return [_label(t) for t in happy_path(manifest(policy))]

"""What every step shares: output parameters as files, the policy, and exit codes.

Argo reads output parameters from files, so each step writes its outputs under --out-dir
(one file per parameter). A step raises; `step_main` turns the error into the exit code, here
and nowhere else, from the error's kind (kpigate/errors.py): 0 done, 1 a service down (worth
retrying), 2 bad input, 3 refused, with the reason printed. The WorkflowTemplate retries 1 (and
crashes), never 2 or 3.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kpigate.errors import Kind, KpigateError
from kpigate.policy import Policy, PolicyError, load_policy
from kpigate.registry.base import Registry

DONE = 0
RETRY, BAD_INPUT, REFUSED = (k.exit_code for k in (Kind.UNAVAILABLE, Kind.BAD_INPUT, Kind.REFUSED))


class StepError(KpigateError):
    """A step cannot go on (bad input unless said otherwise); the message is for the operator
    reading the Argo log."""


def write_outputs(out_dir: str | None, **outputs: Any) -> None:
    """One file per output parameter; dicts and lists as JSON."""
    if not out_dir:
        return
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in outputs.items():
        text = json.dumps(value, indent=2) if isinstance(value, dict | list) else str(value)
        target = folder / ("explanation.json" if name == "explanation" else name.replace("_", "-"))
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(target)


def read_policy(path: str) -> Policy:
    try:
        return load_policy(path)
    except PolicyError as exc:
        raise StepError(f"bad policy:\n{exc}") from None


def say(message: str) -> None:
    print(message, flush=True)


def exit_code(error: BaseException) -> int:
    """The one mapping from an error to a step's exit code."""
    if isinstance(error, KpigateError):
        return error.kind.exit_code
    if isinstance(error, ValueError):  # PolicyError, CatalogueError, LineError: bad input
        return BAD_INPUT
    raise error  # a bug: let it crash (Argo retries crashes), with its traceback


def step_main(
    module: str,
    doc: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
) -> int:
    """The container entry point of a step: `python -m kpigate.steps.<module> ...`."""
    parser = argparse.ArgumentParser(
        prog=f"python -m kpigate.steps.{module}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    step = module.replace("_", "-")
    try:
        return run(args)
    except (KpigateError, ValueError) as error:
        code = exit_code(error)
        what = {RETRY: "retryable", BAD_INPUT: "bad input", REFUSED: "refused"}[code]
        print(f"{step}: {error} [{what}, exit {code}]", file=sys.stderr, flush=True)
        return code


# Set on the version by a rollback, with the rollout (workflow) id as its value: `argo retry`
# keeps the workflow's name and its Succeeded deploys (FormulateRetryWorkflow, argo-workflows
# workflow/util/util.go), so without this a retried soak would measure a candidate the rollback
# had already set to 0% and detached. `argo resubmit` (a new name) starts afresh.
ROLLED_BACK_BY_TAG = "kpigate.rolled_back_by"


def refuse_if_rolled_back(registry: Registry, name: str, version: str, rollout_id: str) -> None:
    """Exit 3 when this very rollout was already rolled back."""
    if not (rollout_id and version):
        return
    if registry.get_tags(name, version).get(ROLLED_BACK_BY_TAG) == rollout_id:
        raise StepError(
            f"rollout {rollout_id} of {name} v{version} was rolled back; `argo retry` cannot "
            "resume it (the candidate has no traffic): start a new rollout with `argo resubmit` "
            "or `kpigate submit`",
            kind=Kind.REFUSED,
        )

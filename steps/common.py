"""What every step shares: output parameters as files, the policy, and exit codes.

Argo reads output parameters from files, so each step writes its outputs under --out-dir
(one file per parameter) and returns: 0 done, 1 failed but worth retrying (a service down),
2 bad input, 3 refused (a clear reason printed). The WorkflowTemplate retries 1 (and crashes),
never 2 or 3.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kpigate.policy import Policy, PolicyError, load_policy

DONE, RETRY, BAD_INPUT, REFUSED = 0, 1, 2, 3


class StepError(RuntimeError):
    """A step cannot go on; the message is for the operator reading the Argo log."""


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


def fail(step: str, error: Exception, code: int = REFUSED) -> int:
    print(f"{step}: {error}", file=sys.stderr, flush=True)
    return code


def step_main(
    module: str,
    doc: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> int:
    """The container entry point of a step: `python -m kpigate.steps.<module> ...`."""
    parser = argparse.ArgumentParser(
        prog=f"python -m kpigate.steps.{module}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args())


def add_out_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out-dir", default="", help="write output parameters here, one file each (Argo)"
    )

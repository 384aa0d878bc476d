"""Operator commands for a local rollout: `kpigate pause | resume | abort | promote`.

A command is one small JSON file per model in the runner's state directory
(`<state-dir>/<model>.control`), written atomically (temp file + rename) so the runner never
reads half a command. The runner polls it between looks (kpigate/runner.py):

  pause    the runner stops looking: the traffic split stays where it is, no window is
           collected or judged, max_holds does not run down; the file stays until `resume`
  resume   the runner goes on with the next look; it removes the file
  abort    the candidate is rolled back now (traffic first, then the registry tags)
  promote  the current stage counts as passed and the next stage starts; `--full` promotes the
           candidate to 100% and champion at once (Argo Rollouts' `promote --full`)

Every command the runner acts on goes into the audit trail with the operator's name
(KPIGATE_ACTOR, else user@host). A command written while no rollout of the model runs waits in
the file for the next `kpigate rollout` of that model (the command says so).

Exit status: 0 written, 2 bad input (unknown state directory, unreadable control file).
Environment: KPIGATE_ACTOR names the operator in the audit trail.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, get_args

Command = Literal["pause", "resume", "abort", "promote", "promote-full"]
COMMANDS: tuple[str, ...] = get_args(Command)


class ControlError(ValueError):
    """The control file cannot be read or written; the message says which and why."""


@dataclass(frozen=True)
class Order:
    """One operator command as the runner reads it."""

    command: Command
    actor: str
    time: str
    reason: str = ""


def control_path(state_dir: str | Path, model: str) -> Path:
    return Path(state_dir) / f"{model}.control"


def write_order(state_dir: str | Path, model: str, order: Order) -> Path:
    """Replace the model's pending command by `order`, atomically."""
    path = control_path(state_dir, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"command": order.command, "actor": order.actor, "time": order.time}
    if order.reason:
        body["reason"] = order.reason
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(body, out)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def read_order(state_dir: str | Path, model: str) -> Order | None:
    """The pending command, or None. A file that is not a command is an error, never ignored:
    an operator who asked for an abort must not be silently overruled."""
    path = control_path(state_dir, model)
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ControlError(f"{path}: cannot read the control file ({exc.strerror})") from None
    try:
        body = json.loads(raw)
        command = body["command"]
        if command not in COMMANDS:
            raise ValueError(f"unknown command {command!r}")
        return Order(command, str(body.get("actor", "")), str(body.get("time", "")),
                     str(body.get("reason", "")))  # fmt: skip
    except (ValueError, KeyError, TypeError) as exc:
        raise ControlError(
            f"{path}: not a kpigate control file ({exc}); remove it or write a command with "
            f"`kpigate pause|resume|abort|promote`"
        ) from None


def clear_order(state_dir: str | Path, model: str, order: Order) -> None:
    """Remove the command the runner has acted on, unless a newer one replaced it meanwhile."""
    path = control_path(state_dir, model)
    with contextlib.suppress(ControlError):
        if read_order(state_dir, model) == order:
            path.unlink(missing_ok=True)


def rollout_running(state_dir: str | Path, model: str) -> bool:
    """True when a `kpigate rollout` of the model holds its lock (kpigate/runner.py)."""
    path = Path(state_dir) / f"{model}.lock"
    if not path.exists():
        return False
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


# --- the commands ----------------------------------------------------------------------------

_HELP = {
    "pause": "stop looking: the split stays, nothing is collected or judged, until resume",
    "resume": "go on with the next look after a pause",
    "abort": "roll the candidate back now (traffic first, then the registry tags)",
    "promote": "count the current stage as passed and start the next (--full: to champion)",
}


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--model-name", required=True, help="registered model name")
    parser.add_argument(
        "--state-dir", default=".kpigate", help="the rollout's --state-dir (.kpigate)"
    )
    parser.add_argument("--reason", default="", help="why, for the audit trail")
    if name == "promote":
        parser.add_argument("--full", action="store_true", help="straight to 100%% and champion")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def run_command(name: str, args: argparse.Namespace) -> int:
    from kpigate.audit import default_actor

    full = getattr(args, "full", False)
    command: Command = "promote-full" if full else name  # type: ignore[assignment]
    order = Order(command, default_actor(), _now(), args.reason)
    try:
        pending = read_order(args.state_dir, args.model_name)
        if command == "resume" and (pending is None or pending.command != "pause"):
            print(f"kpigate resume: {args.model_name} is not paused", file=sys.stderr)
            return 2
        path = write_order(args.state_dir, args.model_name, order)
    except (ControlError, OSError) as exc:
        print(f"kpigate {name}: {exc}", file=sys.stderr)
        return 2
    if rollout_running(args.state_dir, args.model_name):
        print(f"{command} sent to the rollout of {args.model_name} ({path}); it acts at its "
              "next look")  # fmt: skip
    else:
        print(f"no rollout of {args.model_name} is running with --state-dir {args.state_dir}; "
              f"the {command} waits in {path} for the next `kpigate rollout`")  # fmt: skip
    return 0


class CommandEntry:
    """One of the four commands as kpigate/cli.py expects a module: a docstring for the
    description, add_arguments() and run()."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.__doc__ = f"kpigate {name}: {_HELP[name]}.\n\n{_MODULE_DOC}"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_arguments(parser, self.name)

    def run(self, args: argparse.Namespace) -> int:
        return run_command(self.name, args)


_MODULE_DOC = __doc__ or ""
pause, resume, abort, promote = (CommandEntry(n) for n in ("pause", "resume", "abort", "promote"))

"""Start `kpigate rollout` as a child process: the embedded default, no cluster needed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from kpigate.relay.triggers.base import TriggerError


class LocalTrigger:
    name = "local"

    def __init__(self, rollout_args: Sequence[str], log_dir: str | Path = ".kpigate") -> None:
        # e.g. ["--policy", "p.yaml", "--router-url", "http://127.0.0.1:8080", ...]
        self.rollout_args = list(rollout_args)
        self.log_dir = Path(log_dir)
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, model_name: str, model_version: str) -> str:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"rollout-{model_name}-{model_version}.log"
        command = [
            sys.executable, "-m", "kpigate.cli", "rollout", *self.rollout_args,
            "--model-name", model_name, "--model-version", model_version,
        ]  # fmt: skip
        try:
            with log.open("ab") as out:
                process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        except OSError as exc:
            raise TriggerError(f"cannot start the local runner: {exc}") from None
        self.processes.append(process)
        return f"local runner pid {process.pid}, log {log}"

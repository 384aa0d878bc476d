"""Run a benchmark script on the kpigate engine of another commit, to compare engines on the same
simulated data (same script, same seeds, only the engine differs)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class NoSuchEngine(RuntimeError):
    """The commit's kpigate cannot be read (no git history here, or an unknown commit)."""


def engine_path() -> str:
    """Where the kpigate this process imported lives; a child run reports it as "engine"."""
    import kpigate

    return str(Path(kpigate.__file__).resolve())


def run_at_commit(rev: str, argv: list[str]) -> dict[str, Any]:
    """Run `python argv` with kpigate/ of `rev` (git archive) first on PYTHONPATH.

    The script must print one JSON object with "engine" (engine_path()); it is checked to lie in
    the archive, so a run that silently imported this checkout's engine fails loudly.
    """
    try:
        tar = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, "kpigate"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise NoSuchEngine(f"git archive {rev} failed: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="kpigate-engine-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
            archive.extractall(tmp, filter="data")
        env = {**os.environ, "PYTHONPATH": tmp}
        child = subprocess.run(
            [sys.executable, *argv], env=env, capture_output=True, text=True, check=False
        )
        if child.returncode != 0:
            raise RuntimeError(f"the run on {rev} failed:\n{child.stderr[-2000:]}")
        data: dict[str, Any] = json.loads(child.stdout)
        if not str(data.get("engine", "")).startswith(str(Path(tmp).resolve())):
            raise RuntimeError(f"the run on {rev} imported {data.get('engine')}, not that commit")
    return data

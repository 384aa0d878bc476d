"""A virtual environment per benchmark peer, built from the package index and reused.

Each environment lives in .bench-venvs/<name>-<digest of its pins>/ (git-ignored); changing a pin
makes a new one. It is marked complete only after every install step succeeded, so an install
cut short is redone on the next run instead of being mistaken for a working one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

STAMP = ".bench-complete"


@dataclass(frozen=True)
class VenvSpec:
    """What to install: `requirements` with their dependencies, then `no_deps` without (a
    package whose declared dependency we replace, such as `xgboost` by `xgboost-cpu`)."""

    name: str
    requirements: tuple[str, ...]
    no_deps: tuple[str, ...] = ()

    def digest(self) -> str:
        text = json.dumps([self.requirements, self.no_deps, sys.version_info[:2]])
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def pins(self) -> str:
        extra = [f"{req} (--no-deps)" for req in self.no_deps]
        return ", ".join([*self.requirements, *extra])


class VenvError(RuntimeError):
    """The environment could not be built; the message says which step failed and how."""


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def _pip(venv: Path, args: list[str]) -> None:
    cmd = [str(python_of(venv)), "-m", "pip", "install", "-q", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if not ln.startswith("WARNING: Location")]
        raise VenvError(f"`pip install {' '.join(args)}` failed: " + " | ".join(lines[-4:]))


def ensure_venv(root: Path, spec: VenvSpec) -> Path:
    """The environment's folder, built first when it is missing or incomplete."""
    venv = root / f"{spec.name}-{spec.digest()}"
    if (venv / STAMP).exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    print(f"building {venv} ({spec.pins()}) ...", file=sys.stderr)
    base = getattr(sys, "_base_executable", sys.executable)
    done = subprocess.run([base, "-m", "venv", str(venv)], capture_output=True, text=True)
    if done.returncode != 0:
        raise VenvError(f"`python -m venv` failed: {done.stderr.strip()}")
    _pip(venv, ["--upgrade", "pip"])
    _pip(venv, list(spec.requirements))
    if spec.no_deps:
        _pip(venv, ["--no-deps", *spec.no_deps])
    (venv / STAMP).write_text(spec.pins() + "\n")
    return venv


def versions(venv: Path, distributions: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of `distributions` in the environment (missing ones left out)."""
    code = (
        "import json, sys\n"
        "from importlib.metadata import PackageNotFoundError, version\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        out[name] = version(name)\n"
        "    except PackageNotFoundError:\n"
        "        pass\n"
        "print(json.dumps(out))\n"
    )
    cmd = [str(python_of(venv)), "-c", code, *distributions]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    found: dict[str, str] = json.loads(done.stdout)
    return found

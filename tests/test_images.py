"""The Dockerfiles name only files that exist, and every entry point they name answers --help."""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.manifest_schemas import MANIFESTS, REPO

IMAGES = REPO / "images"
DOCKERFILES = sorted(IMAGES.glob("*.Dockerfile"))
# Step modules the lead writes (steps/); until one exists its --help check is skipped, loudly.
PENDING_STEP_PREFIX = "kpigate.steps."


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical: list[str] = []
    buffer = ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        buffer += line.rstrip()
        if buffer.endswith("\\"):
            buffer = buffer[:-1] + " "
            continue
        logical.append(buffer.strip())
        buffer = ""
    out = []
    for entry in logical:
        keyword, _, rest = entry.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"use the exec (JSON) form: {arguments}"
    return [str(v) for v in value]


def entry_commands(dockerfile: Path) -> list[list[str]]:
    """Module invocations (`python -m MODULE ARGS...`) an image runs or declares."""
    found = dict(instructions(dockerfile))
    entrypoint = exec_form(found["ENTRYPOINT"]) if "ENTRYPOINT" in found else []
    cmd = exec_form(found["CMD"]) if "CMD" in found else []
    commands = [entrypoint + cmd]
    for key, _, value in (
        part.partition("=") for part in shlex.split(found.get("LABEL", "")) if "=" in part
    ):
        if key == "io.kpigate.step-modules":
            commands += [["python", "-m", module] for module in value.split()]
    return commands


def test_every_copy_source_exists() -> None:
    assert DOCKERFILES, "no Dockerfiles in images/"
    for dockerfile in DOCKERFILES:
        for keyword, arguments in instructions(dockerfile):
            if keyword not in ("COPY", "ADD"):
                continue
            parts = [p for p in arguments.split() if not p.startswith("--")]
            assert "--from" not in arguments, "multi-stage copies are not expected here"
            for source in parts[:-1]:
                assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"


def test_step_image_has_the_core_only_and_router_image_the_serve_extra() -> None:
    def installs(name: str) -> list[str]:
        runs = [a for k, a in instructions(IMAGES / name) if k == "RUN" and "pip install" in a]
        return [shlex.split(a.split("pip install", 1)[1].split("&&")[0])[0] for a in runs]

    assert installs("step.Dockerfile") == [".[predlog]"]
    assert installs("router.Dockerfile") == [".[serve]"]
    for name in ("step.Dockerfile", "router.Dockerfile"):
        assert dict(instructions(IMAGES / name))["FROM"] == "python:3.11-slim"


def test_step_image_declares_every_module_the_workflow_runs() -> None:
    template = yaml.safe_load(
        (MANIFESTS / "argo" / "progressive-delivery.workflowtemplate.yaml").read_text()
    )
    run_by_workflow = {
        t["container"]["command"][2]
        for t in template["spec"]["templates"]
        if "container" in t and t["container"]["command"][:2] == ["python", "-m"]
    }
    declared = {
        c[2] for c in entry_commands(IMAGES / "step.Dockerfile") if c[:2] == ["python", "-m"]
    }
    assert run_by_workflow <= declared


def _module_commands() -> list[tuple[str, list[str]]]:
    out = []
    for dockerfile in DOCKERFILES:
        for command in entry_commands(dockerfile):
            assert command[:2] == ["python", "-m"], f"{dockerfile.name}: unexpected {command}"
            out.append((dockerfile.name, command))
    return out


@pytest.mark.parametrize(
    ("dockerfile", "command"), _module_commands(), ids=lambda v: v if isinstance(v, str) else v[2]
)
def test_entry_point_imports_and_answers_help(dockerfile: str, command: list[str]) -> None:
    module = command[2]
    if module.startswith(PENDING_STEP_PREFIX) and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} (named in {dockerfile}) is a step module not written yet")
    # Keep the subcommand (e.g. `serve`) but not its options, and ask for help.
    args = [a for a in command[3:] if not a.startswith("-")][:1]
    result = subprocess.run(
        [sys.executable, "-m", module, *args, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


def _image_extras(name: str) -> set[str]:
    """The kpigate extras an image installs (`pip install ".[a,b]"` -> {a, b})."""
    runs = [a for k, a in instructions(IMAGES / name) if k == "RUN" and "pip install" in a]
    target = shlex.split(runs[0].split("pip install", 1)[1].split("&&")[0])[0]
    assert target.startswith("."), target
    inside = target.partition("[")[2].rstrip("]")
    return {e.strip() for e in inside.split(",") if e.strip()}


def _installed_closure(extras: set[str]) -> set[str]:
    """Distributions (normalized names) that `pip install kpigate[extras]` brings, read from
    the installed metadata: kpigate's requirements with those extras, then theirs."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    wanted: list[tuple[str, frozenset[str]]] = [("kpigate", frozenset(extras))]
    seen: dict[str, set[str]] = {}
    while wanted:
        name, with_extras = wanted.pop()
        key = canonicalize_name(name)
        if key in seen and with_extras <= seen[key]:
            continue
        seen.setdefault(key, set()).update(with_extras)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            envs = [{"extra": e} for e in seen[key]] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                wanted.append((req.name, frozenset(req.extras)))
    return set(seen)


# Run in a fresh interpreter: every top-level module of a distribution the image does not
# install is refused, then the step modules, every metrics source a step can choose and the
# predlog source's PostgreSQL driver are imported (SQLAlchemy imports the DBAPI module when the
# engine is created: lib/sqlalchemy/engine/create.py, `dialect_cls.import_dbapi()`).
_IMPORT_PROBE = """
import importlib, importlib.abc, json, sys
blocked = set(json.loads(sys.argv[1]))
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ImportError(f"{name} is not installed in the step image")
        return None
sys.meta_path.insert(0, Refuse())
from kpigate.sources.factory import SOURCES
for module in json.loads(sys.argv[2]) + sorted({m for m, _ in SOURCES.values()}):
    importlib.import_module(module)
from kpigate.serve.predlog import make_engine
make_engine("postgresql+psycopg://probe@127.0.0.1:9/probe").dispose()
print("ok")
"""


def test_the_step_image_installs_what_its_steps_and_sources_import() -> None:
    """The step image's packages alone (core plus the extras its Dockerfile names) import every
    step module, every metrics source (the predlog source needs SQLAlchemy and psycopg) and
    the PostgreSQL driver; a missing extra fails here, not in the cluster."""
    from importlib import metadata

    from packaging.utils import canonicalize_name

    installed = _installed_closure(_image_extras("step.Dockerfile"))
    blocked = sorted(
        top
        for top, dists in metadata.packages_distributions().items()
        if top not in sys.stdlib_module_names
        and not any(canonicalize_name(d) in installed for d in dists)
    )
    assert {"alembic", "xgboost", "lightgbm"} <= set(blocked)  # serve and demo only: refused
    steps = [c[2] for c in entry_commands(IMAGES / "step.Dockerfile") if c[:2] == ["python", "-m"]]
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, json.dumps(blocked), json.dumps(steps)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]

"""scripts/ensure-system.sh (run by `make test`) and the rule that no process is ever stopped
by its name: only by the pid or process group a component started, or by its init system."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "ensure-system.sh"
BY_NAME = re.compile(r"\b(?:p" + r"kill|kill" + r"all)\b")  # spelled apart: this file is scanned


def test_nothing_in_the_project_stops_a_process_by_name() -> None:
    files = [ROOT / "Makefile", *ROOT.glob("scripts/*"), *ROOT.glob("kpigate/**/*.py"),
             *ROOT.glob("tests/*.py"), *ROOT.glob("bench/*.py")]  # fmt: skip
    offenders = [str(p.relative_to(ROOT)) for p in files if p.is_file()
                 and BY_NAME.search(p.read_text(errors="replace"))]  # fmt: skip
    assert offenders == []


def test_the_script_parses_and_does_nothing_when_prometheus_is_installed() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], check=False).returncode == 0
    if shutil.which("prometheus"):
        done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, check=False)
        assert done.returncode == 0 and done.stdout == "" and done.stderr == ""


def test_without_root_it_says_what_will_skip(tmp_path: Path) -> None:
    """A PATH without prometheus and an `id` that is not root: a note, exit 0, nothing run."""
    for tool in ("bash", "env"):
        (tmp_path / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
    (tmp_path / "id").write_text("#!/bin/sh\necho 1000\n")
    (tmp_path / "id").chmod(0o755)
    (tmp_path / "apt-get").write_text("#!/bin/sh\necho apt-get ran >&2\nexit 1\n")
    (tmp_path / "apt-get").chmod(0o755)
    done = subprocess.run([str(tmp_path / "bash"), str(SCRIPT)], capture_output=True, text=True,
                          env={"PATH": str(tmp_path)}, check=False)  # fmt: skip
    assert done.returncode == 0
    assert "prometheus not installed and cannot install" in done.stderr
    assert "apt-get ran" not in done.stderr

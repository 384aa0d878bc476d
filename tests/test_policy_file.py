"""Hostile policy files: every malformed file is one exit-2 error naming the file and the field,
through the real CLI (each of these printed a traceback and exited 1, or was silently accepted,
before kpigate/policy_file.py).

The limits come from the YAML and Python parts they guard: PyYAML's composer recurses once per
nesting level (yaml/composer.py, compose_node), its SafeConstructor keeps the last of duplicate
keys (yaml/constructor.py, construct_mapping) and converts integers with int(), which refuses
more than 4300 digits (sys.get_int_max_str_digits); float() of a large int overflows.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kpigate.policy import PolicyError, load_policy, policy_from_dict
from kpigate.policy_file import MAX_BYTES, MAX_DEPTH, non_finite_fields, read_document

GOOD = "name: t\nkpis:\n  - name: recall\n    margin: 0.02\n"


def _with(field: str) -> bytes:
    """GOOD with one more top-level line before `kpis:`."""
    return GOOD.replace("kpis:", f"{field}\nkpis:", 1).encode()


_LAUGHS = "".join(
    f"x{i}: &x{i} [{', '.join([f'*x{i - 1}' if i else 'a'] * 10)}]\n" for i in range(6)
)

# kind -> (file bytes, what the one error must say besides the file name)
HOSTILE: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "latin-1": (("# café\n" + GOOD).encode("latin-1"), ("not UTF-8 at line 1, column 6", "0xe9")),
    "utf-16 with BOM": (GOOD.encode("utf-16"), ("UTF-16", "save it as UTF-8")),
    "utf-16 without BOM": (GOOD.encode("utf-16-le"), ("NUL byte", "save it as UTF-8")),
    "400-digit duration": (_with("max_staleness: 1" + "0" * 399), ("max_staleness", "400 digits")),
    "400-digit duration text": (
        _with("max_staleness: 1" + "0" * 399 + "s"),
        ("max_staleness", "not a finite duration"),
    ),
    "5000-digit integer": (_with("max_holds: " + "9" * 5000), ("max_holds", "5000 digits")),
    "50000-deep flow nesting": (
        ("name: t\nkpis: " + "[" * 50_000 + "]" * 50_000 + "\n").encode(),
        ("kpis[0][0]", f"nested more than {MAX_DEPTH} levels"),
    ),
    "deep block nesting": (
        ("name: t\nkpis:\n" + "".join("  " * i + "-\n" for i in range(60))).encode(),
        ("kpis[0]", "nested more than"),
    ),
    "duplicate kpis": (
        (GOOD + "kpis:\n  - name: precision\n").encode(),
        ("kpis: duplicate key (line 5 repeats line 2)",),
    ),
    "duplicate nested key": (
        GOOD.replace("    margin: 0.02\n", "    margin: 0.02\n    margin: 0.5\n").encode(),
        ("kpis[0] (recall).margin: duplicate key",),
    ),
    "soak .inf": (
        GOOD.replace("kpis:", "stages:\n  - traffic: 100\n    soak: .inf\nkpis:").encode(),
        ("stages[0].soak (line 4)", "not a finite number"),
    ),
    "interval .nan": (
        GOOD.replace("kpis:", "stages:\n  - traffic: 100\n    interval: .nan\nkpis:").encode(),
        ("stages[0].interval", "not a finite number"),
    ),
    "max_staleness 1.0e+400": (_with("max_staleness: 1.0e+400"), ("max_staleness",)),
    "margin .inf": (GOOD.replace("0.02", ".inf").encode(), ("kpis[0] (recall).margin",)),
    "margin as text inf": (
        GOOD.replace("0.02", '"inf"').encode(),
        ("kpis[0] (recall).margin: not a finite number",),
    ),
    "baseline_mean as text nan": (
        (GOOD + "    baseline_mean: nan\n    baseline_sd: 0.1\n").encode(),
        ("kpis[0] (recall).baseline_mean: not a finite number",),
    ),
    "min_offline -.inf": (
        _with("registry:\n  min_offline: {auc: -.inf}"),
        ("registry.min_offline.auc",),
    ),
    "a list, not a mapping": (
        b"- kpis\n- stages\n",
        ("a policy is a mapping of fields, got list",),
    ),
    "a scalar document": (b"42\n", ("a policy is a mapping of fields, got int",)),
    "empty file": (b"", ("the file is empty",)),
    "two documents": (GOOD.encode() + b"---\n" + GOOD.encode(), ("not valid YAML",)),
    "too large": (GOOD.encode() + b"#" * (MAX_BYTES + 1) + b"\n", ("larger than 1024 KiB",)),
    "billion laughs": (
        (_LAUGHS + "name: t\nkpis: *x5\n").encode(),
        ("expands to more than 100000 values",),
    ),
    "self-referencing alias": (b"name: t\nkpis: &k [*k]\n", ("kpis[0][0]", "expands to more")),
}


def _kpigate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kpigate.cli", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip


def _step(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"kpigate.steps.{name}", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _assert_one_clear_error(
    done: subprocess.CompletedProcess[str], path: Path, needles: tuple[str, ...]
) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert str(path) in done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr
    assert len(done.stderr) < 2000, done.stderr  # a message, not a dump of the file


def _write(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / (kind.replace(" ", "-") + ".yaml")
    path.write_bytes(HOSTILE[kind][0])
    return path


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_kpigate_rollout_refuses_a_hostile_policy_with_exit_2(tmp_path: Path, kind: str) -> None:
    path = _write(tmp_path, kind)
    # The policy is read before the registry: an unreachable one must not be what is reported.
    state = str(tmp_path / "state")
    done = _kpigate("rollout", "--policy", str(path), "--model-name", "m",
                    "--tracking-uri", "http://127.0.0.1:9", "--state-dir", state)  # fmt: skip
    _assert_one_clear_error(done, path, HOSTILE[kind][1])
    assert "unreachable" not in done.stderr


CROSS_COMMAND = ("5000-digit integer", "50000-deep flow nesting", "latin-1", "duplicate kpis")


@pytest.mark.parametrize("kind", CROSS_COMMAND)
def test_every_command_that_reads_a_policy_refuses_it_with_exit_2(
    tmp_path: Path, kind: str
) -> None:
    path = _write(tmp_path, kind)
    needles = HOSTILE[kind][1]
    windows = tmp_path / "windows.jsonl"
    windows.write_text("")
    evidence = str(tmp_path / "evidence.jsonl")
    runs = [
        _kpigate("replay", "--policy", str(path), str(windows)),
        _kpigate("render-workflow", "--policy", str(path), "--out", str(tmp_path / "out")),
        _step("evaluate_gate", "--policy", str(path), "--evidence", evidence, "--stage", "25"),
        _step("soak_and_collect", "--policy", str(path), "--evidence", evidence, "--stage", "25"),
        _step("registry_approval", "--policy", str(path), "--model-name", "m",
              "--model-version", "1", "--tracking-uri", "http://127.0.0.1:9"),
    ]  # fmt: skip
    for done in runs:
        _assert_one_clear_error(done, path, needles)


def test_a_good_policy_still_loads_with_anchors_merge_keys_and_a_utf8_bom(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    text = (
        "# é is fine in UTF-8\nname: t\ndefaults: &d {margin: 0.02, min_samples: 30}\n"
        "kpis:\n  - {<<: *d, name: recall}\n  - {<<: *d, name: precision, margin: 0.05}\n"
    )
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("defaults: &d", "x-defaults: &d").encode())
    data = read_document(path)
    assert data["kpis"][1] == {"margin": 0.05, "min_samples": 30, "name": "precision"}
    with pytest.raises(PolicyError, match="x-defaults: unknown field"):
        load_policy(path)  # the anchor's home is still an unknown field, named as such
    del data["x-defaults"]
    policy = policy_from_dict(data, str(path))
    assert [k.margin for k in policy.kpis] == [0.02, 0.05]


def test_the_bundled_example_policies_load() -> None:
    examples = Path(__file__).resolve().parent.parent / "kpigate" / "examples"
    for path in sorted(examples.glob("*.yaml")):
        assert load_policy(path).kpis, path


def test_non_finite_fields_names_every_path() -> None:
    policy = policy_from_dict({"kpis": [{"name": "recall"}]})
    assert non_finite_fields(policy) == []
    # model_copy skips validation: the walk itself must find what validation would not.
    kpi = policy.kpis[0].model_copy(update={"margin": float("inf")})
    broken = policy.model_copy(update={"harm_scale": float("nan"), "kpis": (kpi,)})
    assert non_finite_fields(broken) == ["harm_scale", "kpis[0] (recall).margin"]

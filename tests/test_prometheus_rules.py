"""Prometheus rules in manifests/prometheus: promtool accepts them, and their unit tests pass."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.observability_helpers import RULES_DIR, rule_files, rules, unknown_metrics

REQUIRE_ENV = "KPIGATE_REQUIRE_PROMETHEUS"


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    message = (
        "promtool is not installed (Debian package prometheus; `make system` installs it as root)"
    )
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message}, and {REQUIRE_ENV}=1")
    pytest.skip(message)


def test_there_are_recording_and_alerting_rules() -> None:
    found = rules()
    assert rule_files(), f"no *.rules.yaml under {RULES_DIR}"
    assert sum("record" in r for r in found) >= 10
    alerts = [r for r in found if "alert" in r]
    assert {r["labels"]["severity"] for r in alerts} == {"critical", "warning", "info"}
    for alert in alerts:
        assert alert.get("for"), f"{alert['alert']} has no `for:` and would flap"
        assert {"summary", "description", "action"} <= set(alert["annotations"]), alert["alert"]


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("record") or r.get("alert"))
def test_every_rule_expression_parses_and_names_known_metrics(rule: dict[str, str]) -> None:
    assert unknown_metrics(rule["expr"]) == []


@pytest.mark.parametrize("path", rule_files(), ids=lambda p: p.name)
def test_promtool_check_rules(path: object) -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    tests = sorted((RULES_DIR / "tests").glob("*.yaml"))
    assert tests, "no promtool unit tests under manifests/prometheus/tests"
    result = subprocess.run(
        [promtool(), "test", "rules", *map(str, tests)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout

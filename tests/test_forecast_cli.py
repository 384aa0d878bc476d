"""`kpigate plan`: the forecast's output, its warning, and exit 2 with a clear message on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kpigate.cli import main

POLICY = {
    "name": "plan-test",
    "stages": [{"traffic": t, "soak": "30m", "interval": "5m"} for t in (5, 25, 50, 100)],
    "kpis": [
        {"name": "recall", "margin": 0.02},
        {"name": "auc", "type": "auc", "margin": 0.01},
        {
            "name": "latency_p95",
            "type": "quantile",
            "quantile": 0.95,
            "direction": "lower",
            "margin": 10,
            "action": "hold",
            "scope": "window",
            "gating": False,
        },
    ],
}
TRAFFIC = ["--kpi-base", "recall=0.02", "--kpi-value", "recall=0.876"]
TRAFFIC += ["--kpi-base", "auc=0.02", "--kpi-value", "auc=0.95"]


def _policy_file(tmp_path: Path, data: object = POLICY) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _plan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["plan", *args, "--paths", "500"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_forecast_per_stage_and_kpi(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _plan(
        capsys,
        "--policy",
        _policy_file(tmp_path),
        "--rps",
        "2000",
        *TRAFFIC,
        "--drop",
        "recall=0.05",
        "--json",
    )
    assert code == 0
    result = json.loads(out)
    assert [s["traffic"] for s in result["stages"]] == [5, 25, 50, 100]
    first = result["stages"][0]
    assert set(first["kpis"]) == {"recall", "auc"}
    assert first["kpis"]["recall"]["certify"]["median_s"] > 0
    assert result["drop"]["kpi"] == "recall" and result["drop"]["rolled_back"] > 0.9
    assert any("latency_p95" in note for note in result["notes"])
    assert result["warnings"] == []


def test_text_forecast_warns_for_a_stage_that_cannot_decide(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _plan(capsys, "--policy", _policy_file(tmp_path), "--rps", "20", *TRAFFIC)
    assert code == 0
    assert "stage 5%:" in out and "certified after (median / p90)" in out
    warnings = out.split("warnings:")[1].split("notes:")[0]
    assert "stage 5%: an identical candidate cannot decide" in warnings
    assert "recall" in warnings or "auc" in warnings


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rps", "0"], "--rps must be a positive number"),
        (["--rps", "nan"], "--rps must be a positive number"),
        (["--rps", "1e308"], "requests per second must be a positive number up to 1e+09"),
        (["--rps", "100", "--kpi-base", "recall"], "write NAME=NUMBER"),
        (["--rps", "100", "--kpi-base", "recall=lots"], "'lots' is not a number"),
        (["--rps", "100", "--kpi-base", "recall=1.5"], "a share of requests is in (0, 1]"),
        (["--rps", "100", "--kpi-base", "recal=0.02"], "the policy has no KPI 'recal'"),
        (["--rps", "100", "--kpi-value", "recall=inf"], "must be finite"),
        (["--rps", "100", "--kpi-value", "auc=0.3"], "AUC baseline value must be in [0.5, 1)"),
        (["--rps", "100", "--drop", "recall=-0.1"], "the drop must be a positive number"),
        (["--rps", "100", "--drop", "latency_p95=5"], "not a forecast KPI"),
    ],
)
def test_bad_input_exits_2_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = _plan(capsys, "--policy", _policy_file(tmp_path), *args)
    assert code == 2
    assert message in err and out == ""


def test_a_bad_or_missing_policy_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _plan(capsys, "--policy", str(tmp_path / "absent.yaml"), "--rps", "100")
    assert code == 2 and "cannot read the policy file" in err
    sigma = {**POLICY, "method": "sigma"}
    code, _, err = _plan(capsys, "--policy", _policy_file(tmp_path, sigma), "--rps", "100")
    assert code == 2 and "forecasts method sequential" in err
    broken = {**POLICY, "stages": [{"traffic": 100, "soak": "5m", "interval": "10m"}]}
    code, _, err = _plan(capsys, "--policy", _policy_file(tmp_path, broken), "--rps", "100")
    assert code == 2 and "interval" in err


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["plan", "--rps", "100"])  # no --policy
    assert exc.value.code == 2
    assert "--policy" in capsys.readouterr().err


def test_help_teaches_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["plan", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "kpigate plan --policy policy.yaml --rps 50" in out
    assert "Exit status" in out and "--kpi-base" in out

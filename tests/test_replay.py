"""`kpigate replay`: the stable contract of input lines, output lines and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kpigate.cli import main

ISSUE_LINE = {
    "rollout": "r1",
    "window": 1,
    "stage": 5,
    "kpis": {
        "recall": {
            "baseline": {"successes": 8731, "trials": 9966},
            "candidate": {"successes": 451, "trials": 512},
        }
    },
}


def line(window: int, cand: tuple[int, int], rollout: str | None = "r1", stage: float = 5) -> dict:  # type: ignore[type-arg]
    record: dict = {  # type: ignore[type-arg]
        "window": window,
        "stage": stage,
        "kpis": {
            "recall": {
                "baseline": {"successes": 8731, "trials": 9966},
                "candidate": {"successes": cand[0], "trials": cand[1]},
            }
        },
    }
    if rollout is not None:
        record["rollout"] = rollout
    return record


def write(tmp_path: Path, records: list, name: str = "w.jsonl") -> Path:  # type: ignore[type-arg]
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict], str]:  # type: ignore[type-arg]
    code = main(["replay", *args])
    captured = capsys.readouterr()
    return code, [json.loads(x) for x in captured.out.splitlines()], captured.err


def test_the_issue_example_through_the_installed_command(tmp_path: Path) -> None:
    path = write(tmp_path, [ISSUE_LINE])
    done = subprocess.run(
        [sys.executable, "-m", "kpigate.cli", "replay", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (out,) = [json.loads(x) for x in done.stdout.splitlines()]
    assert (out["rollout"], out["window"], out["decision"]) == ("r1", 1, "hold")
    recall = out["kpis"]["recall"]
    assert recall["estimate"] == pytest.approx(451 / 512 - 8731 / 9966, abs=1e-6)
    lo, hi = recall["ci"]
    assert lo < recall["estimate"] < hi
    assert recall["verdict"] in {"pass", "fail", "inconclusive"}
    assert recall["margin"] == 0.01 and recall["evidence"]["harm_threshold"] == 20


def test_rollouts_are_independent_whatever_the_interleaving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = [line(i, (449, 512), "a") for i in range(1, 8)]
    b = [line(i, (380, 512), "b") for i in range(1, 8)]
    _, separate, _ = replay(capsys, str(write(tmp_path, a + b)))
    interleaved_records = [r for pair in zip(a, b, strict=True) for r in pair]
    _, interleaved, _ = replay(capsys, str(write(tmp_path, interleaved_records, "i.jsonl")))
    key = lambda r: (r["rollout"], r["window"])  # noqa: E731
    assert sorted(separate, key=key) == sorted(interleaved, key=key)
    assert not any(r["decision"] == "rollback" for r in separate if r["rollout"] == "a")
    assert any(r["decision"] == "rollback" for r in separate if r["rollout"] == "b")


def test_defaults_and_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, [line(1, (451, 512), None)])
    _, (out,), _ = replay(capsys, str(path), "--alpha", "0.1", "--margin", "0.03")
    assert "rollout" not in out
    assert out["kpis"]["recall"]["margin"] == 0.03
    assert out["kpis"]["recall"]["evidence"]["harm_threshold"] == pytest.approx(10)


def test_sigma_method_takes_mu_and_sigma_from_the_first_baseline_windows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = [line(i, (451, 512)) for i in range(1, 5)]
    for i, r in enumerate(records):
        r["kpis"]["recall"]["baseline"]["successes"] = 8700 + 20 * i
    _, outs, _ = replay(capsys, str(write(tmp_path, records)), "--method", "sigma")
    assert outs[1]["kpis"]["recall"]["reason"].startswith("building control limits")
    control = outs[3]["kpis"]["recall"]["control"]
    assert control["center"] == pytest.approx((8700 + 8720 + 8740) / 3 / 9966, rel=1e-5)


def test_other_kpi_types_with_a_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = Path(__file__).resolve().parent.parent / "kpigate" / "examples"
    code, outs, err = replay(
        capsys, "--policy", str(example / "policy.yaml"), str(example / "fraud-rollout.jsonl")
    )
    assert code == 0, err
    final = {r["rollout"]: r for r in outs if r["final"]}
    assert final["good"]["decision"] == "promote" and final["good"]["stage"] == 100
    assert final["bad"]["decision"] == "rollback"
    held = [r for r in outs if r["rollout"] == "good" and r["reasons"][0].startswith("latency_p95")]
    assert held and all(r["stage"] == 50 and r["decision"] == "hold" for r in held)
    kinds = outs[-1]["kpis"]
    assert {"auc", "latency_p95", "fpr_gap_amount"} <= set(kinds)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "line 2: not JSON"),
        ('["a"]', "line 2: each window record must be a JSON object"),
        ('{"window": 2, "kpis": {}}', "line 2: window 2: stage: missing field"),
        (
            '{"window": "2", "stage": 5, "kpis": {}}',
            "line 2: window: Input should be a valid integer",
        ),
        (
            '{"window": 2, "stage": 500, "kpis": {}}',
            "line 2: window 2: stage: is a traffic percentage",
        ),
        ('{"window": 2, "stage": 5, "kpis": {}, "kpi": 1}', "line 2: window 2: kpi: unknown field"),
        ('{"window": 2, "stage": 5}', "line 2: window 2: kpis: missing field"),
        (
            '{"window": 2, "stage": 5, "kpis": {"recall": {"candidate": {"successes": 9, "trials": 5}}}}',
            "line 2: window 2: kpis.recall.candidate: successes (9) exceed trials (5)",
        ),
        (
            '{"window": 2, "stage": 5, "kpis": {"recall": {"candidate": {"hits": 1}}}}',
            'line 2: window 2: kpis.recall.candidate: must be one of {"successes": S, "trials": N}',
        ),
        (
            '{"window": 2, "stage": 5, "kpis": {"recall": {"candidate": {"successes": NaN, "trials": 5}}}}',
            "line 2: window 2: kpis.recall.candidate.successes: must be a finite number, got nan",
        ),
        (
            '{"window": 2, "stage": 5, "kpis": {"recall": {"candidate": {"successes": 1, "trials": -5}}}}',
            "line 2: window 2: kpis.recall.candidate.trials: must not be negative, got -5",
        ),
        (
            '{"window": 2, "stage": 5, "kpis": {"recall": {"candidate": {"successes": "1", "trials": 5}}}}',
            'line 2: window 2: kpis.recall.candidate.successes: must be a number, got "1"',
        ),
        (
            '{"window": 2, "stage": 5, "kpis": {"recall": {"candidate": {"successes": 1, "trials": 5, "n": 1}}}}',
            "line 2: window 2: kpis.recall.candidate.n: unknown field",
        ),
        (
            '{"window": 2, "stage": 5, "kpis": {"recall": {"candidate": {"buckets": {"+Inf": 3}}}}}',
            'line 2: window 2: kpis.recall.candidate of a rate KPI must be {"successes": S, "trials": N}',
        ),
        (
            '{"window": 2, "stage": 5, "kpis": {"precision": {"candidate": null}}}',
            "line 2: window 2: KPI(s) ['precision'] not in the policy",
        ),
        (
            '{"window": 1, "stage": 5, "kpis": {}}',
            "line 2: window 1 of rollout '' comes after window 1",
        ),
    ],
)
def test_a_malformed_line_exits_2_with_its_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str, message: str
) -> None:
    path = write(tmp_path, [line(1, (451, 512), None), bad, line(3, (451, 512), None)])
    code, outs, err = replay(capsys, str(path))
    assert code == 2
    assert message in err, err
    assert len(outs) == 1  # the good line before it was judged; nothing after it


def test_bad_policy_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("alpha: 2\nkpis: [{name: recall}]\n")
    code, outs, err = replay(capsys, "--policy", str(policy), str(write(tmp_path, [ISSUE_LINE])))
    assert code == 2 and not outs
    assert f"{policy}: alpha: Input should be less than 1" in err


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    text = capsys.readouterr().out
    for needle in ("successes", "buckets", "--policy", "--method", "Exit status", "sigma"):
        assert needle in text
    assert main([]) == 2
    assert "kpigate replay windows.jsonl" in capsys.readouterr().out

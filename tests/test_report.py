"""The HTML report, rendered from trails of the bundled recorded rollouts (good and bad)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kpigate.audit import AuditTrail, notification_event, read_records, verify
from kpigate.cli import main
from kpigate.report import ReportError, render_report
from tests.trail_helpers import replayed_trail

_FIGURE = re.compile(r"<svg\b|<img src=\"data:image/png;base64,")


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "trail.jsonl"
    replayed_trail(path)
    return path


def _render(trail: Path, rollout: str) -> str:
    return render_report(read_records(trail), rollout, verification=verify(trail))


def test_good_rollout_report_shows_stages_kpis_figures_and_outcome(trail: Path) -> None:
    page = _render(trail, "good")
    assert page.startswith("<!DOCTYPE html>")
    assert "promoted to 100%" in page
    assert "Audit chain" in page and "intact: " in page
    stage_rows = re.findall(r"<tr><td class='num'>(\d+)%</td><td>[^<]*</td><td>(.*?)</td>", page)
    assert [(s, "promote" in d) for s, d in stage_rows] == [
        ("5", True),
        ("25", True),
        ("50", True),
        ("100", True),
    ]
    # at 50%: two holds for the latency spike, two more while precision was not yet certified,
    # shown in the stage table and the decision log
    assert "latency_p95: candidate worse beyond the margin" in page
    assert "precision: not yet shown non-inferior" in page
    assert re.search(r"<td class='num'>50%</td>.*?<td class='num'>4</td></tr>", page)
    for kpi in ("recall", "precision", "fpr", "auc", "latency_p95", "chargeback_rate"):
        assert f"<tr><td>{kpi}</td>" in page
    # the final recall CI of the replayed good rollout (see `kpigate replay`)
    assert "[+0.01947, +0.06153]" in page
    assert len(_FIGURE.findall(page)) == 2
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", page)  # nothing fetched
    assert "<script" not in page and "<link" not in page


def test_bad_rollout_report_shows_the_rollback_and_its_evidence(trail: Path) -> None:
    page = _render(trail, "bad")
    assert "rolled back at 25% (window 10)" in page
    assert '<span class="rollback">rollback</span>' in page
    assert "recall: candidate worse than the baseline" in page
    assert '<tr><td>recall</td><td>performance</td><td><span class="fail">fail</span>' in page
    assert len(_FIGURE.findall(page)) == 2


def test_user_text_is_escaped(tmp_path: Path) -> None:
    path = tmp_path / "trail.jsonl"
    replayed_trail(path, ("bad",))
    records = read_records(path)
    evil = "<script>alert('x')</script>"
    for record in records:
        if record["type"] == "decision":
            record["reasons"] = [*record["reasons"], evil]
            record["model"]["name"] = "fraud<b>"
    records.append(
        {"type": "notification", **notification_event("critical", evil, {"rollout": "bad"}, "me")}
    )
    page = render_report(records, "bad")
    assert "<script" not in page and "fraud<b>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "fraud&lt;b&gt;" in page


def test_a_trail_with_several_rollouts_needs_one_chosen(trail: Path) -> None:
    with pytest.raises(ReportError, match="holds rollouts good, bad: pick one with --rollout"):
        render_report(read_records(trail))
    with pytest.raises(ReportError, match="no decisions of rollout 'ugly'"):
        render_report(read_records(trail), "ugly")


def test_a_tampered_trail_is_flagged_in_the_report(tmp_path: Path) -> None:
    path = tmp_path / "trail.jsonl"
    replayed_trail(path, ("bad",))
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:3] + lines[4:]))
    page = _render(path, "bad")
    assert "NOT intact" in page and "seq 4 missing" in page


def test_cli_writes_the_report_and_prints_its_path(
    trail: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out" / "good.html"
    assert main(["report", str(trail), "--rollout", "good", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert "<svg" in out.read_text()
    assert main(["report", str(trail), "-o", str(out)]) == 2
    assert "pick one with --rollout" in capsys.readouterr().err


def test_a_report_of_a_live_trail_with_only_a_few_looks(tmp_path: Path) -> None:
    path = tmp_path / "trail.jsonl"
    replayed_trail(path, ("bad",))
    few = [r for r in read_records(path) if r["type"] != "decision" or r["window"] <= 2]
    page = render_report(few, "bad")
    assert "in progress at 5%" in page
    assert len(_FIGURE.findall(page)) == 2


def test_trail_appends_survive_a_report_read(tmp_path: Path) -> None:
    # The report reads while the runner may still append: reading takes no lock it would hold.
    path = tmp_path / "trail.jsonl"
    replayed_trail(path, ("bad",))
    render_report(read_records(path), "bad")
    AuditTrail(path).append({"type": "action", "rollout": "bad", "action": "resume"})
    assert verify(path).ok


def test_actions_read_as_text_and_a_zero_estimate_has_no_sign(tmp_path: Path) -> None:
    path = tmp_path / "trail.jsonl"
    replayed_trail(path, ("bad",))
    records = read_records(path)
    records.insert(1, {"type": "action", "rollout": "bad", "action": "deploy", "stage": 5.0,
                       "actor": "me", "detail": {"weight": 5.0, "mode": "canary"}})  # fmt: skip
    last = next(r for r in reversed(records) if r["type"] == "decision")
    last["kpis"]["error_rate"]["estimate"] = -0.0
    page = render_report(records, "bad")
    assert "deploy</b> at 5% by me: weight=5, mode=canary</li>" in page
    assert "{&#x27;weight&#x27;" not in page and "{'weight'" not in page
    row = re.search(r"<tr><td>error_rate</td>.*?</tr>", page)
    assert row is not None and "<td class='num'>+0</td>" in row.group(0)
    assert not re.search(r"class='num'>[^<]*-0[<,\]]", page)  # no "-0" in any number cell


def test_a_timeout_rollback_is_told_apart_from_a_harm_rollback(tmp_path: Path) -> None:
    path = tmp_path / "trail.jsonl"
    replayed_trail(path, ("bad",))
    records = read_records(path)
    assert "rolled back at 25% (window 10) for harm" in render_report(records, "bad")
    last = next(r for r in reversed(records) if r["type"] == "decision")
    last["reasons"] = ["recall: burn-in: 24 of 30 candidate samples",
                       "no decision after 6 holds past the soak (max_holds): rolling back"]  # fmt: skip
    last["cause"] = "timeout"  # the engine's cause
    page = render_report(records, "bad")
    assert "for lack of evidence: max_holds ran out" in page and "for harm" not in page
    del last["cause"]  # a trail written before decisions had a cause: read from the reasons
    assert "for lack of evidence" in render_report(records, "bad")

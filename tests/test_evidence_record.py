"""The window record schema: evidence written before it reads and rewrites byte for byte, and a
hostile record is refused with the window and field named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kpigate.engine import Histogram, Rate, ScoreHistograms, SegmentRates
from kpigate.evidence_record import RecordError, WindowRecord, parse_record, record_of
from kpigate.policy import KpiType, load_policy
from kpigate.store.file import FileStore

REPO = Path(__file__).resolve().parent.parent
# Every JSON Lines file the repository ships (not the virtualenv's, not caches).
EVIDENCE_FILES = sorted(
    path
    for top in REPO.iterdir()
    if top.is_dir() and not top.name.startswith(".")
    for path in top.glob("**/*.jsonl")
)

# What soak-and-collect wrote before the schema existed: floats from the router's counters, a
# matured cohort, a stale flag and a note, in the builder's field order.
OLD_SOAK_RECORD = (
    '{"rollout":"fraud-detector-2","window":4,"stage":25.0,"time":"2026-11-30T10:20:00+00:00",'
    '"served_from":1764497700.25,"served_to":1764498000.5,'
    '"cohort":{"window":2,"stage":null,"matured_at":1764497900.5},'
    '"kpis":{"recall":{"baseline":{"successes":1528.0,"trials":1764.0},"candidate":null},'
    '"latency_p95":{"baseline":{"buckets":{"50":10.0,"100":40.0,"+Inf":50.0}},'
    '"candidate":{"buckets":{"50":1.0,"100":4.0,"+Inf":5.0}}}},'
    '"stale":true,"note":"router scrape lagging"}'
)
OLD_PENDING_RECORD = (
    '{"rollout":"r","window":1,"stage":5.0,"served_from":0.0,"served_to":60.0,'
    '"pending":{"window":1,"matures_at":660.0},"kpis":{}}'
)


def test_the_repository_has_evidence_files_to_check() -> None:
    assert any(p.name == "fraud-rollout.jsonl" for p in EVIDENCE_FILES)


@pytest.mark.parametrize("path", EVIDENCE_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_evidence_file_in_the_repository_round_trips_byte_for_byte(path: Path) -> None:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    for line in lines:
        assert parse_record(line).to_json_line() == line


@pytest.mark.parametrize("line", [OLD_SOAK_RECORD, OLD_PENDING_RECORD])
def test_evidence_written_by_the_old_collector_round_trips_through_the_store(
    tmp_path: Path, line: str
) -> None:
    old = tmp_path / "old.jsonl"
    old.write_text(line + "\n")
    (record,) = FileStore(old).read()
    copy = FileStore(tmp_path / "copy.jsonl")
    copy.append(record)
    assert copy.path.read_text() == line + "\n"


def test_the_example_records_convert_to_the_engine_types_of_their_policy() -> None:
    policy = load_policy(REPO / "kpigate" / "examples" / "policy.yaml")
    types = {key: kpi.type for kpi in policy.kpis for key in kpi.hypotheses()}
    lines = (REPO / "kpigate" / "examples" / "fraud-rollout.jsonl").read_text().splitlines()
    # The first record that holds a matured cohort carries every KPI type of the policy.
    line = next(line for line in lines if '"cohort"' in line)
    window = parse_record(line).to_window(types)
    forms = {type(obs.baseline) for obs in window.kpis.values()}
    assert forms == {Rate, Histogram, ScoreHistograms, SegmentRates}
    recall = window.kpis["recall"].baseline
    raw = json.loads(line)["kpis"]["recall"]["baseline"]
    assert recall == Rate(float(raw["successes"]), float(raw["trials"]))


def test_a_design_effect_is_kept() -> None:
    line = (
        '{"window":1,"stage":5,"kpis":{"recall":{"baseline":'
        '{"successes":8,"trials":10,"deff":1.7},"candidate":null}}}'
    )
    record = parse_record(line)
    assert record.to_json_line() == line
    assert record.kpis["recall"].baseline is not None


def _bad(kpis: object, **top: object) -> str:
    return json.dumps({"window": 7, "stage": 5, "kpis": kpis, **top})


def _rate(successes: object, trials: object, **extra: object) -> dict[str, object]:
    return {"recall": {"candidate": {"successes": successes, "trials": trials, **extra}}}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (_bad({}, extra=1), "window 7: extra: unknown field"),
        (_bad(_rate(1, 5, deff=-1)), "window 7: kpis.recall.candidate.deff: must not be negative"),
        (_bad(_rate(1, 5, n=1)), "window 7: kpis.recall.candidate.n: unknown field"),
        (_bad(_rate(float("nan"), 5)), "kpis.recall.candidate.successes: must be a finite number"),
        (_bad(_rate(1, float("inf"))), "kpis.recall.candidate.trials: must be a finite number"),
        (_bad(_rate(-1, 5)), "kpis.recall.candidate.successes: must not be negative, got -1"),
        (_bad(_rate(True, 5)), "kpis.recall.candidate.successes: must be a number, got true"),
        (_bad(_rate("1", 5)), 'kpis.recall.candidate.successes: must be a number, got "1"'),
        (_bad({"recall": {"control": None}}), "window 7: kpis.recall.control: unknown field"),
        (_bad({"recall": []}), "window 7: kpis.recall: Input should be a valid dictionary"),
        (
            _bad({"p95": {"baseline": {"buckets": {"1": 5, "2": 3, "+Inf": 6}}}}),
            "kpis.p95.baseline.buckets: counts must be cumulative",
        ),
        (
            _bad({"p95": {"baseline": {"buckets": {"1": 5}}}}),
            'kpis.p95.baseline.buckets: needs a "+Inf" bucket',
        ),
        (
            _bad({"p95": {"baseline": {"buckets": {"fast": 5, "+Inf": 5}}}}),
            "kpis.p95.baseline.buckets: bucket bound 'fast' is not a number",
        ),
        (
            _bad(
                {"auc": {"baseline": {"positives": {"+Inf": 1}, "negatives": {"1": 0, "+Inf": 1}}}}
            ),
            "kpis.auc.baseline: positives and negatives need the same buckets",
        ),
        (json.dumps({"window": 7, "stage": 5}), "window 7: kpis: missing field"),
        (_bad({}, served_from=10, served_to=5), 'window 7: "served_to" is before "served_from"'),
        (_bad({}, cohort={"window": 1}), "window 7: cohort.stage: missing field"),
        (_bad({}, stale="yes"), "window 7: stale: Input should be a valid boolean"),
        (
            json.dumps({"window": -1, "stage": 5, "kpis": {}}),
            'window -1: "window": a negative index (-1) is for calibration windows only',
        ),
    ],
)
def test_a_hostile_record_is_refused_naming_the_window_and_field(line: str, message: str) -> None:
    with pytest.raises(RecordError) as caught:
        parse_record(line)
    assert message in str(caught.value), caught.value


def test_an_arm_of_another_kpi_type_is_refused_when_the_policy_is_known() -> None:
    record = record_of(
        {"window": 3, "stage": 5, "kpis": {"recall": {"candidate": {"buckets": {"+Inf": 4}}}}}
    )
    with pytest.raises(RecordError, match=r"window 3: kpis\.recall\.candidate of a rate KPI"):
        record.to_window({"recall": KpiType.RATE})


def test_the_schema_is_exportable_and_refuses_extra_fields() -> None:
    schema = WindowRecord.model_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"window", "stage", "kpis"}
    assert schema["$defs"]["RateArm"]["additionalProperties"] is False
    assert "deff" in schema["$defs"]["RateArm"]["properties"]

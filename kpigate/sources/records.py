"""One window record from a source: immediate KPIs of the serving window, label KPIs of a cohort.

Without a policy `labels` section every KPI is read from the window's own counts, as before.
With one, the label KPIs (Kpi.needs_labels) come from the oldest cohort that has matured and was
not judged yet (kpigate/sources/cohorts.py), or are left out while it matures: the record then
says which cohort it waits for ("pending") and the gate holds on it. soak-and-collect and
`kpigate windows` both build their records here, so a live rollout and its backtest agree. The
record is a WindowRecord (kpigate/evidence_record.py): counts a source cannot vouch for (NaN,
negative, more successes than trials) make the window stale, so the gate holds on it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from kpigate.evidence_record import RecordError, WindowRecord, record_of
from kpigate.policy import Kpi, KpiType, Labels, Policy, Scope
from kpigate.sources import catalogue
from kpigate.sources.base import Collected, SourceError
from kpigate.sources.cohorts import (
    NextCohort,
    ServedWindow,
    judged_cohorts,
    next_cohort,
    served_windows,
)
from kpigate.sources.counts import WindowCounts


class CohortReader(Protocol):
    def matured(self, cohort: NextCohort, labels: Labels) -> Collected:
        """The label tables of a matured cohort; raises SourceError when they cannot be read."""


def window_kpis(
    policy: Policy, counts: WindowCounts, matured: WindowCounts | None
) -> dict[str, Any]:
    """The record's "kpis": label KPIs from `matured` when the policy has labels (left out
    when it is None), every other KPI from the window's own counts."""
    out: dict[str, Any] = {}
    for kpi in policy.kpis:
        from_cohort = policy.labels is not None and kpi.needs_labels
        if from_cohort and matured is None:
            continue
        source = matured if from_cohort and matured is not None else counts
        for key in kpi.hypotheses():
            out[key] = catalogue.read(kpi, key, source)
    return out


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def cohort_part(
    labels: Labels,
    reader: object,
    history: Sequence[WindowRecord],
    window: ServedWindow,
) -> tuple[WindowCounts | None, dict[str, Any], str]:
    """(matured counts or None, the record's cohort/pending fields, a note) at the end of
    `window`, given the rollout's earlier records."""
    windows = [*served_windows(history), window]
    found = next_cohort(windows, judged_cohorts(history), labels.horizon, now=window.served_to)
    if found is None:
        return None, {}, ""
    waiting = {"pending": found.pending_json()}
    if not found.due:
        note = (
            f"waiting for labels: the cohort of window {found.window.index} matures at "
            f"{_clock(found.matures_at)}"
        )
        return None, waiting, note
    matured = getattr(reader, "matured", None)
    if matured is None:
        name = getattr(reader, "name", type(reader).__name__)
        return None, waiting, f"the {name} source cannot read matured cohorts"
    try:
        collected: Collected = matured(found, labels)
    except SourceError as exc:
        return None, waiting, f"matured cohort of window {found.window.index} missing: {exc}"
    if collected.stale:
        return None, waiting, f"cohort of window {found.window.index}: {collected.note}"
    return collected.counts, {"cohort": found.cohort_json()}, collected.note


@runtime_checkable
class DesignEffectReader(Protocol):
    def design_effects(
        self, since: float, window: ServedWindow, cohort: NextCohort | None
    ) -> Mapping[tuple[str, str], float]:
        """(arm, metric) -> the arm's design effect over the rollout up to this window."""


def add_design_effects(
    policy: Policy,
    reader: object,
    record: dict[str, Any],
    history: Sequence[WindowRecord],
) -> str:
    """Give each rate arm of the record its design effect ("deff", evidence.Rate), when the
    source can tell one (it sees users: the prediction log's entity_key). Rates in one segment
    and gaps have none: they stay binomial, as do the KPIs of every other source. Returns a
    note when the source could not tell them."""
    served = (record.get("served_from"), record.get("served_to"))
    if (
        not isinstance(reader, DesignEffectReader)
        or not record["kpis"]
        or not all(isinstance(t, int | float) for t in served)
    ):
        return ""
    windows = [*served_windows(history), _served(record)]
    cohort = None
    if policy.labels is not None and "cohort" in record:
        judged = judged_cohorts(history)
        cohort = next_cohort(windows, judged, policy.labels.horizon, now=windows[-1].served_to)
    try:
        deffs = reader.design_effects(windows[0].served_from, windows[-1], cohort)
    except SourceError as exc:
        return f"design effects unknown (binomial variance): {exc}"
    for kpi in policy.kpis:
        if kpi.type is not KpiType.RATE or kpi.segments or kpi.segment != "all":
            continue
        arms = record["kpis"].get(kpi.name) or {}
        for arm, data in arms.items():
            deff = deffs.get((arm, catalogue.metric_of(kpi)))
            if isinstance(data, dict) and deff is not None:
                data["deff"] = deff
    return ""


def _served(record: Mapping[str, Any]) -> ServedWindow:
    return ServedWindow(
        int(record["window"]),
        float(record["stage"]),
        float(record["served_from"]),
        float(record["served_to"]),
    )


def build_record(
    policy: Policy,
    reader: object,
    collected: Collected | SourceError,
    history: Sequence[WindowRecord],
    base: dict[str, Any],
) -> WindowRecord:
    """Complete `base` (rollout, window, stage, time, served_from, served_to) into a record."""
    if isinstance(collected, SourceError):
        return record_of({**base, "kpis": {}, "stale": True, "note": f"missing: {collected}"})
    record = _record(policy, reader, collected, history, base)
    try:
        return record_of(record)
    except RecordError as exc:
        note = f"invalid counts from the source: {exc}"
        return record_of({**base, "kpis": {}, "stale": True, "note": note})


def _record(
    policy: Policy,
    reader: object,
    collected: Collected,
    history: Sequence[WindowRecord],
    base: dict[str, Any],
) -> dict[str, Any]:
    record = dict(base)
    notes = [collected.note] if collected.note else []
    matured: WindowCounts | None = None
    if policy.labels is not None:
        window = ServedWindow(
            int(base["window"]), float(base["stage"]), base["served_from"], base["served_to"]
        )
        matured, fields, note = cohort_part(policy.labels, reader, history, window)
        record.update(fields)
        if note:
            notes.append(note)
    record["kpis"] = window_kpis(policy, collected.counts, matured)
    if note := add_design_effects(policy, reader, record, history):
        notes.append(note)
    if collected.stale:
        record["stale"] = True
    if notes:
        record["note"] = "; ".join(notes)
    return record


# --- A/A calibration windows: the baseline before the rollout, in two halves by user ------------


@runtime_checkable
class CalibrationReader(Protocol):
    def calibration(self, window: ServedWindow, cohort: ServedWindow | None) -> Collected:
        """The baseline's counts of `window` split in two halves by user ("baseline" and
        "candidate"), its label tables from `cohort` (matured before the rollout's start)."""


def calibrated(policy: Policy, kpi: Kpi) -> bool:
    """Whether a KPI gets calibration data: rollout-scope KPIs the catalogue reads from rows
    both halves have. error_rate has none (a failed request is logged as the candidate's
    only), a KPI's own PromQL cannot be split by user, and a window-scope KPI keeps its model
    variance."""
    return (
        kpi.scope is Scope.ROLLOUT
        and kpi.queries is None
        and catalogue.metric_of(kpi) != "error_rate"
        and policy.calibration.windows > 0
    )


def calibration_windows(
    policy: Policy, start: float
) -> list[tuple[ServedWindow, ServedWindow | None]]:
    """The A/A windows before a rollout starting at `start`, oldest first: (the serving window
    of the immediate KPIs, the cohort of the label KPIs). Each is as long as the first stage's
    interval and numbered -k .. -1; with a labels section the cohorts end a horizon earlier, so
    every one has matured by `start` (without one, label KPIs come from the serving window)."""
    k = policy.calibration.windows
    first = policy.stages[0]
    step = first.interval
    shift = policy.labels.horizon if policy.labels is not None else None
    out: list[tuple[ServedWindow, ServedWindow | None]] = []
    for i in range(k, 0, -1):
        served = ServedWindow(-i, first.traffic, start - i * step, start - (i - 1) * step)
        cohort = None
        if shift is not None:
            cohort = ServedWindow(
                -i, first.traffic, served.served_from - shift, served.served_to - shift
            )
        out.append((served, cohort))
    return out


def calibration_records(
    policy: Policy, reader: object, rollout: str, start: float
) -> list[WindowRecord]:
    """The A/A calibration records of a rollout starting at `start`, oldest first, when the
    source can split the baseline by user (the prediction log); none otherwise, and then the
    gate estimates the between-window variance from the rollout's own windows as before. A
    window the source cannot read, or whose counts fail validation, is left out: calibration
    is a better variance, never a precondition."""
    if not isinstance(reader, CalibrationReader) or policy.calibration.windows <= 0:
        return []
    kpis = [kpi for kpi in policy.kpis if calibrated(policy, kpi)]
    if not kpis:
        return []
    out = []
    for served, cohort in calibration_windows(policy, start):
        try:
            collected = reader.calibration(served, cohort)
        except SourceError:
            continue
        data: dict[str, Any] = {}
        labelled = False
        for kpi in kpis:
            for key in kpi.hypotheses():
                arms = catalogue.read(kpi, key, collected.counts)
                if all(arms.get(arm) is not None for arm in catalogue.ARMS):
                    data[key] = arms  # a half without data compares nothing
                    labelled = labelled or kpi.needs_labels
        if not data:
            continue  # before the baseline served anything: no calibration window
        record: dict[str, Any] = {
            "rollout": rollout,
            "window": served.index,
            "stage": served.stage,
            "served_from": served.served_from,
            "served_to": served.served_to,
            "kpis": data,
            "calibration": True,
        }
        if cohort is not None and labelled:
            record["note"] = (
                f"A/A calibration; label KPIs: the cohort served {_clock(cohort.served_from)} to "
                f"{_clock(cohort.served_to)}, matured before the rollout's start"
            )
        try:
            out.append(record_of(record))
        except RecordError:
            continue
    return out

"""The window record: the one schema of the evidence a source hands to the store, replay and gate.

A record is one evaluation window of one rollout, as JSON (one line of an evidence file, or of
`kpigate replay`'s input). Sources build it (kpigate/sources/records.py), stores keep it
(kpigate/store/), and the gate reads it into the engine's dataclasses (`to_window`). Extra fields
are refused at every level, counts must be finite and not negative, and `as_json()` gives back
exactly the fields that were set, with their JSON number types, so evidence written before this
schema existed reads and rewrites byte for byte. `WindowRecord.model_json_schema()` is the
published schema (docs/prediction-log.md).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from kpigate.engine.evidence import (
    ArmData,
    Cohort,
    Histogram,
    Observation,
    Pending,
    Rate,
    ScoreHistograms,
    SegmentRates,
    Window,
)
from kpigate.policy import KpiType


class RecordError(ValueError):
    """A record that does not follow the schema; the message names the window and the field."""


def _number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, got {json.dumps(value, default=str)[:60]}")
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value}")
    return value


def _count(value: Any) -> int | float:
    number = _number(value)
    if number < 0:
        raise ValueError(f"must not be negative, got {number:g}")
    return number


def _percentage(value: Any) -> int | float:
    number = _number(value)
    if not 0 < number <= 100:
        raise ValueError(f"is a traffic percentage in (0, 100], got {number:g}")
    return number


# JSON numbers keep their type (an int stays an int), so a rewritten record is byte-identical.
Count = Annotated[
    int | float, PlainValidator(_count), WithJsonSchema({"type": "number", "minimum": 0})
]
Seconds = Count  # Unix seconds
Percent = Annotated[
    int | float,
    PlainValidator(_percentage),
    WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "maximum": 100}),
]
# Rollout windows count from 0 or 1 up; calibration windows (before the rollout) count down from
# -1 (the one just before the start), so a stream stays in increasing window order.
WindowIndex = Annotated[StrictInt, Field(gt=-(2**53), lt=2**53)]
CohortIndex = Annotated[StrictInt, Field(ge=0, lt=2**53)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def as_json(self) -> dict[str, Any]:
        """The fields that were set, as JSON values (what the record file holds)."""
        return self.model_dump(mode="json", exclude_unset=True)


# --- one arm of one KPI, by KPI type ----------------------------------------------------------


class RateArm(_Strict):
    """rate KPIs (and each segment of a gap): successes out of trials."""

    successes: Count
    trials: Count
    # Design effect: how much the variance exceeds the binomial's (repeat users, clustering);
    # the collector may set it, the record keeps it.
    deff: Count | None = None

    @model_validator(mode="after")
    def _within(self) -> RateArm:
        if self.successes > self.trials:
            raise ValueError(f"successes ({self.successes:g}) exceed trials ({self.trials:g})")
        return self

    def to_engine(self) -> Rate:
        # The one place that hands `deff` (the arm's design effect, docs/engine.md) on.
        deff = None if self.deff is None else float(self.deff)
        return Rate(float(self.successes), float(self.trials), deff)


def _buckets(data: dict[str, float]) -> dict[str, float]:
    if not data:
        raise ValueError("must map bucket upper bounds to cumulative counts")
    pairs = []
    for text, count in data.items():
        try:
            pairs.append((float(text), count))
        except ValueError:
            raise ValueError(f"bucket bound {text!r} is not a number") from None
    pairs.sort()
    if not math.isinf(pairs[-1][0]):
        raise ValueError('needs a "+Inf" bucket holding the total count')
    if any(b < a for (_, a), (_, b) in itertools.pairwise(pairs)):
        raise ValueError("counts must be cumulative (non-decreasing with the bound)")
    return data


Buckets = Annotated[dict[str, Count], AfterValidator(_buckets)]


def _histogram(buckets: Mapping[str, float]) -> Histogram:
    pairs = sorted((float(bound), float(count)) for bound, count in buckets.items())
    return Histogram(tuple(b for b, _ in pairs), tuple(c for _, c in pairs))


class HistogramArm(_Strict):
    """quantile and exceedance KPIs: cumulative counts per bucket upper bound ("+Inf" last)."""

    buckets: Buckets

    def to_engine(self) -> Histogram:
        return _histogram(self.buckets)


class ScoresArm(_Strict):
    """auc KPIs: a score histogram per true class, on the same buckets."""

    positives: Buckets
    negatives: Buckets

    @model_validator(mode="after")
    def _same_buckets(self) -> ScoresArm:
        if {float(b) for b in self.positives} != {float(b) for b in self.negatives}:
            raise ValueError("positives and negatives need the same buckets")
        return self

    def to_engine(self) -> ScoreHistograms:
        return ScoreHistograms(_histogram(self.positives), _histogram(self.negatives))


class SegmentsArm(_Strict):
    """gap KPIs: one rate in each of the two segments."""

    a: RateArm
    b: RateArm

    def to_engine(self) -> SegmentRates:
        return SegmentRates(self.a.to_engine(), self.b.to_engine())


_FORMS: dict[str, tuple[frozenset[str], str]] = {
    "rate": (frozenset({"successes", "trials"}), '{"successes": S, "trials": N}'),
    "histogram": (frozenset({"buckets"}), '{"buckets": {...}}'),
    "scores": (frozenset({"positives", "negatives"}), '{"positives": {...}, "negatives": {...}}'),
    "segments": (frozenset({"a", "b"}), '{"a": {...}, "b": {...}}'),
}
_FORM_OF_MODEL: dict[type[BaseModel], str] = {
    RateArm: "rate",
    HistogramArm: "histogram",
    ScoresArm: "scores",
    SegmentsArm: "segments",
}
_FORM_OF_TYPE = {
    KpiType.RATE: "rate",
    KpiType.QUANTILE: "histogram",
    KpiType.EXCEEDANCE: "histogram",
    KpiType.AUC: "scores",
    KpiType.GAP: "segments",
}


def _form(data: Any) -> str | None:
    """Which arm form a JSON object is, by its keys (None: none of them)."""
    if isinstance(data, BaseModel):
        return _FORM_OF_MODEL.get(type(data))
    if not isinstance(data, dict):
        return None
    keys = set(data)
    for name, (required, _) in _FORMS.items():
        if required <= keys:
            return name
    return None


Arm = Annotated[
    Annotated[RateArm, Tag("rate")]
    | Annotated[HistogramArm, Tag("histogram")]
    | Annotated[ScoresArm, Tag("scores")]
    | Annotated[SegmentsArm, Tag("segments")],
    Discriminator(
        _form,
        custom_error_type="arm_form",
        custom_error_message="must be one of " + ", ".join(f for _, f in _FORMS.values()),
    ),
]


class KpiArms(_Strict):
    """One KPI in one window; an arm left out or null sent no data."""

    baseline: Arm | None = None
    candidate: Arm | None = None


# --- the record ---------------------------------------------------------------------------------


class CohortRef(_Strict):
    """The serving window whose matured labels this record's label KPIs count."""

    window: CohortIndex
    stage: Percent | None  # null when the cohort straddles two stages
    matured_at: Seconds


class PendingRef(_Strict):
    """The next cohort still maturing, when this record carries no label KPIs."""

    window: CohortIndex
    matures_at: Seconds


class WindowRecord(_Strict):
    """One evaluation window of one rollout (field order = the order written to disk).

    `calibration: true` marks an A/A window from before the rollout: the baseline's traffic
    split in two halves by a hash of the user, "baseline" one half and "candidate" the other,
    with every KPI (label KPIs as cohorts matured before the start) and no cohort or pending
    field. Its window index is negative (-1 the last window before the start) and `stage` the
    rollout's first stage. The gate uses it for the between-window variance only.
    """

    rollout: StrictStr | StrictInt = ""
    window: WindowIndex
    stage: Percent
    time: StrictStr | None = None  # when it was collected (ISO 8601), for people
    served_from: Seconds | None = None  # the interval its traffic was served in
    served_to: Seconds | None = None
    cohort: CohortRef | None = None
    pending: PendingRef | None = None
    kpis: dict[str, KpiArms]
    stale: StrictBool = False  # the collector marked the data too old
    note: StrictStr = ""
    calibration: StrictBool = False  # an A/A window of the baseline before the rollout

    @model_validator(mode="after")
    def _served_in_order(self) -> WindowRecord:
        start, end = self.served_from, self.served_to
        if start is not None and end is not None and end < start:
            raise ValueError('"served_to" is before "served_from"')
        if self.calibration:
            if self.window >= 0:
                raise ValueError(
                    f'"window": a calibration window precedes the rollout and has a negative '
                    f"index (-1 is the last before the start), got {self.window}"
                )
            if self.cohort is not None or self.pending is not None:
                raise ValueError(
                    'a calibration window carries its matured labels itself: no "cohort" or '
                    '"pending"'
                )
        elif self.window < 0:
            raise ValueError(
                f'"window": a negative index ({self.window}) is for calibration windows only '
                '(add "calibration": true)'
            )
        return self

    @property
    def rollout_id(self) -> str:
        return str(self.rollout)

    def to_json_line(self) -> str:
        return json.dumps(self.as_json(), separators=(",", ":"))

    def to_window(self, kpi_types: Mapping[str, KpiType]) -> Window:
        """The engine's view of this record; RecordError when a KPI is not in `kpi_types` or an
        arm has another KPI type's form."""
        unknown = [name for name in self.kpis if name not in kpi_types]
        if unknown:
            raise RecordError(
                f"window {self.window}: KPI(s) {unknown} not in the policy (known: "
                f"{sorted(kpi_types)}); declare them in the policy, or keep every window's "
                "KPIs the same as the first"
            )
        observations = {
            name: Observation(
                baseline=self._arm(name, "baseline", arms.baseline, kpi_types[name]),
                candidate=self._arm(name, "candidate", arms.candidate, kpi_types[name]),
            )
            for name, arms in self.kpis.items()
        }
        cohort = (
            None
            if self.cohort is None
            else Cohort(
                self.cohort.window,
                None if self.cohort.stage is None else float(self.cohort.stage),
                float(self.cohort.matured_at),
            )
        )
        pending = (
            None
            if self.pending is None
            else Pending(self.pending.window, float(self.pending.matures_at))
        )
        return Window(
            self.window,
            float(self.stage),
            observations,
            self.stale,
            self.note,
            cohort,
            pending,
            self.calibration,
        )

    def _arm(
        self,
        name: str,
        side: str,
        arm: RateArm | HistogramArm | ScoresArm | SegmentsArm | None,
        kpi_type: KpiType,
    ) -> ArmData | None:
        if arm is None:
            return None
        wanted = _FORM_OF_TYPE[kpi_type]
        if _form(arm) != wanted:
            raise RecordError(
                f"window {self.window}: kpis.{name}.{side} of a {kpi_type.value} KPI must be "
                f"{_FORMS[wanted][1]}"
            )
        return arm.to_engine()


# --- reading ------------------------------------------------------------------------------------

_TAGS = set(_FORMS)


def _where(loc: tuple[int | str, ...]) -> str:
    # The union's tags name the arm form, not a field: leave them out of the path.
    parts = [str(p) for i, p in enumerate(loc) if not (i >= 3 and p in _TAGS)]
    return ".".join(parts)


def describe(exc: ValidationError, data: Any) -> str:
    """One line per problem: `window W: field.path: what is wrong (got X)`."""
    window = data.get("window") if isinstance(data, dict) else None
    named = isinstance(window, int) and not isinstance(window, bool)
    prefix = f"window {window}: " if named else ""
    problems = []
    for error in exc.errors(include_url=False):
        where = _where(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field (not in the window record schema)"
        elif error["type"] == "missing":
            message = "missing field"
        elif error["type"] not in ("value_error", "arm_form") and "input" in error:
            message += f", got {json.dumps(error['input'], default=str)[:60]}"
        problems.append(f"{where}: {message}" if where else message)
    return prefix + "; ".join(problems)


def record_of(data: Any) -> WindowRecord:
    """A record from decoded JSON; RecordError says what is wrong and where."""
    if isinstance(data, WindowRecord):
        return data
    if not isinstance(data, dict):
        raise RecordError("each window record must be a JSON object")
    try:
        return WindowRecord.model_validate(data)
    except ValidationError as exc:
        raise RecordError(describe(exc, data)) from None


def parse_record(text: str) -> WindowRecord:
    """A record from one JSON line."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    return record_of(data)


def schema() -> dict[str, Any]:
    """The JSON schema of a window record."""
    return WindowRecord.model_json_schema()

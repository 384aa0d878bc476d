"""The rollout policy: stages, KPIs, margins and error budgets, loaded from YAML and validated."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from kpigate.policy_file import PolicyFileError, non_finite_fields, read_document
from kpigate.sources.promql import KpiQueries, PromqlError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from `90`, `"90s"`, `"10m"`, `"1.5h"`; bare numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 10m, 90s or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration; write e.g. 10m, 90s or 1h")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a finite duration")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


# Readings computed from ground-truth labels; every other reading is known when the request is
# answered (latency, errors, decisions). The KPI catalogue reads exactly these from labels.
LABEL_METRICS = frozenset({"recall", "precision", "fpr", "chargeback_rate", "accuracy", "auc"})


class Category(StrEnum):
    PERFORMANCE = "performance"
    OPERATIONAL = "operational"
    BUSINESS = "business"
    ETHICAL = "ethical"


class KpiType(StrEnum):
    RATE = "rate"
    QUANTILE = "quantile"
    EXCEEDANCE = "exceedance"  # share of observations above a threshold (a bucket bound)
    AUC = "auc"
    GAP = "gap"


class Direction(StrEnum):
    HIGHER = "higher"
    LOWER = "lower"


class Action(StrEnum):
    ROLLBACK = "rollback"
    HOLD = "hold"
    ALERT = "alert"


class Scope(StrEnum):
    # rollout: anytime-valid evidence accumulated over every window of the rollout.
    # window: the latest window alone; for transient operational signals (a latency spike
    # should hold the rollout while it lasts, not forever), so only hold/alert may use it.
    ROLLOUT = "rollout"
    WINDOW = "window"


class Method(StrEnum):
    SEQUENTIAL = "sequential"
    SIGMA = "sigma"


class TimeoutAction(StrEnum):
    ROLLBACK = "rollback"
    SUSPEND = "suspend"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Stage(_Strict):
    """One traffic step: the candidate's share, how long it soaks, how often it is judged."""

    traffic: float = Field(gt=0, le=100, description="candidate share of traffic, percent")
    soak: Duration = Field(default=1800.0, description="minimum time at this stage")
    interval: Duration = Field(default=300.0, description="time between evaluations")
    promote_when: Literal["noninferior", "no_harm"] = Field(
        default="noninferior",
        description="noninferior: every gating KPI certified within its margin; no_harm: "
        "every gating KPI judged (past burn-in, with data) and none failing. A 5% stage "
        "rarely holds enough labels to certify a tight margin; no_harm lets it advance on "
        "safety while later stages certify",
    )

    @property
    def looks(self) -> int:
        """Evaluations in the soak window; promotion is considered from the last of them."""
        return max(1, round(self.soak / self.interval))

    @model_validator(mode="after")
    def _interval_fits(self) -> Stage:
        if self.interval > self.soak:
            raise ValueError(
                f"interval ({self.interval:g}s) is longer than the soak ({self.soak:g}s)"
            )
        return self


class SigmaRule(_Strict):
    """The paper's rule: candidate KPI outside the baseline's mu +/- k sigma fails."""

    k: float = Field(default=2.0, gt=0)
    history_windows: int = Field(
        default=3,
        ge=2,
        description="baseline windows used for mu and sigma when the KPI does not give them",
    )
    ewma_lambda: float | None = Field(
        default=None, gt=0, le=1, description="judge the EWMA instead of the raw value"
    )


class RegistryRules(_Strict):
    """What registry-approval checks before any traffic moves."""

    approval_alias: str | None = Field(
        default="candidate",
        description="a version holding this alias is approved (the kpigate.approved=true tag "
        "always approves)",
    )
    require_signature_match: bool = Field(
        default=True, description="the candidate's input schema must equal the champion's"
    )
    min_offline: dict[str, float] = Field(
        default_factory=dict, description="offline metric -> minimum, e.g. recall: 0.8"
    )
    max_offline: dict[str, float] = Field(
        default_factory=dict, description="offline metric -> maximum, e.g. fpr: 0.02"
    )


class Kpi(_Strict):
    """One quality KPI: how to read it, which way is better, and what a failure triggers."""

    name: str = Field(min_length=1)
    category: Category = Category.PERFORMANCE
    type: KpiType = KpiType.RATE
    direction: Direction = Direction.HIGHER
    margin: float = Field(default=0.01, ge=0, description="non-inferiority margin")
    margin_type: Literal["absolute", "relative"] = "absolute"
    action: Action = Action.ROLLBACK
    scope: Scope = Scope.ROLLOUT
    gating: bool | None = Field(
        default=None, description="must be shown non-inferior to promote (default: not alerts)"
    )
    fail_beyond_margin: bool = Field(
        default=False,
        description="fail only on evidence of harm beyond the margin (default: any harm)",
    )
    min_samples: int = Field(default=100, ge=1, description="burn-in per arm before judging")
    detect: float | None = Field(
        default=None,
        gt=0,
        description="harm (KPI units) to catch fastest; default harm_scale x margin",
    )
    quantile: float | None = Field(default=None, gt=0, lt=1)
    threshold: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="exceedance KPIs: the share of observations above this value (KPI units, "
        "e.g. 250 ms), which must be one of the histogram's bucket bounds",
    )
    signed: bool = Field(
        default=False,
        description="gap KPIs: compare the signed gap a - b; by default the gap's magnitude "
        "|a - b| is compared, so a reversed or widened gap both count as worse",
    )
    segments: tuple[str, ...] = Field(
        default=(), description="segment values judged as separate hypotheses (name{value})"
    )
    metric: str | None = Field(
        default=None,
        description="router reading (see kpigate/sources/catalogue.py); default: the KPI name",
    )
    segment: str = Field(default="all", description="segment a rate is read in, e.g. region=eu")
    gap_segments: tuple[str, str] | None = Field(
        default=None, description="the two segments of a gap KPI, e.g. [amount_band=high, ...]"
    )
    queries: KpiQueries | None = Field(
        default=None,
        description="the KPI's own PromQL per part, read by the Prometheus source instead of "
        "the router's metrics (kpigate/sources/promql.py)",
    )
    baseline_mean: float | None = Field(default=None, description="mu for method sigma")
    baseline_sd: float | None = Field(default=None, gt=0, description="sigma for method sigma")
    description: str = ""

    @property
    def is_gating(self) -> bool:
        return self.action is not Action.ALERT if self.gating is None else self.gating

    @property
    def reading(self) -> str:
        """What the KPI reads: `metric`, else `latency` / `auc` by type, else its own name."""
        if self.metric:
            return self.metric
        if self.type in (KpiType.QUANTILE, KpiType.EXCEEDANCE):
            return "latency"
        if self.type is KpiType.AUC:
            return "auc"
        return self.name

    @property
    def needs_labels(self) -> bool:
        """Judged on matured prediction cohorts (labels), not per serving window."""
        if self.queries is not None:
            return False  # the user's PromQL is taken per window, as Prometheus answers it
        return self.type is KpiType.AUC or self.reading in LABEL_METRICS

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if re.search(r"\s", value):
            raise ValueError("a KPI name cannot contain spaces")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Kpi:
        if self.segments and "{" in self.name:
            raise ValueError("a KPI with `segments` cannot have braces in its name")
        if self.type is KpiType.QUANTILE and self.quantile is None:
            raise ValueError("a quantile KPI needs `quantile` (for example 0.95)")
        if self.type is not KpiType.QUANTILE and self.quantile is not None:
            raise ValueError("`quantile` only applies to KPIs of type quantile")
        if (self.type is KpiType.EXCEEDANCE) != (self.threshold is not None):
            raise ValueError("an exceedance KPI needs `threshold`, and only it takes one")
        if self.type is KpiType.GAP and not self.signed and self.direction is Direction.HIGHER:
            raise ValueError(
                "a gap is compared on its magnitude, where lower is better: set `direction: "
                "lower`, or `signed: true` to compare the signed gap a - b"
            )
        if self.signed and self.type is not KpiType.GAP:
            raise ValueError("`signed` only applies to KPIs of type gap")
        if self.scope is Scope.WINDOW and self.action is Action.ROLLBACK:
            raise ValueError(
                "scope `window` cannot roll back: a per-window test repeated at every look "
                "would spend the false-rollback budget many times; use scope `rollout`"
            )
        if self.margin == 0 and self.detect is None:
            raise ValueError("margin is 0, so give `detect`: the size of harm to catch fastest")
        if (self.baseline_mean is None) != (self.baseline_sd is None):
            raise ValueError("give both baseline_mean and baseline_sd, or neither")
        if self.queries is not None:
            gap = self.type is KpiType.GAP
            segments = (self.gap_segments or ()) if gap else (self.segments or (self.segment,))
            try:
                self.queries.check(self.type.value, segments, gap or bool(self.segments))
            except PromqlError as exc:
                raise ValueError(f"queries: {exc}") from None
        return self

    def hypotheses(self) -> list[str]:
        """Keys under which window data for this KPI arrive: one per segment value."""
        if not self.segments:
            return [self.name]
        return [f"{self.name}{{{segment}}}" for segment in self.segments]


class Labels(_Strict):
    """When ground truth is known: label KPIs compare cohorts of predictions at equal age.

    A prediction belongs to the cohort of the window in which it was served. A cohort is
    mature `horizon` after its window ends; only then are its label KPIs judged, once, with
    every prediction that has no label by then counted as `unlabeled` says.
    """

    horizon: Duration = Field(
        description="a cohort's labels are final this long after its window ends (e.g. 30d "
        "for chargebacks, 2m in the demo)"
    )
    unlabeled: Literal["negative", "exclude"] = Field(
        default="negative",
        description="a prediction without a label at maturity: negative (silence means "
        "legitimate, as in fraud) or exclude (both labels are always sent)",
    )


class Calibration(_Strict):
    """A/A calibration: the baseline's own windows before the rollout, split in two halves by a
    hash of the user, estimate the between-window variance before the candidate's first window
    (docs/engine.md). Each is as long as the first stage's interval; for label KPIs they are
    cohorts that matured before the rollout started. Sources that cannot split the baseline by
    user (router scrape, Prometheus, PromQL) give none, and the variance is estimated from the
    rollout's own windows alone."""

    windows: int = Field(
        default=24,
        ge=0,
        le=1000,
        description="calibration windows before the rollout (each one first-stage interval "
        "long); 0 turns calibration off",
    )


def _default_stages() -> tuple[Stage, ...]:
    return tuple(Stage(traffic=t) for t in (5, 25, 50, 100))


class Policy(_Strict):
    """A whole rollout's rules. Every field has a default except the KPIs."""

    name: str = "rollout"
    method: Method = Method.SEQUENTIAL
    alpha: float = Field(
        default=0.05, gt=0, lt=1, description="false-rollback budget for the whole rollout"
    )
    promotion_alpha: float = Field(
        default=0.05, gt=0, lt=1, description="false-promotion budget (non-inferiority)"
    )
    stages: tuple[Stage, ...] = Field(default_factory=_default_stages, min_length=1)
    holdback: float = Field(
        default=5.0,
        ge=0,
        lt=50,
        description="percent kept on the baseline at 100% until the rollout ends; 0 compares "
        "with the baseline's recorded history instead",
    )
    max_holds: int = Field(default=6, ge=0, description="inconclusive looks after the soak")
    on_max_holds: TimeoutAction = TimeoutAction.SUSPEND
    max_staleness: Duration = Field(default=900.0, description="older evidence is missing")
    harm_scale: float = Field(
        default=2.0,
        gt=0,
        description="spread of the harm mixture, in margins (sets how fast large harm is caught)",
    )
    sigma: SigmaRule = Field(default_factory=SigmaRule)
    labels: Labels | None = Field(
        default=None,
        description="label horizon and the unlabeled rule; without it, label KPIs are taken "
        "per window as the source reports them (immediate labels, or replayed cohorts)",
    )
    registry: RegistryRules = Field(default_factory=RegistryRules)
    calibration: Calibration = Field(
        default_factory=Calibration,
        description="A/A windows of the baseline before the rollout, for the between-window "
        "variance",
    )
    kpis: tuple[Kpi, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        traffic = [s.traffic for s in self.stages]
        for before, after in itertools.pairwise(traffic):
            if after <= before:
                raise ValueError(f"stages must increase: {before:g}% is followed by {after:g}%")
        if traffic[-1] != 100:
            raise ValueError(f"the last stage must be 100% (it is {traffic[-1]:g}%)")
        names = [k.name for k in self.kpis]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"KPI names must be unique: {', '.join(duplicates)}")
        if self.labels is not None and any(k.needs_labels and k.is_gating for k in self.kpis):
            for stage in self.stages:
                # The stage's first cohort (served in its first window) must mature before the
                # stage's last possible look, or the stage can never be promoted.
                matures = stage.interval + self.labels.horizon
                decides = stage.soak + self.max_holds * stage.interval
                if matures > decides:
                    raise ValueError(
                        f"stage {stage.traffic:g}%: its first cohort matures "
                        f"{matures:g}s after the stage starts (interval + labels.horizon) but "
                        f"the stage must decide within {decides:g}s (soak + max_holds x "
                        "interval); lengthen the soak or max_holds, or shorten the horizon"
                    )
        return self

    def uneven_horizon_stages(self) -> list[Stage]:
        """Stages whose interval does not divide labels.horizon. The routers count a prediction
        one horizon after it was served, so a window's matured counters (router /metrics,
        Prometheus) are exactly one cohort only when the horizon is whole windows; the predlog
        source reads each cohort exactly whatever the horizon."""
        if self.labels is None:
            return []
        out = []
        for stage in self.stages:
            ratio = self.labels.horizon / stage.interval
            if abs(ratio - round(ratio)) > 1e-6:
                out.append(stage)
        return out

    def rules(self) -> dict[str, Any]:
        """Everything the gate decides by except the clock: the policy without its durations
        (soaks, intervals, max_staleness, labels.horizon), each stage with its number of looks.
        A running rollout may change its durations between looks (`kpigate demo` lengthens its
        windows when the machine slows) but never its rules: the engine counts looks and
        stratifies per window, so earlier windows are judged alike under either policy."""
        data = self.model_dump(mode="json")
        for stage, spec in zip(data["stages"], self.stages, strict=True):
            del stage["soak"], stage["interval"]
            stage["looks"] = spec.looks
        del data["max_staleness"]
        if data.get("labels") is not None:
            del data["labels"]["horizon"]
        return data

    def stage_for(self, traffic: float) -> Stage | None:
        return next((s for s in self.stages if s.traffic == traffic), None)

    def candidate_weight(self, stage: Stage) -> float:
        """The candidate's actual share at a stage: the last stage keeps the holdback."""
        if stage.traffic >= 100:
            return 100.0 - self.holdback
        return stage.traffic


class PolicyError(ValueError):
    """A policy that cannot be used; the message names the file, the field and the problem."""


def _location(loc: Iterable[int | str], data: Any) -> str:
    """`kpis[1].margin` rather than pydantic's `kpis.1.margin`, with the KPI's name if known."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and item < len(node):
                node = node[item]
                if isinstance(node, dict) and "name" in node:
                    label = f"[{item}] ({node['name']})"
            parts.append(label)
        else:
            parts.append(("." if parts else "") + item)
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


def _items_failed(loc: tuple[Any, ...], errors: list[Any]) -> bool:
    """Whether some error lies inside the list at `loc` (its items were reported)."""
    n = len(loc)
    return any(len(e["loc"]) > n and tuple(e["loc"][:n]) == tuple(loc) for e in errors)


def policy_from_dict(data: Any, source: str = "<policy>") -> Policy:
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: a policy is a mapping of fields, got {type(data).__name__}")
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = []
        errors = exc.errors()
        for err in errors:
            if err["type"] == "too_short" and _items_failed(err["loc"], errors):
                continue  # pydantic counts only the items that validated: the items said why
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown field (check the spelling)"
            if len(message) > 300:  # a hostile value is quoted back: keep the error readable
                message = f"{message[:150]} … {message[-80:]}"
            problems.append(f"{source}: {_location(err['loc'], data)}: {message}")
        raise PolicyError("\n".join(problems)) from None
    # Pydantic's floats take "inf" and "nan" as text; no policy number means anything then.
    bad = non_finite_fields(policy)
    if bad:
        raise PolicyError("\n".join(f"{source}: {where}: not a finite number" for where in bad))
    return policy


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; any problem raises PolicyError naming file and field.

    kpigate/policy_file.py refuses hostile files (encoding, size, nesting, duplicate keys,
    huge or non-finite numbers) before validation."""
    try:
        data = read_document(path)
    except PolicyFileError as exc:
        raise PolicyError(str(exc)) from None
    return policy_from_dict(data, str(path))


def default_policy(kpi_names: Iterable[str], alpha: float = 0.05, margin: float = 0.01) -> Policy:
    """The replay default: every KPI a rate where higher is better, absolute margin, rollback."""
    kpis = [Kpi(name=n, margin=margin) for n in kpi_names]
    return Policy(name="default", alpha=alpha, kpis=tuple(kpis))

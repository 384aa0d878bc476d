"""KPIs from the user's own PromQL: the queries per KPI type, their templating and validation.

A KPI may carry `queries`, one PromQL template per part its type needs (rate: successes and
trials; quantile: buckets; auc: positives and negatives; gap: successes and trials, once per
gap segment). Like Flagger's MetricTemplate (`{{ namespace }}`, `{{ interval }}`), a template
names variables in double braces; the Prometheus source renders each template once per arm at
the window's end and runs it as an instant query (kpigate/sources/prometheus.py). The results
land in the window's counts under `promql:<hypothesis>` and `read` turns them into the same
per-window observation as the router catalogue, so the store, the gate and `kpigate replay`
see one window format whatever the source.

Every template is rendered with sample values and parsed by a real PromQL parser when the
policy loads, so a typo fails before any traffic moves, naming the KPI and the query.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import promql_parser
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kpigate.sources.counts import Labels, WindowCounts

ARMS = ("baseline", "candidate")
Arm = Literal["baseline", "candidate"]

# What a template may name. `selector` is itself a template over the others (minus window).
VARIABLES: dict[str, str] = {
    "selector": "the arm's label matchers (queries.selector rendered for this arm), no braces",
    "arm": "baseline or candidate",
    "version": "the arm's model version",
    "baseline_version": "the baseline's model version",
    "candidate_version": "the candidate's model version",
    "model": "the registered model's name",
    "namespace": "the Kubernetes namespace of the rollout",
    "window": "the window's length as a PromQL duration (e.g. 10m), for ranges: [{{ window }}]",
    "segment": "the hypothesis' segment: a value of `segments`, or each of `gap_segments`",
}
_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

# Parts per KPI type, and whether each is one number or cumulative buckets by `le`.
PARTS: dict[str, tuple[str, ...]] = {
    "rate": ("successes", "trials"),
    "gap": ("successes", "trials"),
    "quantile": ("buckets",),
    "exceedance": ("buckets",),
    "auc": ("positives", "negatives"),
}
PARTS_ALL = ("successes", "trials", "buckets", "positives", "negatives")
BUCKET_PARTS = frozenset({"buckets", "positives", "negatives"})


class PromqlError(ValueError):
    """A query template that cannot be rendered or does not parse as PromQL."""


@dataclass(frozen=True, slots=True)
class QueryContext:
    """What the templates may refer to, known when the rollout starts."""

    model: str = ""
    namespace: str = ""
    baseline_version: str = ""
    candidate_version: str = ""

    def version(self, arm: str) -> str:
        return self.baseline_version if arm == "baseline" else self.candidate_version


# Sample values for offline validation: plausible and quote-free, so a template that parses
# with them parses with real values (which are escaped for double-quoted strings).
SAMPLE = QueryContext(
    model="model", namespace="default", baseline_version="1", candidate_version="2"
)


def promql_duration(seconds: float) -> str:
    """`600` -> `10m`, `90` -> `90s`: the form users write in a range selector."""
    whole = max(1, round(seconds))
    for unit, size in (("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def _escape(value: str) -> str:
    # Values go inside double-quoted PromQL strings (label values), so a model name holding a
    # quote cannot end the string and inject matchers of its own.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def substitute(template: str, values: Mapping[str, str]) -> str:
    """Replace every `{{ name }}`; an unknown name raises PromqlError listing the known ones."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            known = ", ".join(sorted(values))
            raise PromqlError(f"unknown template variable {{{{ {name} }}}} (known: {known})")
        return values[name]

    return _VARIABLE.sub(one, template)


class KpiQueries(BaseModel):
    """A KPI's own PromQL, one instant query per part, each run once per arm."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    selector: str | dict[Arm, str] = Field(
        default="",
        description="label matchers that pick one arm's series, e.g. "
        'destination_version="{{ version }}", or one per arm: {baseline: ..., candidate: ...}',
    )
    successes: str | None = Field(default=None, description="rate, gap: the count of successes")
    trials: str | None = Field(default=None, description="rate, gap: the count of trials")
    buckets: str | None = Field(
        default=None, description="quantile: cumulative counts by `le` (one series per le)"
    )
    positives: str | None = Field(
        default=None, description="auc: score buckets by `le` of the positive class"
    )
    negatives: str | None = Field(
        default=None, description="auc: score buckets by `le` of the negative class"
    )

    @model_validator(mode="after")
    def _arms_complete(self) -> KpiQueries:
        if isinstance(self.selector, dict) and set(self.selector) != set(ARMS):
            raise ValueError("selector per arm needs both baseline and candidate")
        return self

    def part(self, name: str) -> str | None:
        value: str | None = getattr(self, name)
        return value

    def selector_for(self, arm: str) -> str:
        return self.selector[arm] if isinstance(self.selector, dict) else self.selector  # type: ignore[index]

    def render(
        self,
        part: str,
        arm: str,
        context: QueryContext,
        window_s: float,
        segment: str = "all",
    ) -> str:
        """The query of one part for one arm, ready for Prometheus."""
        template = self.part(part)
        if template is None:
            raise PromqlError(f"no `{part}` query")
        values = {
            "arm": arm,
            "version": _escape(context.version(arm)),
            "baseline_version": _escape(context.baseline_version),
            "candidate_version": _escape(context.candidate_version),
            "model": _escape(context.model),
            "namespace": _escape(context.namespace),
            "segment": _escape(segment),
        }
        try:
            selector = substitute(self.selector_for(arm), values)
        except PromqlError as exc:
            raise PromqlError(f"selector: {exc}") from None
        return substitute(
            template, {**values, "selector": selector, "window": promql_duration(window_s)}
        )

    def check(self, kpi_type: str, segments: tuple[str, ...], segmented: bool) -> None:
        """Raise PromqlError unless every part this type needs renders and parses, for each arm
        and segment. `segmented`: the segments are separate hypotheses (or a gap's two sides),
        so each query must name {{ segment }}, else every segment would read the same series."""
        needed = PARTS[kpi_type]
        given = [p for p in PARTS_ALL if self.part(p)]
        missing = [p for p in needed if p not in given]
        if missing:
            raise PromqlError(
                f"a {kpi_type} KPI needs the queries {', '.join(needed)}; "
                f"missing: {', '.join(missing)}"
            )
        extra = [p for p in given if p not in needed]
        if extra:
            raise PromqlError(f"a {kpi_type} KPI does not use the queries {', '.join(extra)}")
        if kpi_type == "gap" and len(segments) != 2:
            raise PromqlError("a gap KPI with queries needs `gap_segments: [a, b]`")
        for arm in ARMS:
            template = self.selector_for(arm)
            unknown = set(_VARIABLE.findall(template)) - set(VARIABLES) | (
                set(_VARIABLE.findall(template)) & {"selector", "window"}
            )
            if unknown:
                raise PromqlError(
                    f"selector: cannot use {{{{ {sorted(unknown)[0]} }}}} (it may use arm, "
                    f"version, baseline_version, candidate_version, model, namespace, "
                    f"segment): {template}"
                )
        named = {p: set(_VARIABLE.findall(self.part(p) or "")) for p in needed}
        if any("selector" in names for names in named.values()) and not all(
            self.selector_for(arm).strip() for arm in ARMS
        ):
            raise PromqlError("the queries use {{ selector }} but `selector` is not set")
        for part, names in named.items():
            if segmented and "segment" not in names:
                raise PromqlError(
                    f"{part}: the KPI is judged per segment, so the query must use "
                    f"{{{{ segment }}}}: {self.part(part)}"
                )
        for part in needed:
            for segment in segments:
                rendered = []
                for arm in ARMS:
                    try:
                        query = self.render(part, arm, SAMPLE, 600.0, segment)
                    except PromqlError as exc:
                        raise PromqlError(f"{part}: {exc}: {self.part(part)}") from None
                    _parse_instant(part, query, self.part(part) or "")
                    rendered.append(query)
                if rendered[0] == rendered[1]:
                    raise PromqlError(
                        f"{part}: the query reads the same series for both arms; set `selector` "
                        f"and use {{{{ selector }}}} (or {{{{ version }}}}): {self.part(part)}"
                    )


def named(queries: KpiQueries) -> set[str]:
    """Every variable the KPI's queries name, directly or through the selector."""
    found = {v for p in PARTS_ALL for v in _VARIABLE.findall(queries.part(p) or "")}
    if "selector" in found:
        for arm in ARMS:
            found |= set(_VARIABLE.findall(queries.selector_for(arm)))
    return found


# Variables whose value the rollout must give (the others come from the window and the KPI).
_GIVEN = frozenset({"model", "namespace", "baseline_version", "candidate_version"})


def check_context(queries: Mapping[str, KpiQueries], context: QueryContext) -> None:
    """Raise PromqlError when a KPI's queries name a value this rollout did not give: an empty
    version would select nothing, and the gate would hold until it times out."""
    for name, kpi_queries in queries.items():
        wanted = named(kpi_queries)
        if "version" in wanted:
            wanted |= {"baseline_version", "candidate_version"}
        empty = sorted(v for v in wanted & _GIVEN if not getattr(context, v))
        if empty:
            raise PromqlError(
                f"KPI '{name}': its queries use {', '.join('{{ ' + v + ' }}' for v in empty)}, "
                "but the rollout gave no value (pass the model name, its namespace and both "
                "versions to the Prometheus source)"
            )


def _parse_instant(part: str, query: str, template: str) -> None:
    """Refuse a query that does not parse or cannot give one number per series; the message
    quotes the template as the user wrote it."""
    try:
        expr = promql_parser.parse(query)
    except ValueError as exc:
        raise PromqlError(f"{part}: not valid PromQL ({exc}): {template}") from None
    while isinstance(expr, promql_parser.ParenExpr):
        expr = expr.expr
    if isinstance(expr, promql_parser.MatrixSelector | promql_parser.SubqueryExpr):
        raise PromqlError(
            f"{part}: returns a range vector, not a number per series; wrap it in "
            f"increase(...) or sum_over_time(...): {template}"
        )
    if isinstance(expr, promql_parser.StringLiteral):
        raise PromqlError(f"{part}: returns a string, not a number: {template}")


def table(key: str) -> str:
    """Where the Prometheus source files the results of one hypothesis in the window counts."""
    return f"promql:{key}"


def rows(labels: Mapping[str, str], value: float, arm: str, part: str) -> tuple[Labels, float]:
    """One result row as a counts row: (arm, part[, le])."""
    found: list[tuple[str, str]] = [("arm", arm), ("part", part)]
    if part in BUCKET_PARTS:
        found.append(("le", labels["le"]))
    return tuple(sorted(found)), value


def _number(counts: WindowCounts, key: str, arm: str, part: str) -> float | None:
    table_ = counts.tables.get(table(key), {})
    values = [v for labels, v in table_.items() if dict(labels) == {"arm": arm, "part": part}]
    return values[0] if values else None


def _rate(counts: WindowCounts, key: str, arm: str) -> dict[str, float] | None:
    successes = _number(counts, key, arm, "successes")
    trials = _number(counts, key, arm, "trials")
    if successes is None or trials is None or trials <= 0 or not 0 <= successes <= trials:
        return None
    return {"successes": successes, "trials": trials}


def _buckets(counts: WindowCounts, key: str, arm: str, part: str) -> dict[str, float] | None:
    found = counts.buckets(table(key), arm=arm, part=part)
    if not found or found.get(math.inf, 0.0) <= 0:
        return None
    return {("+Inf" if math.isinf(b) else f"{b:g}"): v for b, v in found.items()}


def segment_keys(key: str, gap_segments: tuple[str, str] | None) -> tuple[str, ...]:
    """The counts keys one hypothesis reads: itself, or one per gap segment."""
    if gap_segments is None:
        return (key,)
    return tuple(f"{key}{{{segment}}}" for segment in gap_segments)


def read(
    kpi_type: str, key: str, gap_segments: tuple[str, str] | None, counts: WindowCounts
) -> dict[str, Any]:
    """One KPI of a window from its query results, in the replay format of the catalogue."""
    out: dict[str, Any] = {}
    for arm in ARMS:
        if kpi_type == "rate":
            out[arm] = _rate(counts, key, arm)
        elif kpi_type in ("quantile", "exceedance"):
            buckets = _buckets(counts, key, arm, "buckets")
            out[arm] = None if buckets is None else {"buckets": buckets}
        elif kpi_type == "auc":
            positives = _buckets(counts, key, arm, "positives")
            negatives = _buckets(counts, key, arm, "negatives")
            both = positives is not None and negatives is not None
            out[arm] = {"positives": positives, "negatives": negatives} if both else None
        else:
            a_key, b_key = segment_keys(key, gap_segments)
            a, b = _rate(counts, a_key, arm), _rate(counts, b_key, arm)
            out[arm] = {"a": a, "b": b} if a is not None and b is not None else None
    return out

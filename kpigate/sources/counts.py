"""Window counts: how much each router counter grew during one evaluation window, per arm.

Both metrics sources answer the same fixed set of aggregations (`SERIES`): the router source
by differencing two scrapes of /metrics, the Prometheus source with `increase()` in PromQL.
The KPI catalogue then reads KPIs from these tables only, so the two sources cannot disagree
about what a KPI means.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kpigate.sources.cohorts import outcome_of

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs


@dataclass(frozen=True, slots=True)
class Series:
    """One aggregation: `sum by (by...) (metric)` over the window."""

    key: str
    metric: str  # sample name as exposed, e.g. kpigate_outcomes_total
    by: tuple[str, ...]


SERIES: tuple[Series, ...] = (
    Series("outcomes", "kpigate_outcomes_total", ("arm", "segment", "outcome")),
    Series("scores", "kpigate_labeled_score_bucket", ("arm", "label", "le")),
    Series("latency", "kpigate_request_latency_seconds_bucket", ("arm", "le")),
    Series("errors", "kpigate_model_errors_total", ("arm",)),
    Series("decisions", "kpigate_decisions_total", ("arm", "decision")),
    # Counted when predictions mature (label 1|0|none); read as a cohort by matured_tables().
    Series("matured", "kpigate_matured_predictions_total", ("arm", "segment", "decision", "label")),
    Series("matured_scores", "kpigate_matured_score_bucket", ("arm", "label", "le")),
)
# A gauge, read as is (never differenced): the router's label horizon in seconds.
HORIZON_METRIC = "kpigate_label_horizon_seconds"


def labels_of(mapping: Mapping[str, str], names: Iterable[str]) -> Labels:
    return tuple(sorted((n, mapping.get(n, "")) for n in names))


@dataclass
class WindowCounts:
    """series key -> labels -> increase during the window."""

    tables: dict[str, dict[Labels, float]] = field(default_factory=dict)

    def add(self, key: str, labels: Labels, value: float) -> None:
        table = self.tables.setdefault(key, {})
        table[labels] = table.get(labels, 0.0) + value

    def total(self, key: str, **match: str) -> float:
        """Sum of a series over the rows whose labels match."""
        out = 0.0
        for labels, value in self.tables.get(key, {}).items():
            found = dict(labels)
            if all(found.get(k) == v for k, v in match.items()):
                out += value
        return out

    def buckets(self, key: str, **match: str) -> dict[float, float]:
        """Cumulative histogram buckets (le -> count) of the matching rows."""
        out: dict[float, float] = {}
        for labels, value in self.tables.get(key, {}).items():
            found = dict(labels)
            if all(found.get(k) == v for k, v in match.items()):
                bound = float(found["le"])
                out[bound] = out.get(bound, 0.0) + value
        return dict(sorted(out.items()))

    def is_empty(self) -> bool:
        return not any(self.tables.values())


def matured_tables(counts: WindowCounts, unlabeled: str) -> WindowCounts:
    """The label tables (outcomes, scores) of what matured in a window, from the matured series:
    a prediction without a label counts as label 0 (`negative`) or not at all (`exclude`)."""
    out = WindowCounts()

    def label_of(found: dict[str, str]) -> str | None:
        label = found.get("label", "none")
        if label in ("0", "1"):
            return label
        return "0" if unlabeled == "negative" else None

    for labels, value in counts.tables.get("matured", {}).items():
        found = dict(labels)
        if (label := label_of(found)) is None:
            continue
        outcome = outcome_of(found.get("decision") == "decline", int(label))
        keys = {
            "arm": found.get("arm", ""),
            "segment": found.get("segment", ""),
            "outcome": outcome,
        }
        out.add("outcomes", labels_of(keys, ("arm", "segment", "outcome")), value)
    for labels, value in counts.tables.get("matured_scores", {}).items():
        found = dict(labels)
        if (label := label_of(found)) is None:
            continue
        keys = {"arm": found.get("arm", ""), "label": label, "le": found.get("le", "")}
        out.add("scores", labels_of(keys, ("arm", "label", "le")), value)
    return out


def aggregate(samples: Iterable[tuple[str, Mapping[str, str], float]]) -> WindowCounts:
    """Sum raw samples (name, labels, value) into the SERIES tables."""
    wanted = {s.metric: s for s in SERIES}
    counts = WindowCounts()
    for name, labels, value in samples:
        series = wanted.get(name)
        if series is not None:
            counts.add(series.key, labels_of(labels, series.by), value)
    return counts


def difference(later: WindowCounts, earlier: WindowCounts) -> WindowCounts:
    """later - earlier per row; a counter that went down was reset (router restart): the
    later value is then the best estimate of the increase, as Prometheus' increase() assumes."""
    out = WindowCounts()
    for key, table in later.tables.items():
        before = earlier.tables.get(key, {})
        for labels, value in table.items():
            previous = before.get(labels, 0.0)
            out.add(key, labels, value - previous if value >= previous else value)
    return out

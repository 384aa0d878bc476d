"""Window counts: how much each router counter grew during one evaluation window, per arm.

Both metrics sources answer the same fixed set of aggregations (`SERIES`): the router source
by differencing two scrapes of /metrics, the Prometheus source with `increase()` in PromQL.
The KPI catalogue then reads KPIs from these tables only, so the two sources cannot disagree
about what a KPI means.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

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
)


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

"""The KPI catalogue: how each KPI of a policy is read from the router's window counts.

A KPI names its reading with `metric` (default: the KPI's own name for rates, `latency` for
quantiles, `auc` for AUC). Rates read from the confusion counts (optionally in one `segment`
such as `region=eu`), latency from the request-latency histogram (in milliseconds), AUC from the
labeled-score histograms, and a gap from one rate in the two `gap_segments`. The result is one
KPI of a window in the replay format, so the evidence store, `kpigate replay` and the gate all
read the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from kpigate.policy import Kpi, KpiType
from kpigate.sources import promql
from kpigate.sources.counts import WindowCounts

ARMS = ("baseline", "candidate")
Rate = tuple[float, float]  # successes, trials


def _confusion(counts: WindowCounts, arm: str, segment: str) -> dict[str, float]:
    return {
        o: counts.total("outcomes", arm=arm, segment=segment, outcome=o)
        for o in ("tp", "fp", "tn", "fn")
    }


def _recall(c: dict[str, float]) -> Rate:
    return c["tp"], c["tp"] + c["fn"]


def _precision(c: dict[str, float]) -> Rate:
    return c["tp"], c["tp"] + c["fp"]


def _fpr(c: dict[str, float]) -> Rate:
    return c["fp"], c["fp"] + c["tn"]


def _chargeback(c: dict[str, float]) -> Rate:
    # Fraud among approved (predicted legitimate) transactions, known once labels arrive.
    return c["fn"], c["fn"] + c["tn"]


def _accuracy(c: dict[str, float]) -> Rate:
    return c["tp"] + c["tn"], sum(c.values())


CONFUSION_RATES: dict[str, Callable[[dict[str, float]], Rate]] = {
    "recall": _recall,
    "precision": _precision,
    "fpr": _fpr,
    "chargeback_rate": _chargeback,
    "accuracy": _accuracy,
}


def _approval(counts: WindowCounts, arm: str) -> Rate:
    approved = counts.total("decisions", arm=arm, decision="approve")
    return approved, approved + counts.total("decisions", arm=arm, decision="decline")


def _errors(counts: WindowCounts, arm: str) -> Rate:
    # Trials are what the arm scored (its decisions, shadow copies included, so shadow mode is
    # judged too) plus what it failed: a failed candidate request is answered by the baseline.
    errors = counts.total("errors", arm=arm)
    scored = counts.total("decisions", arm=arm)
    return errors, scored + errors


COUNTER_RATES: dict[str, Callable[[WindowCounts, str], Rate]] = {
    "approval_rate": _approval,
    "error_rate": _errors,
}

KNOWN = sorted([*CONFUSION_RATES, *COUNTER_RATES, "latency", "auc"])


class CatalogueError(ValueError):
    """A KPI the catalogue cannot read from the router's metrics."""


def metric_of(kpi: Kpi) -> str:
    return kpi.reading


def check(kpi: Kpi) -> None:
    """Raise CatalogueError when the KPI cannot be read; run before a rollout starts."""
    if kpi.queries is not None:
        return  # the KPI's own PromQL, checked when the policy loaded (kpigate/sources/promql.py)
    metric = metric_of(kpi)
    if kpi.type in (KpiType.RATE, KpiType.GAP):
        if metric not in CONFUSION_RATES and metric not in COUNTER_RATES:
            raise CatalogueError(
                f"KPI '{kpi.name}': no rate '{metric}' in the router's metrics; set `metric` "
                f"to one of {sorted([*CONFUSION_RATES, *COUNTER_RATES])}"
            )
        if kpi.type is KpiType.GAP and (kpi.gap_segments is None or metric in COUNTER_RATES):
            raise CatalogueError(
                f"KPI '{kpi.name}': a gap needs `gap_segments: [a, b]` (e.g. amount_band=high, "
                f"amount_band=low) and a confusion-count `metric` ({sorted(CONFUSION_RATES)})"
            )
    elif kpi.type in (KpiType.QUANTILE, KpiType.EXCEEDANCE) and metric != "latency":
        raise CatalogueError(
            f"KPI '{kpi.name}': {kpi.type.value} KPIs read `latency`, not '{metric}'"
        )
    elif kpi.type is KpiType.AUC and metric != "auc":
        raise CatalogueError(f"KPI '{kpi.name}': AUC KPIs read `auc`, not '{metric}'")


def _rate(counts: WindowCounts, metric: str, arm: str, segment: str) -> Rate:
    if metric in COUNTER_RATES:
        return COUNTER_RATES[metric](counts, arm)
    return CONFUSION_RATES[metric](_confusion(counts, arm, segment))


def _rate_json(rate: Rate) -> dict[str, float] | None:
    successes, trials = rate
    return {"successes": successes, "trials": trials} if trials > 0 else None


def _buckets_json(buckets: dict[float, float], scale: float = 1.0) -> dict[str, float] | None:
    if not buckets or buckets.get(math.inf, 0.0) <= 0:
        return None
    return {("+Inf" if math.isinf(b) else f"{b * scale:g}"): v for b, v in buckets.items()}


def segment_of(key: str, kpi: Kpi) -> str:
    """`recall{region=eu}` -> `region=eu`; otherwise the KPI's own segment."""
    if key.endswith("}") and "{" in key:
        return key[key.index("{") + 1 : -1]
    return kpi.segment


def read(kpi: Kpi, key: str, counts: WindowCounts) -> dict[str, Any]:
    """One KPI of a window, replay format: {"baseline": arm-or-null, "candidate": ...}."""
    if kpi.queries is not None:
        return promql.read(kpi.type.value, key, kpi.gap_segments, counts)
    metric = metric_of(kpi)
    out: dict[str, Any] = {}
    for arm in ARMS:
        if kpi.type is KpiType.RATE:
            out[arm] = _rate_json(_rate(counts, metric, arm, segment_of(key, kpi)))
        elif kpi.type in (KpiType.QUANTILE, KpiType.EXCEEDANCE):
            out[arm] = (
                None
                if (b := _buckets_json(counts.buckets("latency", arm=arm), 1000.0)) is None
                else {"buckets": b}
            )
        elif kpi.type is KpiType.AUC:
            positives = _buckets_json(counts.buckets("scores", arm=arm, label="1"))
            negatives = _buckets_json(counts.buckets("scores", arm=arm, label="0"))
            both = positives is not None and negatives is not None
            out[arm] = {"positives": positives, "negatives": negatives} if both else None
        else:
            assert kpi.gap_segments is not None
            a = _rate_json(_rate(counts, metric, arm, kpi.gap_segments[0]))
            b = _rate_json(_rate(counts, metric, arm, kpi.gap_segments[1]))
            out[arm] = {"a": a, "b": b} if a is not None and b is not None else None
    return out

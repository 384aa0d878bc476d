"""Window counts from Prometheus (prometheus-api-client), for routers scaled out behind it.

Two ways to read a window, same tables as the router source:
  increase  `sum by (...) (increase(counter[window]))` at the window's end (default; survives
            counter resets and missed marks, but Prometheus extrapolates to the window's edges,
            so counts are not integers)
  delta     the raw counters at the window's start and end, differenced here (exact: equals the
            router's own counters at those scrapes)
Staleness: the age of the router's newest sample; beyond the policy's max_staleness the window
is marked stale, and the gate holds.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from kpigate.policy import Labels
from kpigate.sources.base import Collected, SourceError, check_horizon
from kpigate.sources.cohorts import NextCohort
from kpigate.sources.counts import (
    HORIZON_METRIC,
    SERIES,
    Series,
    WindowCounts,
    difference,
    labels_of,
    matured_tables,
)

INCREASE = "sum by ({by}) (increase({metric}{selector}[{seconds}s]))"
RAW = "sum by ({by}) ({metric}{selector})"
# The age of the newest sample of a gauge the router always exposes.
LAG = "time() - max(timestamp(kpigate_candidate_weight_percent{selector}))"
# The replicas' label horizons: all must equal the policy's for matured counts to be cohorts.
HORIZONS = "{agg}(" + HORIZON_METRIC + "{selector})"
# For dashboards and rules (not used to decide): p95 latency and recall per arm over 10m.
LATENCY_P95 = (
    "histogram_quantile(0.95, sum by (arm, le) "
    "(rate(kpigate_request_latency_seconds_bucket{selector}[10m])))"
)
RECALL = (
    'sum by (arm) (increase(kpigate_outcomes_total{{segment="all",outcome="tp"{selector}}}[10m]))'
    " / sum by (arm) "
    '(increase(kpigate_outcomes_total{{segment="all",outcome=~"tp|fn"{selector}}}[10m]))'
)


def selector_of(matchers: str) -> str:
    return "{" + matchers + "}" if matchers else ""


class PrometheusSource:
    name = "prometheus"

    def __init__(
        self,
        url: str,
        matchers: str = "",
        mode: Literal["increase", "delta"] = "increase",
        max_staleness_s: float = 900.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self.selector = selector_of(matchers)
        self.mode = mode
        self.max_staleness_s = max_staleness_s
        # One quick retry: a window is seconds to minutes long, and a source that stays down
        # is reported as a missing window (the gate holds) rather than retried for long.
        retry = Retry(total=1, backoff_factor=0.2, status_forcelist=(502, 503, 504))
        self.client = PrometheusConnect(url=url, disable_ssl=True, timeout=timeout_s, retry=retry)
        self._start_time: float | None = None
        self._start_counts: WindowCounts | None = None
        self._last: tuple[float, WindowCounts] | None = None  # for matured()

    def _query(self, query: str, at: float) -> list[dict[str, Any]]:
        try:
            result: list[dict[str, Any]] = self.client.custom_query(query, params={"time": at})
        except requests.ConnectionError as exc:
            raise SourceError(f"Prometheus at {self.url} is unreachable") from exc
        except (PrometheusApiClientException, requests.RequestException, ValueError) as exc:
            raise SourceError(f"Prometheus at {self.url} failed on {query!r}: {exc}") from exc
        return result

    def _table(self, series: Series, query: str, at: float, counts: WindowCounts) -> None:
        for row in self._query(query, at):
            value = float(row["value"][1])
            if value == value:  # NaN when a series vanished mid-window
                counts.add(series.key, labels_of(row["metric"], series.by), value)

    def _raw(self, at: float) -> WindowCounts:
        counts = WindowCounts()
        for series in SERIES:
            query = RAW.format(
                by=", ".join(series.by), metric=series.metric, selector=self.selector
            )
            self._table(series, query, at, counts)
        return counts

    def mark(self) -> None:
        self._start_time = time.time()
        if self.mode == "delta":
            try:
                self._start_counts = self._raw(self._start_time)
            except SourceError:
                self._start_counts = None

    def lag(self, at: float) -> float | None:
        rows = self._query(LAG.format(selector=self.selector), at)
        return float(rows[0]["value"][1]) if rows else None

    def collect(self) -> Collected:
        now = time.time()
        start = self._start_time if self._start_time is not None else now - 60.0
        lag = self.lag(now)
        if lag is None:
            return Collected(WindowCounts(), stale=True, note="no router samples in Prometheus")
        stale = lag > self.max_staleness_s
        note = f"scrape lag {lag:.0f}s" + (
            f" > max_staleness {self.max_staleness_s:.0f}s" if stale else ""
        )
        if self.mode == "delta":
            end_counts = self._raw(now)
            begin, self._start_counts = self._start_counts, end_counts
            self._start_time = now
            if begin is None:
                raise SourceError("no start-of-window reading from Prometheus")
            self._last = (now, difference(end_counts, begin))
            return Collected(self._last[1], stale=stale, note=note)
        counts = WindowCounts()
        seconds = max(1, round(now - start))
        for series in SERIES:
            query = INCREASE.format(
                by=", ".join(series.by),
                metric=series.metric,
                selector=self.selector,
                seconds=seconds,
            )
            self._table(series, query, now, counts)
        self._start_time = now
        self._last = (now, counts)
        return Collected(counts, stale=stale, note=note)

    def matured(self, cohort: NextCohort, labels: Labels) -> Collected:
        """What matured in the last window (see RouterScrapeSource.matured), once every
        replica's horizon is the policy's."""
        if self._last is None:
            raise SourceError("no window collected yet")
        at, counts = self._last
        found = []
        for agg in ("min", "max"):
            rows = self._query(HORIZONS.format(agg=agg, selector=self.selector), at)
            found.append(float(rows[0]["value"][1]) if rows else None)
        low, high = found
        if low is not None and high is not None and low != high:
            raise SourceError(
                f"the router replicas' label horizons differ ({low:g}s to {high:g}s): "
                "restart them with one --label-horizon"
            )
        check_horizon(high, labels.horizon, f"Prometheus at {self.url}")
        return Collected(matured_tables(counts, labels.unlabeled), note="matured counters")

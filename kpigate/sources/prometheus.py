"""Window counts from Prometheus (prometheus-api-client), for routers scaled out behind it.

Two ways to read a window, same tables as the router source:
  increase  `sum by (...) (increase(counter[window]))` at the window's end (default; survives
            counter resets and missed marks, but Prometheus extrapolates to the window's edges,
            so counts are not integers)
  delta     the raw counters at the window's start and end, differenced here (exact: equals the
            router's own counters at those scrapes)
Staleness: the age of the router's newest sample; beyond the policy's max_staleness the window
is marked stale, and the gate holds.

KPIs with their own `queries` (kpigate/sources/promql.py) are read here too: at the window's end,
one instant query per arm and part, filed into the same counts. When every KPI has queries, no
kpigate router is needed (the kserve, seldon and istio backends), so its series and its staleness
gauge are not read; the user's queries decide, and a part that returns nothing holds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any, Literal

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from kpigate.policy import Kpi, KpiType
from kpigate.sources import promql
from kpigate.sources.base import Collected, SourceError
from kpigate.sources.catalogue import segment_of
from kpigate.sources.counts import SERIES, Series, WindowCounts, difference, labels_of

INCREASE = "sum by ({by}) (increase({metric}{selector}[{seconds}s]))"
RAW = "sum by ({by}) ({metric}{selector})"
# The age of the newest sample of a gauge the router always exposes.
LAG = "time() - max(timestamp(kpigate_candidate_weight_percent{selector}))"
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


# prometheus_api_client reports a non-200 answer only in its message
# (prometheus_connect.py: "HTTP Status Code {status} ({content!r})").
_STATUS = re.compile(r"HTTP Status Code (\d{3})")


class QueryRefused(SourceError):
    """Prometheus answered but refused the query (HTTP 4xx: bad data, or an execution error such
    as many-to-many matching): one KPI's query is wrong, the source is not down."""


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
        kpis: Sequence[Kpi] = (),
        context: promql.QueryContext | None = None,
    ) -> None:
        self.url = url
        self.query_kpis = tuple(k for k in kpis if k.queries is not None)
        # Without KPIs the source reads the router's series (as before this option existed).
        self.reads_router = not kpis or any(k.queries is None for k in kpis)
        self.context = context or promql.QueryContext()
        promql.check_context(
            {k.name: k.queries for k in self.query_kpis if k.queries is not None}, self.context
        )
        self.selector = selector_of(matchers)
        self.mode = mode
        self.max_staleness_s = max_staleness_s
        # One quick retry: a window is seconds to minutes long, and a source that stays down
        # is reported as a missing window (the gate holds) rather than retried for long.
        retry = Retry(total=1, backoff_factor=0.2, status_forcelist=(502, 503, 504))
        self.client = PrometheusConnect(url=url, disable_ssl=True, timeout=timeout_s, retry=retry)
        self._start_time: float | None = None
        self._start_counts: WindowCounts | None = None

    def _query(self, query: str, at: float) -> list[dict[str, Any]]:
        try:
            result: Any = self.client.custom_query(query, params={"time": at})
        except requests.ConnectionError as exc:
            raise SourceError(f"Prometheus at {self.url} is unreachable") from exc
        except PrometheusApiClientException as exc:
            status = _STATUS.search(str(exc))
            refused = QueryRefused if status and 400 <= int(status.group(1)) < 500 else SourceError
            raise refused(f"Prometheus at {self.url} failed on {query!r}: {exc}") from exc
        except (requests.RequestException, ValueError) as exc:
            raise SourceError(f"Prometheus at {self.url} failed on {query!r}: {exc}") from exc
        if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
            return [{"metric": {}, "value": result}]  # a scalar: [time, "value"]
        rows: list[dict[str, Any]] = result
        return rows

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
        if self.mode == "delta" and self.reads_router:
            try:
                self._start_counts = self._raw(self._start_time)
            except SourceError:
                self._start_counts = None

    def lag(self, at: float) -> float | None:
        rows = self._query(LAG.format(selector=self.selector), at)
        return float(rows[0]["value"][1]) if rows else None

    def _part(
        self, kpi: Kpi, key: str, segment: str, arm: str, part: str, at: float, window_s: float
    ) -> tuple[WindowCounts, str]:
        """One part of one arm: its rows, or none and why (the arm is then missing: HOLD)."""
        assert kpi.queries is not None
        query = kpi.queries.render(part, arm, self.context, window_s, segment)
        found = WindowCounts()
        try:
            answer = self._query(query, at)
        except QueryRefused as exc:
            return found, f"{kpi.name} {arm} {part}: refused by Prometheus ({exc.__cause__})"
        rows = [r for r in answer if float(r["value"][1]) == float(r["value"][1])]
        if not rows:
            return found, f"{kpi.name} {arm} {part}: no data"
        if part not in promql.BUCKET_PARTS:
            if len(rows) > 1:
                return found, f"{kpi.name} {arm} {part}: {len(rows)} series, aggregate with sum"
            labels, value = promql.rows({}, float(rows[0]["value"][1]), arm, part)
            found.add(promql.table(key), labels, value)
            return found, ""
        bounds = [r["metric"].get("le") for r in rows]
        if None in bounds or len(set(bounds)) < len(bounds):
            return found, f"{kpi.name} {arm} {part}: need one series per le, use sum by (le)"
        for row in rows:
            labels, value = promql.rows(row["metric"], float(row["value"][1]), arm, part)
            found.add(promql.table(key), labels, value)
        return found, ""

    def _queries(self, counts: WindowCounts, at: float, window_s: float) -> list[str]:
        """Run every KPI's own queries into counts; returns what could not be read."""
        missing: list[str] = []
        for kpi in self.query_kpis:
            for key in kpi.hypotheses():
                if kpi.type is KpiType.GAP:
                    assert kpi.gap_segments is not None
                    sides = zip(
                        promql.segment_keys(key, kpi.gap_segments), kpi.gap_segments, strict=True
                    )
                else:
                    sides = zip((key,), (segment_of(key, kpi),), strict=True)
                for side_key, segment in sides:
                    for arm in promql.ARMS:
                        for part in promql.PARTS[kpi.type.value]:
                            found, why = self._part(kpi, side_key, segment, arm, part, at, window_s)
                            for table, rows in found.tables.items():
                                for labels, value in rows.items():
                                    counts.add(table, labels, value)
                            if why:
                                missing.append(why)
        return missing

    def collect(self) -> Collected:
        now = time.time()
        start = self._start_time if self._start_time is not None else now - 60.0
        if self.reads_router:
            collected = self._collect_router(now, start)
        else:
            collected = Collected(WindowCounts())
            self._start_time = now
        if not self.query_kpis:
            return collected
        counts = collected.counts
        missing = self._queries(counts, now, now - start)
        notes = [collected.note] if collected.note else []
        notes.append(f"PromQL over {promql.promql_duration(now - start)}")
        if missing:
            notes.append("missing: " + "; ".join(missing))
        return Collected(counts, stale=collected.stale, note=", ".join(notes))

    def _collect_router(self, now: float, start: float) -> Collected:
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
            return Collected(difference(end_counts, begin), stale=stale, note=note)
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
        return Collected(counts, stale=stale, note=note)

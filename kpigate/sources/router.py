"""The embedded default: scrape the router's /metrics directly and difference two scrapes."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from kpigate.policy import Labels
from kpigate.sources.base import Collected, SourceError, check_horizon
from kpigate.sources.cohorts import NextCohort
from kpigate.sources.counts import (
    HORIZON_METRIC,
    WindowCounts,
    aggregate,
    difference,
    matured_tables,
)


def parse_exposition(text: str) -> WindowCounts:
    """Aggregate a Prometheus text exposition into the SERIES tables (cumulative values)."""
    samples = (
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    )
    return aggregate(samples)


def horizon_of(text: str) -> float | None:
    """The router's label horizon gauge in an exposition, None when it does not count maturity."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == HORIZON_METRIC:
                return float(sample.value)
    return None


class RouterScrapeSource:
    name = "router"

    def __init__(self, router_url: str, timeout_s: float = 5.0) -> None:
        self.url = router_url.rstrip("/") + "/metrics"
        self.timeout_s = timeout_s
        self._start: WindowCounts | None = None
        self._start_error = ""
        self._last: WindowCounts | None = None  # the last window's counts, for matured()
        self._horizon: float | None = None

    def _scrape(self) -> WindowCounts:
        try:
            response = httpx.get(self.url, timeout=self.timeout_s)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise SourceError(f"cannot scrape {self.url}: {exc}") from exc
        self._horizon = horizon_of(response.text)
        return parse_exposition(response.text)

    def mark(self) -> None:
        try:
            self._start, self._start_error = self._scrape(), ""
        except SourceError as exc:
            self._start, self._start_error = None, str(exc)

    def collect(self) -> Collected:
        now = self._scrape()
        if self._start is None:
            # Without a start we cannot tell what this window added: the window is missing,
            # and the next one starts here.
            self._start = now
            raise SourceError(f"no start-of-window scrape ({self._start_error or 'never marked'})")
        counts = difference(now, self._start)
        self._start = now
        self._last = counts
        return Collected(counts, note=f"scraped {self.url} at {time.strftime('%H:%M:%S')}")

    def matured(self, cohort: NextCohort, labels: Labels) -> Collected:
        """What matured during the last window: the predictions served one horizon earlier,
        which the cohort rule names `cohort` (exact when the horizon is whole windows)."""
        check_horizon(self._horizon, labels.horizon, self.url)
        if self._last is None:
            raise SourceError("no window collected yet")
        return Collected(matured_tables(self._last, labels.unlabeled), note="matured counters")

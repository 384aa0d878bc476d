"""The embedded default: scrape the router's /metrics directly and difference two scrapes."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from kpigate.sources.base import Collected, SourceError
from kpigate.sources.counts import WindowCounts, aggregate, difference


def parse_exposition(text: str) -> WindowCounts:
    """Aggregate a Prometheus text exposition into the SERIES tables (cumulative values)."""
    samples = (
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    )
    return aggregate(samples)


class RouterScrapeSource:
    name = "router"

    def __init__(self, router_url: str, timeout_s: float = 5.0) -> None:
        self.url = router_url.rstrip("/") + "/metrics"
        self.timeout_s = timeout_s
        self._start: WindowCounts | None = None
        self._start_error = ""

    def _scrape(self) -> WindowCounts:
        try:
            response = httpx.get(self.url, timeout=self.timeout_s)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise SourceError(f"cannot scrape {self.url}: {exc}") from exc
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
        return Collected(counts, note=f"scraped {self.url} at {time.strftime('%H:%M:%S')}")

"""Choose a metrics source by name, as backends/factory.py chooses a traffic backend; each source
module is imported only when chosen."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

from kpigate.errors import Kind
from kpigate.sources.base import MetricsSource, SourceError

# name -> (module, class)
SOURCES: dict[str, tuple[str, str]] = {
    "router": ("kpigate.sources.router", "RouterScrapeSource"),
    "prometheus": ("kpigate.sources.prometheus", "PrometheusSource"),
}


@dataclass(frozen=True)
class SourceSettings:
    """Where window counts come from; each source reads what it needs."""

    kind: str = "router"
    router_url: str = "http://127.0.0.1:8080"
    prometheus_url: str = ""
    prometheus_matchers: str = ""  # label matchers, e.g. job="kpigate-router"
    prometheus_mode: Literal["increase", "delta"] = "increase"
    max_staleness_s: float = 900.0  # the policy's max_staleness


def make_source(settings: SourceSettings) -> MetricsSource:
    """The source for these settings; bad settings are a SourceError of kind BAD_INPUT."""
    try:
        module_name, class_name = SOURCES[settings.kind]
    except KeyError:
        raise SourceError(
            f"unknown metrics source {settings.kind!r}: choose one of {', '.join(SOURCES)}",
            kind=Kind.BAD_INPUT,
        ) from None
    cls = getattr(importlib.import_module(module_name), class_name)
    source: MetricsSource
    if settings.kind == "prometheus":
        if not settings.prometheus_url:
            raise SourceError(
                "the prometheus metrics source needs --prometheus-url", kind=Kind.BAD_INPUT
            )
        source = cls(
            settings.prometheus_url,
            matchers=settings.prometheus_matchers,
            mode=settings.prometheus_mode,
            max_staleness_s=settings.max_staleness_s,
        )
    else:
        source = cls(settings.router_url)
    return source

"""Choose a metrics source by name, as backends/factory.py chooses a traffic backend; each source
module is imported only when chosen."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

from kpigate.errors import Kind
from kpigate.policy import Policy
from kpigate.sources.base import MetricsSource, SourceError
from kpigate.sources.promql import QueryContext

# name -> (module, class or factory)
SOURCES: dict[str, tuple[str, str]] = {
    "router": ("kpigate.sources.router", "RouterScrapeSource"),
    "prometheus": ("kpigate.sources.prometheus", "PrometheusSource"),
    "predlog": ("kpigate.sources.predlog", "source_from_env"),
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
    policy: Policy | None = None  # its KPIs' own PromQL, and the labels of predlog cohorts
    context: QueryContext | None = None  # the values PromQL templates may name


def make_source(settings: SourceSettings) -> MetricsSource:
    """The source for these settings; bad settings are a SourceError of kind BAD_INPUT."""
    try:
        module_name, class_name = SOURCES[settings.kind]
    except KeyError:
        raise SourceError(
            f"unknown metrics source {settings.kind!r}: choose one of {', '.join(SOURCES)}",
            kind=Kind.BAD_INPUT,
        ) from None
    kpis = settings.policy.kpis if settings.policy is not None else ()
    with_queries = [k.name for k in kpis if k.queries is not None]
    if with_queries and settings.kind != "prometheus":
        raise SourceError(
            f"KPIs {', '.join(with_queries)} bring their own PromQL: use --source prometheus",
            kind=Kind.BAD_INPUT,
        )
    uneven = settings.policy.uneven_horizon_stages() if settings.policy is not None else []
    if uneven and settings.kind in ("router", "prometheus"):
        assert settings.policy is not None and settings.policy.labels is not None
        stages = ", ".join(f"{s.traffic:g}% (interval {s.interval:g}s)" for s in uneven)
        raise SourceError(
            f"labels.horizon ({settings.policy.labels.horizon:g}s) is not a whole number of "
            f"intervals at stage {stages}: the {settings.kind} source's matured counters would "
            "mix two cohorts; make the horizon a multiple of every interval, or use "
            "--source predlog (exact cohorts whatever the horizon)",
            kind=Kind.BAD_INPUT,
        )
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
            kpis=kpis,
            context=settings.context,
        )
    elif settings.kind == "predlog":
        if settings.policy is None:
            raise SourceError("the predlog source needs the policy", kind=Kind.BAD_INPUT)
        source = cls(settings.policy)
    else:
        source = cls(settings.router_url)
    return source

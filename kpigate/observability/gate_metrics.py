"""The gate's state as Prometheus metrics: stage, decision, holds and each KPI's bounds.

Read from a status (kpigate/status.py: the evidence replayed through the engine), so an Argo
rollout's gate is as visible as a local one. `kpigate status --metrics` prints the text format;
`kpigate status --serve-metrics PORT` serves it, re-reading the evidence at each scrape, for a
Prometheus job (the dashboard's "Gate" row reads these series). The router's own metrics stay
in kpigate/serve/metrics.py; nothing here is exported by the router.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kpigate.engine import Decision, Verdict

if TYPE_CHECKING:
    from kpigate.status import GateStatus

PREFIX = "kpigate_gate"
# One definition of every series, for the exporter, the dashboard and the tests.
SERIES: dict[str, str] = {
    f"{PREFIX}_up": "1 when the evidence could be read and judged at this scrape, else 0.",
    f"{PREFIX}_stage_percent": "Traffic percent of the stage the gate is judging.",
    f"{PREFIX}_window": "Windows of evidence judged so far in the rollout.",
    f"{PREFIX}_holds": "Inconclusive looks after the soak at this stage.",
    f"{PREFIX}_max_holds": "Looks the policy allows before its timeout action.",
    f"{PREFIX}_decision": "1 for the gate's current decision (promote|hold|rollback), else 0.",
    f"{PREFIX}_final": "1 once the rollout ended (rolled back, or promoted at the last stage).",
    f"{PREFIX}_paused": "1 while an operator's pause holds the local runner.",
    f"{PREFIX}_kpi_estimate": "Candidate minus baseline over all windows so far, per KPI.",
    f"{PREFIX}_kpi_lower": "Lower end of the anytime-valid confidence interval of the estimate.",
    f"{PREFIX}_kpi_upper": "Upper end of the anytime-valid confidence interval of the estimate.",
    f"{PREFIX}_kpi_margin": "The KPI's margin (the policy's tolerance for the candidate).",
    f"{PREFIX}_kpi_verdict": "1 for the KPI's verdict (pass|fail|inconclusive), else 0.",
    f"{PREFIX}_kpi_samples": "Samples behind the KPI per arm (labels, requests).",
}


def _gauge(name: str, labels: Sequence[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, SERIES[name], labels=list(labels))


def families(statuses: Iterable[GateStatus], up: bool = True) -> list[Metric]:
    """The metric families for some rollouts' statuses."""
    g = {name: _gauge(name, ["rollout"]) for name in SERIES if "_kpi_" not in name}
    g[f"{PREFIX}_up"] = _gauge(f"{PREFIX}_up", [])
    g[f"{PREFIX}_up"].add_metric([], 1.0 if up else 0.0)
    g[f"{PREFIX}_decision"] = _gauge(f"{PREFIX}_decision", ["rollout", "decision"])
    kpi = {name: _gauge(name, ["rollout", "kpi"]) for name in SERIES if "_kpi_" in name}
    kpi[f"{PREFIX}_kpi_verdict"] = _gauge(f"{PREFIX}_kpi_verdict", ["rollout", "kpi", "verdict"])
    kpi[f"{PREFIX}_kpi_samples"] = _gauge(f"{PREFIX}_kpi_samples", ["rollout", "kpi", "arm"])
    for status in statuses:
        d, r = status.decision, [status.rollout]
        g[f"{PREFIX}_stage_percent"].add_metric(r, d.stage)
        g[f"{PREFIX}_window"].add_metric(r, d.window)
        g[f"{PREFIX}_holds"].add_metric(r, d.holds)
        g[f"{PREFIX}_max_holds"].add_metric(r, status.max_holds)
        g[f"{PREFIX}_final"].add_metric(r, float(d.final))
        g[f"{PREFIX}_paused"].add_metric(r, float(status.paused_by is not None))
        for option in Decision:
            g[f"{PREFIX}_decision"].add_metric([*r, option.value], float(d.decision is option))
        for key, report in d.kpis.items():
            k = [*r, key]
            values = {
                "estimate": report.estimate,
                "margin": report.margin,
                "lower": report.ci[0] if report.ci else None,
                "upper": report.ci[1] if report.ci else None,
            }
            for what, value in values.items():
                # Absent rather than NaN: an unknown bound must not draw a line at 0.
                if value is not None and math.isfinite(value):
                    kpi[f"{PREFIX}_kpi_{what}"].add_metric(k, value)
            for verdict in Verdict:
                kpi[f"{PREFIX}_kpi_verdict"].add_metric(
                    [*k, verdict.value], float(report.verdict is verdict)
                )
            for arm, samples in zip(("candidate", "baseline"), report.samples, strict=True):
                kpi[f"{PREFIX}_kpi_samples"].add_metric([*k, arm], samples)
    return [*g.values(), *kpi.values()]


class GateCollector(Collector):
    """Reads the statuses at every scrape; a failed read exports kpigate_gate_up 0 only."""

    def __init__(self, read: Callable[[], Sequence[GateStatus]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        from kpigate.status import StatusError

        try:
            statuses = list(self.read())
        except StatusError:
            yield from families([], up=False)
            return
        yield from families(statuses)


def exposition(statuses: Sequence[GateStatus]) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GateCollector(lambda: statuses))
    return generate_latest(registry).decode()


def start_server(
    read: Callable[[], GateStatus], port: int, host: str = "127.0.0.1"
) -> tuple[object, threading.Thread]:
    """Serve /metrics in a background thread; returns (server, thread) for shutdown()."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(GateCollector(lambda: [read()]))
    return start_http_server(port, addr=host, registry=registry)


def serve(read: Callable[[], GateStatus], port: int, host: str = "127.0.0.1") -> None:
    """Serve until interrupted (Ctrl-C ends `kpigate status --serve-metrics`)."""
    server, thread = start_server(read, port, host)
    print(f"gate metrics on http://{host}:{port}/metrics (Ctrl-C stops)", flush=True)
    try:
        thread.join()
    finally:
        getattr(server, "shutdown", lambda: None)()

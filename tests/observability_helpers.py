"""PromQL checks shared by the rules and dashboard tests: parse, and every metric name known."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import promql_parser
import yaml

from kpigate.serve.metrics import RouterMetrics

RULES_DIR = Path(__file__).resolve().parents[1] / "manifests" / "prometheus"


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.rules.yaml"))


def rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in rule_files()
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def router_metric_names() -> set[str]:
    """Every series name the router exposes (histogram and counter suffixes included)."""
    names = set()
    for family in RouterMetrics().registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            names.update(f"{family.name}_{s}" for s in ("bucket", "count", "sum"))
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names


def selectors(expr: str) -> list[str]:
    """Metric names selected by a PromQL expression; raises ValueError when it does not parse."""
    found: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            found.append(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def unknown_metrics(expr: str) -> list[str]:
    from kpigate.observability.gate_metrics import SERIES

    known = router_metric_names() | recorded_names() | set(SERIES) | {"up"}
    return [name for name in selectors(expr) if name not in known]

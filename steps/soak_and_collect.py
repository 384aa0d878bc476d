"""soak-and-collect: wait out a stage one evaluation interval at a time, recording each window.

For every interval the step reads how much the router's counters grew (from the router's
/metrics or from Prometheus), turns them into the policy's KPIs (kpigate/sources/catalogue.py)
and appends one window, in the `kpigate replay` format, to the rollout's evidence store.
A source that is down or lagging gives a window marked stale: the gate holds on it.

Idempotent: `--looks N` means "this stage has at least N windows"; a retried or rerun step
only collects what is missing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from kpigate.policy import Policy
from kpigate.sources import catalogue, promql
from kpigate.sources.base import MetricsSource, SourceError
from kpigate.steps.common import (
    DONE,
    StepError,
    read_policy,
    refuse_if_rolled_back,
    say,
    step_main,
)
from kpigate.store import EvidenceStore, open_store


def make_source(args: argparse.Namespace, policy: Policy) -> MetricsSource:
    if args.source == "prometheus":
        from kpigate.sources.prometheus import PrometheusSource

        if not args.prometheus_url:
            raise StepError("--source prometheus needs --prometheus-url")
        return PrometheusSource(
            args.prometheus_url,
            matchers=args.prometheus_matchers,
            mode=args.prometheus_mode,
            max_staleness_s=policy.max_staleness,
            kpis=policy.kpis,
            context=promql.QueryContext(
                model=args.model_name,
                namespace=args.namespace,
                baseline_version=args.baseline_version,
                candidate_version=args.model_version,
            ),
        )
    with_queries = [k.name for k in policy.kpis if k.queries is not None]
    if with_queries:
        raise StepError(
            f"KPIs {', '.join(with_queries)} bring their own PromQL: use --source prometheus"
        )
    from kpigate.sources.router import RouterScrapeSource

    return RouterScrapeSource(args.router_url)


def window_record(
    policy: Policy, source: MetricsSource, rollout: str, index: int, stage: float
) -> dict[str, Any]:
    """One window from the source; never raises on a source failure: it marks the window."""
    record: dict[str, Any] = {
        "rollout": rollout,
        "window": index,
        "stage": stage,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        collected = source.collect()
    except SourceError as exc:
        return {**record, "kpis": {}, "stale": True, "note": f"missing: {exc}"}
    kpis = {
        key: catalogue.read(kpi, key, collected.counts)
        for kpi in policy.kpis
        for key in kpi.hypotheses()
    }
    record["kpis"] = kpis
    if collected.stale:
        record["stale"] = True
    if collected.note:
        record["note"] = collected.note
    return record


def soak(
    policy: Policy,
    store: EvidenceStore,
    source: MetricsSource,
    stage: float,
    looks: int,
    interval_s: float,
    rollout: str,
    sleep: Callable[[float], None] = time.sleep,
    on_window: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Collect until the stage has `looks` windows; returns how many were added."""
    records = store.read()
    have = sum(1 for r in records if float(r.get("stage", -1)) == stage)
    missing = max(0, looks - have)
    next_index = (int(records[-1]["window"]) + 1) if records else 1
    if missing:
        source.mark()
    for n in range(missing):
        sleep(interval_s)
        record = window_record(policy, source, rollout, next_index + n, stage)
        store.append(record)
        if on_window is not None:
            on_window(record)
    return missing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", required=True, help="rollout policy YAML")
    parser.add_argument("--stage", type=float, required=True, help="traffic percent of the stage")
    parser.add_argument(
        "--looks", type=int, default=0, help="windows this stage must have (default: its soak)"
    )
    parser.add_argument(
        "--interval", type=float, default=0.0, help="seconds per window (default: the policy's)"
    )
    parser.add_argument("--source", choices=["router", "prometheus"], default="router")
    parser.add_argument("--router-url", default="http://127.0.0.1:8080")
    parser.add_argument("--prometheus-url", default="")
    parser.add_argument(
        "--prometheus-matchers", default="", help='label matchers, e.g. job="kpigate-router"'
    )
    parser.add_argument("--prometheus-mode", choices=["increase", "delta"], default="increase")
    # The values a KPI's own PromQL may name ({{ model }}, {{ namespace }}, the versions).
    # With --rollout, also: refuse to soak a rollout that was rolled back (exit 3).
    parser.add_argument("--model-name", default="", help="for PromQL KPIs: {{ model }}")
    parser.add_argument("--model-version", default="", help="the candidate's version")
    parser.add_argument("--baseline-version", default="", help="the baseline's version")
    parser.add_argument("--namespace", default="", help="for PromQL KPIs: {{ namespace }}")
    parser.add_argument("--evidence", required=True, help="evidence store: mlflow://... or path")
    parser.add_argument("--rollout", default="", help="rollout id (default: from --evidence)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow (for mlflow:// evidence)")


def run(args: argparse.Namespace) -> int:
    policy = read_policy(args.policy)
    stage_spec = policy.stage_for(args.stage)
    if stage_spec is None:
        raise StepError(f"stage {args.stage:g}% is not in the policy's stages")
    for kpi in policy.kpis:
        catalogue.check(kpi)
    looks = args.looks or stage_spec.looks
    interval = args.interval or stage_spec.interval
    store = open_store(args.evidence, args.tracking_uri)
    rollout = args.rollout or args.evidence.rstrip("/").rsplit("/", 1)[-1]
    source = make_source(args, policy)
    if args.model_name and args.model_version and args.rollout:
        from kpigate.registry.mlflow import MlflowRegistry

        registry = MlflowRegistry(args.tracking_uri)
        refuse_if_rolled_back(registry, args.model_name, args.model_version, args.rollout)

    def progress(record: dict[str, Any]) -> None:
        state = "stale: " + record.get("note", "") if record.get("stale") else "ok"
        say(f"window {record['window']} at {args.stage:g}%: {state}")

    say(f"soaking at {args.stage:g}%: up to {looks} windows of {interval:g}s ({source.name})")
    added = soak(policy, store, source, args.stage, looks, interval, rollout, on_window=progress)
    say(f"collected {added} window(s); the stage has at least {looks}")
    return DONE


def main(argv: Sequence[str] | None = None) -> int:
    return step_main("soak_and_collect", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())

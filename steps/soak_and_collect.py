"""soak-and-collect: wait out a stage one evaluation interval at a time, recording each window.

For every interval the step reads how much the router's counters grew (from the router's
/metrics or from Prometheus), turns them into the policy's KPIs (kpigate/sources/catalogue.py)
and appends one window record (kpigate/evidence_record.py, the `kpigate replay` format) to the
rollout's evidence store.
A source that is down or lagging gives a window marked stale: the gate holds on it.

On Argo every value a KPI's PromQL may name is passed (the model, the rollout's namespace, the
baseline's and the candidate's versions), so a policy with PromQL KPIs runs there as it runs
locally. Idempotent: `--looks N` means "this stage has at least N windows"; a retried or rerun step
only collects what is missing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from kpigate.evidence_record import WindowRecord
from kpigate.policy import Policy
from kpigate.sources import catalogue, promql
from kpigate.sources.base import Collected, MetricsSource, SourceError
from kpigate.sources.factory import SourceSettings, make_source
from kpigate.sources.records import build_record, calibration_records
from kpigate.steps.common import (
    DONE,
    StepError,
    read_policy,
    refuse_if_rolled_back,
    say,
    step_main,
)
from kpigate.steps.inputs import (
    BaselineVersion,
    CandidateVersion,
    EvidenceUri,
    Interval,
    ModelName,
    PolicyFile,
    PrometheusMatchers,
    PrometheusMode,
    PrometheusUrl,
    RolloutId,
    RouterUrl,
    Source,
    TrackingUri,
)
from kpigate.steps.spec import StepInputs, add_flags, field, parse
from kpigate.store import EvidenceStore, open_store


def source_settings(args: SoakAndCollectInputs, policy: Policy) -> SourceSettings:
    return SourceSettings(
        kind=args.source,
        router_url=args.router_url,
        prometheus_url=args.prometheus_url,
        prometheus_matchers=args.prometheus_matchers,
        prometheus_mode=args.prometheus_mode,
        max_staleness_s=policy.max_staleness,
        policy=policy,
        context=promql.QueryContext(
            model=args.model_name,
            namespace=args.namespace,
            baseline_version=args.baseline_version,
            candidate_version=args.model_version,
        ),
    )


def window_record(
    policy: Policy,
    source: MetricsSource,
    rollout: str,
    index: int,
    stage: float,
    served_from: float | None = None,
    history: Sequence[WindowRecord] = (),
) -> WindowRecord:
    """One window from the source; never raises on a source failure: it marks the window.

    The record keeps its serving interval (Unix seconds); with a policy `labels` section its
    label KPIs are those of the oldest matured cohort of `history` (kpigate/sources/records.py).
    """
    try:
        collected: Collected | SourceError = source.collect()
    except SourceError as exc:
        collected = exc
    served_to = time.time()
    base: dict[str, Any] = {
        "rollout": rollout,
        "window": index,
        "stage": stage,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "served_from": served_to if served_from is None else served_from,
        "served_to": served_to,
    }
    return build_record(policy, source, collected, history, base)


def stage_windows(records: Sequence[WindowRecord], stage: float) -> int:
    """The rollout's windows at a stage so far: its looks. Calibration windows carry the first
    stage's number but are no look (the gate counts them apart), so they are not counted."""
    return sum(1 for r in records if r.stage == stage and not r.calibration)


def soak(
    policy: Policy,
    store: EvidenceStore,
    source: MetricsSource,
    stage: float,
    looks: int,
    interval_s: float,
    rollout: str,
    sleep: Callable[[float], None] = time.sleep,
    on_window: Callable[[WindowRecord], None] | None = None,
) -> int:
    """Collect until the stage has `looks` windows; returns how many were added."""
    records = list(store.read())
    have = stage_windows(records, stage)
    missing = max(0, looks - have)
    next_index = max(records[-1].window + 1, 1) if records else 1
    served_from = time.time()
    if missing and not records:
        # The rollout's first window: the baseline's A/A windows before it go first, so the
        # gate knows the between-window variance at its first look (docs/engine.md).
        for before in calibration_records(policy, source, rollout, served_from):
            store.append(before)
            records.append(before)
    if missing:
        source.mark()
    for n in range(missing):
        sleep(interval_s)
        record = window_record(policy, source, rollout, next_index + n, stage, served_from, records)
        served_from = time.time() if record.served_to is None else float(record.served_to)
        store.append(record)
        records.append(record)
        if on_window is not None:
            on_window(record)
    return missing


class SoakAndCollectInputs(StepInputs):
    policy: PolicyFile
    stage: float = field(help="traffic percent of the stage", argo="{{inputs.parameters.stage}}")
    looks: int = field(
        0,
        help="windows this stage must have (default: its soak)",
        argo="{{inputs.parameters.looks}}",
    )
    interval: Interval
    source: Source
    router_url: RouterUrl
    prometheus_url: PrometheusUrl
    prometheus_matchers: PrometheusMatchers
    prometheus_mode: PrometheusMode
    # What a KPI's own PromQL may name ({{ model }}, {{ namespace }}, the versions:
    # kpigate/sources/promql.py QueryContext); with --rollout-id, the model and version also let
    # the step refuse (exit 3) to soak a rollout that was rolled back.
    model_name: ModelName = ""
    model_version: CandidateVersion
    baseline_version: BaselineVersion
    namespace: str = field(
        "", help="the rollout's Kubernetes namespace: PromQL {{ namespace }}",
        argo="{{workflow.namespace}}",
    )  # fmt: skip
    evidence: EvidenceUri
    rollout_id: RolloutId  # default: the evidence URI's last part
    tracking_uri: TrackingUri


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, SoakAndCollectInputs)


def run(namespace: argparse.Namespace) -> int:
    args: SoakAndCollectInputs = parse(SoakAndCollectInputs, namespace)
    policy = read_policy(args.policy)
    stage_spec = policy.stage_for(args.stage)
    if stage_spec is None:
        raise StepError(f"stage {args.stage:g}% is not in the policy's stages")
    for kpi in policy.kpis:
        catalogue.check(kpi)
    looks = args.looks or stage_spec.looks
    interval = args.interval or stage_spec.interval
    store = open_store(args.evidence, args.tracking_uri)
    rollout = args.rollout_id or args.evidence.rstrip("/").rsplit("/", 1)[-1]
    source = make_source(source_settings(args, policy))
    if args.model_name and args.model_version and args.rollout_id:
        from kpigate.registry.mlflow import MlflowRegistry

        registry = MlflowRegistry(args.tracking_uri)
        refuse_if_rolled_back(registry, args.model_name, args.model_version, args.rollout_id)

    def progress(record: WindowRecord) -> None:
        state = "stale: " + record.note if record.stale else "ok"
        say(f"window {record.window} at {args.stage:g}%: {state}")

    say(f"soaking at {args.stage:g}%: up to {looks} windows of {interval:g}s ({source.name})")
    added = soak(policy, store, source, args.stage, looks, interval, rollout, on_window=progress)
    say(f"collected {added} window(s); the stage has at least {looks}")
    return DONE


def main(argv: Sequence[str] | None = None) -> int:
    return step_main("soak_and_collect", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())

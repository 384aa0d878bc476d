"""The fraud case study end to end on the embedded default: real parts, compressed time.

What runs: an MLflow server (SQLite) holding the registry; the XGBoost baseline registered as
`champion`; the router (`kpigate serve`) serving it; the relay, registered as an MLflow webhook;
traffic with delayed labels. Then, per scenario, a candidate is trained and registered as
`candidate`: MLflow calls the relay, the relay starts the local runner, and the runner moves the
candidate through 5 -> 25 -> 50 -> 100% on the router's own metrics, printing each decision.

  good  a LightGBM candidate tuned for recall; a latency spike injected at 50% holds the
        rollout until it clears; it reaches 100% and becomes champion
  bad   a candidate with lower recall, rolled back at the first look the evidence allows,
        while the baseline keeps serving

Time is compressed: each evaluation window lasts --interval seconds, and the traffic is
enriched in fraud (--fraud-share) so that a window holds enough labels; KPIs still come only
through the router, the feedback path and its /metrics. --recorded replays the bundled
recorded rollouts instead (no servers).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TextIO

from kpigate.engine import Cause, Decision, GateDecision, KpiReport, Verdict
from kpigate.policy import Policy, PolicyError, load_policy

_MARK = {Decision.PROMOTE: "PROMOTE", Decision.HOLD: "hold", Decision.ROLLBACK: "ROLLBACK"}
MODEL = "fraud-detector"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--scenario", choices=["good", "bad", "all"], default="all", help="default: all")
    add("--interval", type=float, default=2.0, help="seconds per window (%(default)s)")
    add("--rate", type=float, default=400.0, help="requests/s asked for (%(default)s)")
    add("--fraud-share", type=float, default=0.5, help="fraud in the traffic (%(default)s)")
    add("--workdir", default="", help="keep everything here (default: a temp dir)")
    add("--verbose", "-v", action="store_true", help="the KPI table at every window")
    add("--recorded", action="store_true", help="replay the recorded rollouts (no servers)")


# --- printing ------------------------------------------------------------------------------------


def _kpi_line(key: str, report: KpiReport) -> str:
    if report.ci is None or report.estimate is None:
        return f"      {key:<18} {report.verdict.value:<12} {report.reason}"
    lo, hi = report.ci
    return (
        f"      {key:<18} {report.verdict.value:<12} diff {report.estimate:+.4g} "
        f"ci [{lo:+.4g}, {hi:+.4g}] margin {report.margin:g}"
    )


def print_decision(label: str, decision: GateDecision, verbose: bool, out: TextIO) -> None:
    print(
        f"  {label:<5} window {decision.window:>2}  stage {decision.stage:>4g}%  "
        f"look {decision.look}  {_MARK[decision.decision]:<8}  {decision.reasons[0]}",
        file=out,
        flush=True,
    )
    for extra in decision.reasons[1:]:
        print(f"{'':>44}{extra}", file=out)
    for alert in decision.alerts:
        print(f"{'':>44}alert: {alert}", file=out)
    if verbose or decision.decision is not Decision.HOLD:
        for key, report in decision.kpis.items():
            if verbose or report.verdict is not Verdict.INCONCLUSIVE or decision.final:
                print(_kpi_line(key, report), file=out)


def print_trail(label: str, decisions: list[GateDecision], out: TextIO) -> None:
    steps = [
        f"w{d.window}@{d.stage:g}% {d.decision.value}"
        for d in decisions
        if d.decision is not Decision.HOLD or d.cause is not Cause.SOAKING
    ]
    last = decisions[-1] if decisions else None
    result = "no decision"
    if last is not None and last.final and last.decision is Decision.PROMOTE:
        result = "promoted to 100%: the candidate is champion"
    elif last is not None and last.decision is Decision.ROLLBACK:
        result = "rolled back: the baseline kept serving"
    elif last is not None:
        result = "still open"
    print(f"  {label}: {' -> '.join(steps) or '(none)'}  => {result}", file=out)


# --- the recorded replay (no servers) ------------------------------------------------------------


def run_recorded(args: argparse.Namespace, out: TextIO) -> int:
    from kpigate.replay import LineError, Replayer, replay_lines

    examples = resources.files("kpigate") / "examples"
    policy = load_policy(str(examples / "policy.yaml"))
    print(f"kpigate demo --recorded: the recorded case study, policy '{policy.name}'\n", file=out)
    trail: dict[str, list[GateDecision]] = {}
    lines = (examples / "fraud-rollout.jsonl").read_text().splitlines()
    try:
        for _, rollout, decision in replay_lines(lines, Replayer(policy)):
            if args.scenario in ("all", rollout):
                trail.setdefault(rollout, []).append(decision)
                print_decision(rollout, decision, args.verbose, out)
    except LineError as exc:
        print(f"kpigate demo: bundled example is malformed: {exc}", file=sys.stderr)
        return 2
    print("\ndecision trail:", file=out)
    for rollout, decisions in trail.items():
        print_trail(rollout, decisions, out)
    return 0


# --- the live case study -------------------------------------------------------------------------


class Narrator:
    """Prints progress with the elapsed time."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.started = out, time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:5.1f}s] {message}", file=self.out, flush=True)


def run_live(args: argparse.Namespace, policy: Policy, out: TextIO) -> int:
    import pandas as pd

    from kpigate.audit import AuditTrail, attach_to_registry, default_actor, policy_hash, verify
    from kpigate.backends import BackendSettings, make_backend
    from kpigate.casestudy import AppThread, RouterProcess, RunnerTrigger, Stack, TrafficProcess
    from kpigate.fraud.data import generate
    from kpigate.fraud.models import (
        BAD_CANDIDATES,
        BASELINE_TRAIN_DRIFT,
        CANDIDATE_TRAIN_DRIFT,
        train_baseline,
        train_candidate,
    )
    from kpigate.fraud.registration import register_model
    from kpigate.journal import Journal
    from kpigate.notify import dispatcher_from_env
    from kpigate.registry.base import CANDIDATE, CHAMPION
    from kpigate.registry.mlflow import MlflowRegistry
    from kpigate.registry.server import MlflowServer
    from kpigate.relay.app import WEBHOOK_PATH, RelaySettings, create_relay
    from kpigate.relay.cli import register_webhook
    from kpigate.report import write_report
    from kpigate.runner import LocalRunner
    from kpigate.sources.router import RouterScrapeSource
    from kpigate.store.file import FileStore

    say = Narrator(out)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kpigate-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    scenarios = ["good", "bad"] if args.scenario == "all" else [args.scenario]
    # The router's admin token and the webhook secret: from the environment when set (as a
    # deployment would mount them), else fresh ones. Neither is ever printed or logged.
    token = os.environ.get("KPIGATE_ADMIN_TOKEN") or secrets.token_urlsafe(16)
    secret = os.environ.get("KPIGATE_WEBHOOK_SECRET") or secrets.token_urlsafe(16)
    stack = Stack()
    trails: dict[str, list[GateDecision]] = {}
    outcomes: dict[str, str] = {}
    reports: dict[str, Path] = {}
    policy_file = str(resources.files("kpigate") / "examples" / "demo-policy.yaml")
    try:
        say(f"working in {workdir}")
        say("starting an MLflow server (SQLite backend)...")
        mlflow = MlflowServer(workdir / "mlflow")
        mlflow.start()
        stack.add(mlflow.stop)
        uri = mlflow.tracking_uri
        say(f"MLflow at {uri}; training the XGBoost baseline (100 trees) on pre-drift data")
        evaluation = generate(20_000, seed=3, drift=0.5)
        baseline = train_baseline(generate(40_000, seed=1, drift=BASELINE_TRAIN_DRIFT), seed=0)
        champion = register_model(baseline, tracking_uri=uri, eval_frame=evaluation, name=MODEL,
                                  alias=CHAMPION)  # fmt: skip
        say(f"registered {MODEL} version {champion.version} as '{CHAMPION}'; starting the router")
        router = RouterProcess(workdir, uri, MODEL, token)
        stack.add(router.close)
        router.wait_ready()

        audit = AuditTrail(workdir / "audit.jsonl")
        notifications = (workdir / "notifications.log").open("w")
        stack.add(notifications.close)
        # Slack/PagerDuty when their variables are set; otherwise the console channel, here a
        # file, so the decisions printed below stay readable.
        dispatcher = dispatcher_from_env(trail=audit, stream=notifications)
        scenario_of: dict[str, str] = {}
        label_of: Callable[[str], str] = lambda version: scenario_of.get(version, version)  # noqa: E731

        def make_runner(model_name: str, version: str) -> LocalRunner:
            label = label_of(version)
            trail = trails.setdefault(label, [])

            def on_decision(decision: GateDecision) -> None:
                trail.append(decision)
                print_decision(label, decision, args.verbose, out)
                if label == "good" and decision.stage == 50 and decision.look == 1:
                    router.admin("PUT", "/admin/faults", {"candidate_delay_ms": 120})
                    say("  (injected: the candidate answers 120 ms slower, as in the paper's "
                        "stage-3 latency spike)")  # fmt: skip
                if label == "good" and decision.stage == 50 and decision.look == 3:
                    router.admin("PUT", "/admin/faults", {"candidate_delay_ms": 0})
                    say("  (the latency spike is over)")

            return LocalRunner(
                policy=policy,
                registry=MlflowRegistry(uri),
                backend=make_backend(
                    BackendSettings(kind="router", router_url=router.url, admin_token=token)
                ),
                source=RouterScrapeSource(router.url),
                store=FileStore(workdir / f"evidence-{label}-v{version}.jsonl"),
                model_name=model_name,
                rollout_id=f"{label}-v{version}",
                interval_s=args.interval,
                on_decision=on_decision,
                journal=Journal(
                    trail=audit,
                    notifier=dispatcher,
                    policy=policy,
                    policy_digest=policy_hash(policy_file),
                    model_name=model_name,
                    rollout_id=f"{label}-v{version}",
                    actor=default_actor(),
                ),
            )

        trigger = RunnerTrigger(make_runner, workdir / "locks")
        relay = AppThread(create_relay(RelaySettings(secret, models=frozenset({MODEL})), trigger))
        stack.add(relay.close)
        register_webhook(uri, relay.url + WEBHOOK_PATH, secret)
        say(f"relay at {relay.url} registered as the MLflow webhook (alias and tag events)")
        traffic = TrafficProcess(workdir, router.url, args.rate, args.fraud_share)
        stack.add(traffic.close)
        say(f"traffic: {args.rate:g} transactions/s asked for, drifted, labels 0.5-0.8 s later")

        for scenario in scenarios:
            say(f"--- scenario '{scenario}': training the candidate")
            frame: pd.DataFrame = generate(40_000, seed=2, drift=CANDIDATE_TRAIN_DRIFT)
            options = BAD_CANDIDATES["recall-drop"] if scenario == "bad" else {}
            model = train_candidate(frame, seed=0, **options)
            version = str(int(max(MlflowRegistry(uri).get_aliases(MODEL).values(), key=int)) + 1)
            scenario_of[version] = scenario
            ref = register_model(model, tracking_uri=uri, eval_frame=evaluation, name=MODEL,
                                 alias=CANDIDATE)  # fmt: skip
            scenario_of[ref.version] = scenario
            say(f"registered version {ref.version} as '{CANDIDATE}': MLflow calls the relay")
            outcome = trigger.wait(MODEL, ref.version, timeout_s=240)
            outcomes[scenario] = f"{outcome.action}: {outcome.reason}"
            say(f"{scenario}: {outcome.action.upper()} ({outcome.reason})")
            rollout_id = f"{scenario}-v{ref.version}"
            report = write_report(audit.path, workdir / f"report-{scenario}.html", rollout_id)
            reports[scenario] = report
            attach_to_registry(MlflowRegistry(uri), MODEL, ref.version, audit.path, rollout_id)
            serving = router.admin("GET", "/admin/state")["baseline"].get("version")
            say(f"the router's baseline is now version {serving} ('{CHAMPION}')")
        summary = traffic.close()
        say(f"traffic: {summary['ok']} answered ({summary['throughput_rps']:.0f}/s), "
            f"{sum(summary['failed'].values())} failed, {summary['fallbacks']} candidate "
            f"fallbacks, {summary['feedback'].get('joined', 0)} labels joined")  # fmt: skip
        print("\ndecision trail:", file=out)
        for scenario in scenarios:
            print_trail(scenario, trails.get(scenario, []), out)
        check = verify(audit.path)
        intact = "intact" if check.ok else "NOT intact: " + "; ".join(check.problems)
        say(
            f"audit trail {audit.path}: {check.records} records, hash chain {intact} "
            f"(kpigate audit verify {audit.path}); attached to each version in MLflow"
        )
        for scenario, report in reports.items():
            say(f"report ({scenario}): {report}")
        say(f"notifications: {workdir / 'notifications.log'}")
        say(f"done; evidence, logs and the registry are in {workdir}")
        return 0 if check.ok else 1
    except (RuntimeError, TimeoutError) as exc:
        say(f"kpigate demo failed: {exc}")
        return 1
    finally:
        stack.close()


def run(args: argparse.Namespace) -> int:
    out = sys.stdout
    if args.recorded:
        return run_recorded(args, out)
    try:
        policy = load_policy(str(resources.files("kpigate") / "examples" / "demo-policy.yaml"))
    except PolicyError as exc:
        print(f"kpigate demo: {exc}", file=sys.stderr)
        return 2
    return run_live(args, policy, out)

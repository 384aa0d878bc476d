"""The fraud case study end to end on the embedded default: real parts, compressed time.

What runs: an MLflow server (SQLite) holding the registry; the XGBoost baseline registered as
`champion`; the router (`kpigate serve`) serving it; the relay, registered as an MLflow webhook;
traffic with labels later than a window. Then, per scenario, a candidate is trained and
registered as `candidate`: MLflow calls the relay, the relay starts the local runner, and the
runner moves the candidate through 5 -> 25 -> 50 -> 100% on the router's prediction log,
printing each decision.

  good  a LightGBM candidate tuned for recall; a latency spike injected at 50% holds the
        rollout until it clears; it reaches 100% and becomes champion
  bad   a candidate about 5 points lower in recall, rolled back at the first look the evidence
        allows, while the baseline keeps serving

Time is compressed and sized to the machine: before each rollout the demo measures the request
rate the router actually answers here, then sets each evaluation window's length so that it holds
about 400 labelled frauds across both arms (2 s at 400 requests/s, 16 s at 50/s), and says how
long the rollouts will take; --interval fixes it instead. Every duration of the demo policy is
scaled to that window length (its file is written for nominal 10 s windows). It keeps measuring
the rate the traffic achieves over the last two windows: when the machine slows so that a window
would hold fewer than 3/4 of those frauds, the windows of the looks to come are lengthened (never
shortened within a rollout), and it says so ("machine slowed to 31 req/s: windows now 26 s"),
with the label delays and the horizon scaled alike; the trail records it (resize-windows).

Labels come later than a window, as in production but in seconds: a fraud label about one window
after its prediction (uniform, 0.5 to 1.5 windows), a legitimate one 2.5 windows after; the
policy's label horizon is three windows, so label KPIs compare the cohort of predictions served
in one window, both arms at the same label age, three windows after it was served. The traffic
is enriched in fraud (--fraud-share) so that each cohort holds enough labelled frauds. KPIs come
only through the router: its prediction log (SQLite) and the labels posted to /feedback, read
with SQL (the predlog source). --recorded replays the bundled recorded rollouts instead (no
servers); with --workdir it writes their audit trail and reports there.

It prints the addresses to look at while it runs: the router, the MLflow UI, the command that
follows each rollout (`kpigate status --watch`), and at the end the audit trail and reports.
A rollback says why: for harm (a KPI shown worse) or for lack of evidence (max_holds ran out).

environment:
  KPIGATE_ADMIN_TOKEN, KPIGATE_WEBHOOK_SECRET   used when set (else fresh ones, never printed)
  KPIGATE_AUDIT_KEY (or KPIGATE_AUDIT_KEY_FILE)  keys the audit trail when set
  SLACK_WEBHOOK_URL, SLACK_BOT_TOKEN + SLACK_CHANNEL, PAGERDUTY_ROUTING_KEY (each also as
  NAME_FILE), KPIGATE_NOTIFY_*, KPIGATE_GRAFANA_URL + KPIGATE_GRAFANA_TOKEN: notifications
  and annotations as for `kpigate rollout` (docs/operators-local.md); without them the
  notifications go to <workdir>/notifications.log
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TextIO

from kpigate.cause import HARM, LABELS, cause_of
from kpigate.engine import Cause, Decision, GateDecision, KpiReport, Verdict
from kpigate.policy import Policy, PolicyError, load_policy, policy_from_dict

_MARK = {Decision.PROMOTE: "PROMOTE", Decision.HOLD: "hold", Decision.ROLLBACK: "ROLLBACK"}
MODEL = "fraud-detector"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--scenario", choices=["good", "bad", "all"], default="all", help="default: all")
    add("--interval", type=float, default=None,
        help="seconds per window, fixed (default: sized to the measured request rate and "
             "lengthened when it falls)")  # fmt: skip
    add("--rate", type=float, default=400.0, help="requests/s asked for (%(default)s)")
    add("--fraud-share", type=float, default=0.5, help="fraud in the traffic (%(default)s)")
    add("--workdir", default="", help="keep everything here (default: a temp dir)")
    add("--verbose", "-v", action="store_true", help="the KPI table at every window")
    add("--recorded", action="store_true", help="replay the recorded rollouts (no servers)")


# --- sizing the windows to the machine ------------------------------------------------------------

# Labelled frauds per window, both arms together, at which the live demo tells its story: the
# good candidate certified at 50% within the soak and max_holds, the bad one rolled back on
# recall (measured: 400 requests/s, 2 s windows, fraud share 0.5). With 150 to 300 (the rate
# fell after the windows were sized: a CI run beside another test worker) the bad candidate's
# 4.7pp recall drop timed out at 50% instead.
POSITIVES_PER_WINDOW = 400.0
MIN_INTERVAL_S = 2.0
SLOW_INTERVAL_S = 30.0  # beyond this the demo takes too long to watch: say so
MAX_INTERVAL_S = 120.0  # a stalled machine must not stretch a window without end
# A rollout's windows are lengthened when, at the rate the traffic achieved over the last
# windows, the next one would hold fewer than this share of POSITIVES_PER_WINDOW.
RESIZE_BELOW = 0.75


@dataclass(frozen=True)
class Sizing:
    rate: float  # requests/s the router answered while measured
    interval_s: float
    looks: tuple[int, int]  # fewest and most looks of one rollout (soaks; soaks + max_holds)
    slow: bool  # the machine is too slow for a demo of a few minutes

    @property
    def minutes(self) -> tuple[float, float]:
        return (self.looks[0] * self.interval_s / 60, self.looks[1] * self.interval_s / 60)


def window_for(rate: float, fraud_share: float) -> float:
    """Seconds a window needs at `rate` requests/s to hold POSITIVES_PER_WINDOW labelled frauds
    (to 0.1 s, within MIN_INTERVAL_S and MAX_INTERVAL_S)."""
    wanted = POSITIVES_PER_WINDOW / max(rate * fraud_share, 1e-9)
    return round(min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, wanted)), 1)


def size_windows(rate: float, fraud_share: float, policy: Policy) -> Sizing:
    """Window length so each holds POSITIVES_PER_WINDOW labelled frauds at this rate."""
    interval = window_for(rate, fraud_share)
    fewest = sum(stage.looks for stage in policy.stages)
    most = fewest + len(policy.stages) * policy.max_holds
    return Sizing(rate, interval, (fewest, most), slow=interval > SLOW_INTERVAL_S)


def resized_window(rate: float, fraud_share: float, interval_s: float) -> float | None:
    """The longer window the rest of a rollout needs once the machine slowed, or None while a
    window of `interval_s` at the achieved `rate` still holds RESIZE_BELOW x
    POSITIVES_PER_WINDOW labelled frauds.

    Never shorter than `interval_s`: the label horizon is three windows and grows with them,
    and a horizon shorter than the delays the traffic already scheduled (legitimate labels 2.5
    old windows late) would count those labels as missing. A faster machine is used by the
    next rollout, which is sized afresh."""
    if rate * fraud_share * interval_s >= RESIZE_BELOW * POSITIVES_PER_WINDOW:
        return None
    longer = window_for(rate, fraud_share)
    return longer if longer > interval_s else None


def achieved_rate(samples: Sequence[tuple[float, float]], windows: int = 2) -> float | None:
    """Requests/s over the last `windows` windows, from (seconds, answers served so far) taken
    when the rollout started and at the end of each window; None before `windows` windows, so
    that one slow moment does not stretch the rest of the rollout."""
    if len(samples) <= windows:
        return None
    (t0, n0), (t1, n1) = samples[-1 - windows], samples[-1]
    return (n1 - n0) / max(t1 - t0, 1e-9)


@dataclass
class Pacer:
    """Keeps a rollout's windows holding the labelled frauds the story needs on a machine whose
    load changes: the answers served so far are sampled at the end of every window, and
    `slowed()` says, before a look, whether the windows to come must be longer."""

    fraud_share: float
    interval_s: float  # the windows the rollout runs now
    served: Callable[[], float]  # answers the router has served so far
    clock: Callable[[], float] = time.monotonic
    samples: list[tuple[float, float]] = field(default_factory=list)

    def restart(self, interval_s: float) -> None:
        """A rollout starts with windows of `interval_s`: count from here."""
        self.interval_s = interval_s
        self.samples = [(self.clock(), self.served())]

    def sample(self, record: object = None) -> None:
        """At the end of a window (LocalRunner.on_window)."""
        self.samples.append((self.clock(), self.served()))

    def slowed(self) -> tuple[float, float] | None:
        """(achieved requests/s, the longer window) when the windows must grow, else None."""
        rate = achieved_rate(self.samples)
        longer = None if rate is None else resized_window(rate, self.fraud_share, self.interval_s)
        return None if rate is None or longer is None else (rate, longer)


# --- label delays longer than a window ----------------------------------------------------------

# Seconds from a prediction to its label, in windows: fraud (a chargeback) uniform from 0.5 to
# 1.5 windows, legitimate (the maturity window passes) exactly 2.5. The demo policy's
# labels.horizon (three windows) covers both, so no label of the demo arrives late.
FRAUD_DELAY_WINDOWS = 1.0
LEGIT_DELAY_WINDOWS = 2.5


def scaled_policy(policy: Policy, interval_s: float) -> Policy:
    """The policy with every duration scaled so that its windows last `interval_s`: soaks,
    the label horizon and max_staleness keep their length in windows, and the result is
    validated again (each stage's first cohort must still mature before it must decide)."""
    intervals = {stage.interval for stage in policy.stages}
    if len(intervals) != 1:
        raise PolicyError(f"the demo policy's stages must share one interval, not {intervals}")
    factor = interval_s / intervals.pop()
    data = policy.model_dump(mode="json")
    for stage in data["stages"]:
        stage["soak"] *= factor
        stage["interval"] *= factor
    data["max_staleness"] *= factor
    if data.get("labels") is not None:
        data["labels"]["horizon"] *= factor
    return policy_from_dict(data, f"{policy.name} scaled to {interval_s:g} s windows")


def label_delays(policy: Policy) -> tuple[float, float]:
    """Seconds until the traffic posts a fraud label (the mean) and a legitimate one, for the
    windows of `policy` (a scaled demo policy)."""
    interval = policy.stages[0].interval
    return FRAUD_DELAY_WINDOWS * interval, LEGIT_DELAY_WINDOWS * interval


def write_policy(policy: Policy, path: Path) -> Path:
    """The policy a rollout runs, as a file: `kpigate status --policy` and the audit digest."""
    import yaml

    path.write_text(
        f"# {policy.name}, as `kpigate demo` ran it (durations in seconds)\n"
        + yaml.safe_dump(policy.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
    )
    return path


def describe(sizing: Sizing, asked: float) -> str:
    low, high = sizing.minutes
    text = (
        f"the router answers {sizing.rate:.0f} requests/s here ({asked:g} asked for): windows "
        f"of {sizing.interval_s:g} s hold about {POSITIVES_PER_WINDOW:.0f} labelled frauds; "
        f"a rollout takes {low:.1f} to {high:.1f} minutes"
    )
    if sizing.slow:
        text += (
            ". This machine is too slow for a short demo: close other work, or pass "
            "--scenario bad (the shorter story), or `kpigate demo --recorded` (no servers)"
        )
    return text


# --- printing ------------------------------------------------------------------------------------


def _kpi_line(key: str, report: KpiReport) -> str:
    if report.ci is None or report.estimate is None:
        return f"      {key:<18} {report.verdict.value:<12} {report.reason}"
    lo, hi = report.ci
    return (
        f"      {key:<18} {report.verdict.value:<12} diff {_signed(report.estimate)} "
        f"ci [{_signed(lo)}, {_signed(hi)}] margin {report.margin:g}"
    )


def _signed(value: float) -> str:
    return f"{value:+.4g}" if value != 0 else "+0"  # never "-0"


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
    print(f"  {label}: {' -> '.join(steps) or '(none)'}  => {result_text(decisions)}", file=out)


def result_text(decisions: list[GateDecision]) -> str:
    """How a rollout ended, saying why it was rolled back (harm, lack of evidence, operator)."""
    last = decisions[-1] if decisions else None
    if last is None:
        return "no decision"
    if last.final and last.decision is Decision.PROMOTE:
        return "promoted to 100%: the candidate is champion"
    if last.decision is Decision.ROLLBACK:
        cause = cause_of(last.decision.value, last.reasons, last.cause.value)
        culprits = [k for k, r in last.kpis.items()
                    if r.verdict is Verdict.FAIL and r.triggers == "rollback"]  # fmt: skip
        why = f" on {', '.join(culprits)}" if cause == HARM and culprits else ""
        return f"{LABELS[cause]}{why} at {last.stage:g}%: the baseline kept serving"
    return "still open"


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
    if args.workdir:
        if (Path(args.workdir) / "audit.jsonl").exists():
            print(f"kpigate demo: {args.workdir} already holds an audit trail; give an "
                  "empty --workdir (a trail is appended to, never overwritten)",
                  file=sys.stderr)  # fmt: skip
            return 2
        for line in write_recorded(Path(args.workdir), lines, trail, policy):
            print(line, file=out)
    return 0


def write_recorded(
    workdir: Path, lines: list[str], trail: dict[str, list[GateDecision]], policy: Policy
) -> list[str]:
    """The recorded rollouts' audit trail and one report each, as a live run leaves them."""
    import json

    from kpigate.audit import AuditTrail, action_event, decision_event, policy_hash
    from kpigate.report import write_report

    workdir.mkdir(parents=True, exist_ok=True)
    audit = AuditTrail(workdir / "audit.jsonl")
    examples = resources.files("kpigate") / "examples"
    digest = policy_hash(str(examples / "policy.yaml"))
    windows = [json.loads(line) for line in lines if line.strip()]
    actor = "kpigate demo --recorded"
    written = []
    for rollout, decisions in trail.items():
        mine = [w for w in windows if w.get("rollout") == rollout]
        for decision, window in zip(decisions, mine, strict=True):
            audit.append(decision_event(rollout, decision, policy, digest, MODEL, "1", "2", actor,
                                        window=window))  # fmt: skip
        last = decisions[-1]
        if last.final:
            action = "promote" if last.decision is Decision.PROMOTE else "rollback"
            audit.append(action_event(rollout, action, actor=actor, model_name=MODEL,
                                      candidate_version="2", baseline_version="1",
                                      stage=last.stage))  # fmt: skip
        report = write_report(audit.path, workdir / f"report-{rollout}.html", rollout)
        written.append(f"report ({rollout}): {report}")
    return [f"audit trail: {audit.path}", *written]


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
    from kpigate.casestudy import (
        AppThread,
        RouterProcess,
        RunnerTrigger,
        Stack,
        TrafficProcess,
        measure_rate,
        served_count,
    )
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
    from kpigate.sources.predlog import PredlogReader, PredlogSource
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
    # Sized once traffic flows, per rollout, and lengthened mid-rollout when the machine slows
    # (Pacer); the policy a rollout runs is scaled to its windows.
    interval: float = args.interval or MIN_INTERVAL_S
    rollout_policy = scaled_policy(policy, interval)
    resizes: dict[str, list[str]] = {}
    policy_path = Path(str(resources.files("kpigate") / "examples" / "demo-policy.yaml"))
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
        say(f"router at {router.url} (/metrics); MLflow UI at {uri}")

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
            scaled = rollout_policy

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

            source = PredlogSource(
                PredlogReader.from_url(router.db_url, candidate_version=version), scaled.labels
            )
            journal = Journal(
                trail=audit,
                notifier=dispatcher,
                policy=scaled,
                policy_digest=policy_hash(policy_path),
                model_name=model_name,
                rollout_id=f"{label}-v{version}",
                actor=default_actor(),
            )

            def retime(stage: float, look: int) -> Policy | None:
                """Longer windows for the looks to come when the traffic slowed (Pacer): the
                policy, its file, the source's horizon, the trail and the replayer's label
                delays all follow; labels already scheduled keep their times, and the longer
                horizon still covers them, so earlier cohorts count every label."""
                found = None if args.interval is not None else pacer.slowed()
                if found is None:
                    return None
                rate, longer = found
                before = pacer.interval_s
                longer_policy = scaled_policy(policy, longer)
                assert longer_policy.labels is not None
                delays = label_delays(longer_policy)
                text = f"machine slowed to {rate:.0f} req/s: windows now {longer:g} s"
                say(f"  ({text}, were {before:g} s, so each holds about "
                    f"{POSITIVES_PER_WINDOW:.0f} labelled frauds again; labels: fraud "
                    f"{delays[0]:g} s, legitimate {delays[1]:g} s, cohorts mature "
                    f"{longer_policy.labels.horizon:g} s after their window)")  # fmt: skip
                resizes.setdefault(label, []).append(f"{text} at {stage:g}% look {look}")
                path = write_policy(longer_policy, workdir / f"policy-{label}.yaml")
                journal.policy_digest = policy_hash(path)
                journal.action("resize-windows", stage, detail={
                    "look": look, "achieved_rps": round(rate, 1), "interval_s_before": before,
                    "interval_s": longer, "horizon_s": longer_policy.labels.horizon,
                    "fraud_label_s": delays[0], "legit_label_s": delays[1]})  # fmt: skip
                source.labels = longer_policy.labels
                traffic.set_delays(delays)
                pacer.interval_s = longer
                return longer_policy

            return LocalRunner(
                policy=scaled,
                registry=MlflowRegistry(uri),
                backend=make_backend(
                    # generous: on a busy two-core machine the admin API can take seconds
                    BackendSettings(
                        kind="router", router_url=router.url, admin_token=token, timeout_s=60.0
                    )
                ),
                # Immediate KPIs per serving window and label KPIs per matured cohort, both
                # with SQL on the router's prediction log.
                source=source,
                store=FileStore(workdir / f"evidence-{label}-v{version}.jsonl"),
                model_name=model_name,
                rollout_id=f"{label}-v{version}",
                on_decision=on_decision,
                on_window=pacer.sample,
                retime=retime,
                journal=journal,
            )

        trigger = RunnerTrigger(make_runner, workdir / "locks")
        relay = AppThread(create_relay(RelaySettings(secret, models=frozenset({MODEL})), trigger))
        stack.add(relay.close)
        register_webhook(uri, relay.url + WEBHOOK_PATH, secret)
        say(f"relay at {relay.url} registered as the MLflow webhook (alias and tag events)")

        # One replayer for the whole demo: when the windows change (per rollout, or when the
        # machine slows) it is told the new label delays, and the labels it already scheduled
        # keep their times, so every cohort gets the labels its horizon expects.
        traffic = TrafficProcess(workdir, router.url, args.rate, args.fraud_share,
                                 label_delays(rollout_policy))  # fmt: skip
        stack.add(traffic.close)
        pacer = Pacer(args.fraud_share, interval, lambda: served_count(router.url))
        say(f"traffic: {args.rate:g} transactions/s asked for, drifted, labels posted later "
            f"than a window: fraud about {FRAUD_DELAY_WINDOWS:g}, legitimate "
            f"{LEGIT_DELAY_WINDOWS:g} windows after the prediction")  # fmt: skip

        for scenario in scenarios:
            say(f"--- scenario '{scenario}': training the candidate")
            frame: pd.DataFrame = generate(40_000, seed=2, drift=CANDIDATE_TRAIN_DRIFT)
            options = BAD_CANDIDATES["recall-drop"] if scenario == "bad" else {}
            model = train_candidate(frame, seed=0, **options)
            # Measured now, not once: the machine's load changes (training just ended, other
            # work comes and goes), and each rollout's windows are sized to what it gets.
            sizing = size_windows(measure_rate(router.url), args.fraud_share, policy)
            if args.interval is None:
                interval = sizing.interval_s
                say(describe(sizing, args.rate))
            else:
                say(f"the router answers {sizing.rate:.0f} requests/s here; windows of "
                    f"{interval:g} s as asked (--interval)")  # fmt: skip
            rollout_policy = scaled_policy(policy, interval)
            assert rollout_policy.labels is not None
            delays = label_delays(rollout_policy)
            traffic.set_delays(delays)
            pacer.restart(interval)
            say(f"labels: fraud {delays[0]:g} s (0.5x to 1.5x), legitimate {delays[1]:g} s after "
                f"the prediction; a cohort matures {rollout_policy.labels.horizon:g} s after "
                "its window (labels.horizon)")  # fmt: skip
            policy_path = write_policy(rollout_policy, workdir / f"policy-{scenario}.yaml")

            # A rollout's most looks (every stage soaked and held to max_holds), plus set-up;
            # asked again while waiting, as the windows may grow.
            def timeout_s(most_looks: int = sizing.looks[1]) -> float:
                return most_looks * pacer.interval_s * 1.5 + 180

            version = str(int(max(MlflowRegistry(uri).get_aliases(MODEL).values(), key=int)) + 1)
            scenario_of[version] = scenario
            ref = register_model(model, tracking_uri=uri, eval_frame=evaluation, name=MODEL,
                                 alias=CANDIDATE)  # fmt: skip
            scenario_of[ref.version] = scenario
            say(f"registered version {ref.version} as '{CANDIDATE}': MLflow calls the relay")
            rollout_id = f"{scenario}-v{ref.version}"
            evidence = workdir / f"evidence-{rollout_id}.jsonl"
            say(f"follow it: kpigate status --policy {policy_path} --evidence {evidence} --watch")
            outcome = trigger.wait(MODEL, ref.version, timeout_s=timeout_s)
            outcomes[scenario] = f"{outcome.action}: {outcome.reason}"
            say(f"{scenario}: {result_text(trails.get(scenario, []))} ({outcome.reason})")
            report = write_report(audit.path, workdir / f"report-{scenario}.html", rollout_id)
            reports[scenario] = report
            attach_to_registry(MlflowRegistry(uri), MODEL, ref.version, audit.path, rollout_id)
            serving = router.admin("GET", "/admin/state")["baseline"].get("version")
            say(f"the router's baseline is now version {serving} ('{CHAMPION}')")
        summary = traffic.close()
        answered, elapsed = summary["ok"], summary["elapsed_s"]
        say(f"traffic: {answered} answered ({answered / max(elapsed, 1e-9):.0f}/s), "
            f"{sum(summary['failed'].values())} failed, {summary['fallbacks']} candidate "
            f"fallbacks, {summary['feedback'].get('joined', 0)} labels joined")  # fmt: skip
        print("\ndecision trail:", file=out)
        for scenario in scenarios:
            print_trail(scenario, trails.get(scenario, []), out)
            for change in resizes.get(scenario, []):
                print(f"  {scenario}: {change}", file=out)
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


def _stop_on_sigterm() -> None:
    """`kill <pid>` stops the demo as Ctrl-C does: every server it started is stopped too.
    (A demo started in the background of a script ignores SIGINT.)"""
    import signal
    import threading

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def run(args: argparse.Namespace) -> int:
    out = sys.stdout
    if args.recorded:
        return run_recorded(args, out)
    try:
        policy = load_policy(str(resources.files("kpigate") / "examples" / "demo-policy.yaml"))
    except PolicyError as exc:
        print(f"kpigate demo: {exc}", file=sys.stderr)
        return 2
    _stop_on_sigterm()
    return run_live(args, policy, out)

"""Run a rollout locally: the WorkflowTemplate's steps, in its order, in this process.

registry-approval, then per stage deploy-stage -> soak-and-collect -> evaluate-gate (looping
look by look while the gate holds), then promote-or-rollback: the same step functions the
containers run, against the local registry, the kpigate router and its metrics, with the same
policy file. What runs on Argo can be run and debugged on a laptop.

Resumable: the evidence store is the rollout's memory. Rerun the same command after a crash and
stages already promoted are skipped, the current stage's windows are kept, nothing is repeated.
One rollout per model at a time (a lock file); a second start for the same model exits 3.

Operators steer it between looks with `kpigate pause | resume | abort | promote --model-name M`
(the same --state-dir): a control file the runner polls (kpigate/control.py); `kpigate status`
shows where it stands, `kpigate audit show --follow` what it decides.

Exit status: 0 the rollout ended (promoted or rolled back: the last line says which), 1 the
registry was unreachable after retries, 2 bad policy, 3 another rollout of the model is running
or the version was rejected, 4 suspended for an operator (rerun to continue).

environment:
  KPIGATE_ADMIN_TOKEN        the router's admin token (required; the router's own token)
  MLFLOW_TRACKING_URI        the registry when --tracking-uri is not given
  KPIGATE_ACTOR              who acts, in the audit trail (default: kpigate-runner:user@host)
  KPIGATE_AUDIT_KEY          the audit trail's HMAC key (or KPIGATE_AUDIT_KEY_FILE); exit 2 if bad
  SLACK_WEBHOOK_URL, SLACK_BOT_TOKEN + SLACK_CHANNEL, PAGERDUTY_ROUTING_KEY, each also as
  NAME_FILE (a mounted secret); KPIGATE_NOTIFY_PER_MINUTE, KPIGATE_NOTIFY_DEDUP_S,
  KPIGATE_NOTIFY_CONSOLE: notifications; KPIGATE_GRAFANA_URL + KPIGATE_GRAFANA_TOKEN:
  decisions as Grafana annotations (every variable: docs/operators-local.md)

example:
  kpigate rollout --policy kpigate/examples/demo-policy.yaml --model-name fraud-detector
      --tracking-uri http://127.0.0.1:5000 --router-url http://127.0.0.1:8080 --interval 5
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from kpigate.audit import AuditError
from kpigate.backends.base import BackendError, TrafficBackend
from kpigate.control import ControlError, Order, clear_order, read_order
from kpigate.engine import Decision, GateDecision
from kpigate.errors import KpigateError
from kpigate.evidence_record import WindowRecord
from kpigate.journal import Journal
from kpigate.policy import Policy, PolicyError, load_policy
from kpigate.registry.base import CHAMPION, Registry, RegistryError, RegistryUnavailable
from kpigate.sources.base import MetricsSource
from kpigate.steps.deploy_stage import deploy
from kpigate.steps.evaluate_gate import judge_evidence, operator_decision
from kpigate.steps.inputs import (
    Interval,
    ModelName,
    ModelRef,
    PolicyFile,
    PrometheusMatchers,
    PrometheusMode,
    PrometheusUrl,
    RouterUrl,
    Source,
    TrackingUri,
    TrafficMode,
)
from kpigate.steps.promote_or_rollback import Outcome, promote, rollback
from kpigate.steps.registry_approval import approve
from kpigate.steps.soak_and_collect import soak, stage_windows
from kpigate.steps.spec import StepInputs, add_flags, parse
from kpigate.steps.spec import field as step_input
from kpigate.store import EvidenceStore

T = TypeVar("T")


def with_retries(
    call: Callable[[], T],
    what: str,
    attempts: int = 4,
    first_delay_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Retry a registry call while the registry is unreachable (backoff 1, 2, 4 s), then fail
    with a message that says what was being done. Other errors are not retried."""
    delay = first_delay_s
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except RegistryUnavailable as exc:
            if attempt == attempts:
                raise RegistryUnavailable(
                    f"{what} failed after {attempts} attempts: {exc}; nothing was changed by "
                    "the failed call. Rerun the same command once the registry is back: the "
                    "rollout resumes from its evidence."
                ) from exc
            sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


class RolloutBusy(RuntimeError):
    """Another rollout of the same model holds the lock."""


@contextmanager
def model_lock(directory: Path, model: str) -> Iterator[None]:
    """An exclusive, non-blocking lock per model; released even if the process is killed."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{model}.lock"
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RolloutBusy(f"a rollout of '{model}' is already running ({holder})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class LocalRunner:
    policy: Policy
    registry: Registry
    backend: TrafficBackend
    source: MetricsSource
    store: EvidenceStore
    model_name: str
    rollout_id: str
    mode: str = "canary"
    interval_s: float | None = None  # override the policy's evaluation interval (demos)
    approve_last_stage: Callable[[], bool] | None = None  # None: no manual approval
    sleep: Callable[[float], None] = time.sleep
    on_decision: Callable[[GateDecision], None] = lambda decision: None
    on_window: Callable[[WindowRecord], None] | None = None
    on_message: Callable[[str], None] = lambda message: None
    journal: Journal | None = None  # audit trail and notifications
    trace: list[str] = field(default_factory=list)
    retry_delay_s: float = 1.0  # first backoff when the registry is unreachable
    control_dir: Path | None = None  # where `kpigate pause|resume|abort|promote` write
    control_poll_s: float = 1.0  # how often a paused runner rereads its control file
    # Before each look, (stage, look) -> the policy for it, or None to keep the current one:
    # the durations may change (kpigate demo lengthens its windows when the machine slows),
    # the rules may not (Policy.rules); ValueError if they do.
    retime: Callable[[float, int], Policy | None] | None = None
    _promote_full: bool = field(default=False, init=False)  # an operator's `promote --full`

    def _step(self, name: str) -> None:
        self.trace.append(name)

    def _promoted_stages(self) -> set[float]:
        """Stages whose gate already decided PROMOTE, according to the evidence."""
        records = self.store.read()
        done: set[float] = set()
        for stage in {float(r.stage) for r in records}:
            upto = [r for r in records if r.stage <= stage]
            if judge_evidence(self.policy, upto, stage).decision is Decision.PROMOTE:
                done.add(stage)
        return done

    def _judge_stage(self, traffic: float) -> GateDecision:
        """Collect look by look until the gate stops holding (the soak is part of the loop)."""
        looks = 1
        while True:
            ordered = self._heed_operator(traffic)
            if ordered is not None:
                return ordered
            self._retime(traffic, looks)
            stage = self.policy.stage_for(traffic)
            assert stage is not None
            interval = self.interval_s if self.interval_s is not None else stage.interval
            self._step(f"soak-and-collect@{traffic:g}")
            soak(
                self.policy,
                self.store,
                self.source,
                traffic,
                looks,
                interval,
                self.rollout_id,
                sleep=self.sleep,
                on_window=self.on_window,
            )
            self._step(f"evaluate-gate@{traffic:g}")
            records = self.store.read()
            decision = judge_evidence(self.policy, records, traffic)
            if self.journal is not None:
                self.journal.decision(decision, records[-1].as_json() if records else None)
            self.on_decision(decision)
            if decision.decision is not Decision.HOLD:
                return decision
            if decision.suspend:
                return decision
            looks = stage_windows(records, traffic) + 1

    def _retime(self, traffic: float, look: int) -> None:
        policy = self.retime(traffic, look) if self.retime is not None else None
        if policy is None or policy == self.policy:
            return
        if policy.rules() != self.policy.rules():
            raise ValueError("a running rollout may change its policy's durations, not its rules")
        self.policy = policy
        if self.journal is not None:
            self.journal.policy = policy

    def _order(self) -> Order | None:
        if self.control_dir is None:
            return None
        try:
            return read_order(self.control_dir, self.model_name)
        except ControlError as exc:
            # An unreadable command must not be dropped (it may be an abort): pause on it.
            self.on_message(f"{exc}; pausing until it is fixed")
            return Order("pause", "", "", str(exc))

    def _heed_operator(self, traffic: float) -> GateDecision | None:
        """Between looks: act on an operator's command, or None to go on looking. A paused
        runner polls here (no window collected, no hold counted) until resumed."""
        order = self._order()
        paused = False
        while order is not None:
            detail = {"operator": order.actor, "reason": order.reason} if order.reason else {
                "operator": order.actor}  # fmt: skip
            if order.command == "pause":
                if not paused:
                    self._record("operator-pause", traffic, **detail)
                    self.on_message(f"paused at {traffic:g}% by {order.actor or 'an operator'}")
                    paused = True
                self.sleep(self.control_poll_s)
                order = self._order()
                continue
            assert self.control_dir is not None
            clear_order(self.control_dir, self.model_name, order)
            self._record(f"operator-{order.command}", traffic, **detail)
            if order.command == "resume":
                self.on_message(f"resumed at {traffic:g}% by {order.actor or 'an operator'}")
                return None
            by = f"by {order.actor or 'an operator'}"
            by += f": {order.reason}" if order.reason else ""
            if order.command == "abort":
                decision, reason = Decision.ROLLBACK, f"aborted {by}"
            else:
                self._promote_full = order.command == "promote-full"
                decision = Decision.PROMOTE
                reason = f"{'promoted to champion' if self._promote_full else 'stage passed'} {by}"
            # The operator's decision, on the evidence so far, into the trail with cause
            # `operator` (as operator-decision records it on Argo): the report then says an
            # operator decided, not the gate.
            records = self.store.read()
            ordered = replace(
                operator_decision(judge_evidence(self.policy, records, traffic), decision.value),
                reasons=(reason,), final=decision is Decision.ROLLBACK or self._promote_full,
            )  # fmt: skip
            if self.journal is not None:
                self.journal.decision(ordered, records[-1].as_json() if records else None)
            self.on_decision(ordered)
            return ordered
        return None

    def run(self, version: str) -> Outcome:
        try:
            outcome = self._run(version)
        finally:
            if self.journal is not None:
                self.journal.flush()
        return outcome

    def _registry(self, call: Callable[[], T], what: str) -> T:
        return with_retries(call, what, first_delay_s=self.retry_delay_s, sleep=self.sleep)

    def _rollback(self, version: str, reason: str) -> Outcome:
        """Traffic goes back first (inside rollback()); only the registry tags are retried."""
        return self._registry(
            lambda: rollback(self.backend, self.registry, self.model_name, version, reason),
            "rollback (tagging the version)",
        )

    def _record(self, action: str, stage: float | None = None, **detail: Any) -> None:
        if self.journal is not None:
            self.journal.action(action, stage=stage, detail=detail or None)

    def _judge_stage_after_deploy(self, traffic: float) -> GateDecision:
        """deploy-stage, then the judge loop of soak-and-collect and evaluate-gate."""
        stage = self.policy.stage_for(traffic)
        assert stage is not None
        self._step(f"deploy-stage@{traffic:g}")
        weight = self.policy.candidate_weight(stage)
        deploy(self.backend, weight, self.mode)
        self._record("deploy", traffic, weight=weight, mode=self.mode)
        return self._judge_stage(traffic)

    def _run(self, version: str) -> Outcome:
        self._step("registry-approval")
        approval = self._registry(
            lambda: approve(self.registry, self.model_name, version, self.policy.registry),
            "registry-approval",
        )
        if self.journal is not None:
            self.journal.candidate_version = approval.version
            with contextlib.suppress(RegistryError):
                self.journal.baseline_version = self.registry.resolve(
                    self.model_name, CHAMPION
                ).version
        if not approval.approved:
            self._record("reject", reason=approval.reason)
            return Outcome("rejected", approval.version, approval.reason)
        version = approval.version
        self._record("start", reason=approval.reason)
        promoted = self._promoted_stages()
        for stage in self.policy.stages:
            if self._promote_full:
                break
            if stage.traffic >= 100:
                self._step("approval-gate@100")
                if self.approve_last_stage is not None and not self.approve_last_stage():
                    self._step("promote-or-rollback@rollback")
                    reason = "an operator declined the last stage"
                    self._record("rollback", stage.traffic, reason=reason)
                    return self._rollback(version, reason)
            if stage.traffic in promoted:
                continue
            decision = self._judge_stage_after_deploy(stage.traffic)
            if decision.decision is Decision.HOLD:  # suspended for an operator
                self._record("suspend", stage.traffic, reason="; ".join(decision.reasons))
                return Outcome("suspended", version, "; ".join(decision.reasons))
            if decision.decision is Decision.ROLLBACK:
                self._step("promote-or-rollback@rollback")
                reason = "; ".join(decision.reasons)
                outcome = self._rollback(version, reason)
                self._record("rollback", stage.traffic, reason=reason)
                return outcome
        self._step("promote-or-rollback@promote")
        outcome = self._registry(
            lambda: promote(self.backend, self.registry, self.model_name, version),
            "promotion (moving the champion alias)",
        )
        self._record("promote", 100.0, reason=outcome.reason)
        return outcome


class RolloutInputs(StepInputs):
    """`kpigate rollout`'s flags: the steps' own where they mean the same (steps/inputs.py)."""

    policy: PolicyFile
    model_name: ModelName
    model_version: ModelRef
    tracking_uri: TrackingUri
    router_url: RouterUrl
    source: Source
    prometheus_url: PrometheusUrl
    prometheus_matchers: PrometheusMatchers
    prometheus_mode: PrometheusMode
    mode: TrafficMode
    interval: Interval
    evidence: str = step_input(
        "", help="evidence file (default: <state-dir>/<model>-<version>.jsonl)"
    )
    state_dir: str = step_input(".kpigate", help="locks, control files and the default evidence")
    audit: str = step_input("", help="audit trail (default: <state-dir>/audit.jsonl)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, RolloutInputs)


def run(namespace: argparse.Namespace) -> int:
    try:
        args: RolloutInputs = parse(RolloutInputs, namespace)
    except KpigateError as exc:
        print(f"kpigate rollout: {exc}", file=sys.stderr)
        return 2
    # MLflow's client retries an unreachable server for minutes; kpigate retries with its own
    # backoff and a clear message instead (with_retries).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        print(f"kpigate rollout: bad policy:\n{exc}", file=sys.stderr)
        return 2
    if args.source != "prometheus" and any(k.queries is not None for k in policy.kpis):
        print(
            "kpigate rollout: the policy has PromQL KPIs: use --source prometheus", file=sys.stderr
        )
        return 2
    from kpigate.backends.base import BackendSettings
    from kpigate.backends.factory import make_backend

    try:
        backend = make_backend(BackendSettings(kind="router", router_url=args.router_url))
    except BackendError as exc:  # e.g. no KPIGATE_ADMIN_TOKEN: nothing was started
        print(f"kpigate rollout: {exc}", file=sys.stderr)
        return 2
    state_dir = Path(args.state_dir)
    try:
        # The lock comes first: a second start for the same model must not touch anything.
        with model_lock(state_dir, args.model_name):
            return _rollout(args, policy, state_dir, backend)
    except RolloutBusy as exc:
        print(f"kpigate rollout: {exc}", file=sys.stderr)
        return 3
    except KpigateError as exc:  # the steps' mapping (kpigate/errors.py): 1, 2 or 3
        print(f"kpigate rollout: {exc}", file=sys.stderr)
        return exc.kind.exit_code
    except AuditError as exc:  # e.g. a KPIGATE_AUDIT_KEY too short, or its file unreadable
        print(f"kpigate rollout: {exc}", file=sys.stderr)
        return 2


def _rollout(args: RolloutInputs, policy: Policy, state_dir: Path, backend: TrafficBackend) -> int:
    from kpigate.audit import (
        AuditTrail,
        RegistryAnchor,
        attach_to_registry,
        default_actor,
        policy_hash,
    )
    from kpigate.notify import dispatcher_from_env
    from kpigate.registry.mlflow import MlflowRegistry
    from kpigate.sources.factory import SourceSettings, make_source
    from kpigate.sources.promql import PromqlError, QueryContext
    from kpigate.store.file import FileStore

    registry = MlflowRegistry(args.tracking_uri)
    version = registry.resolve(args.model_name, args.model_version or "candidate").version
    evidence = args.evidence or str(state_dir / f"{args.model_name}-{version}.jsonl")
    champion = registry.get_aliases(args.model_name).get(CHAMPION, "")
    try:
        source: MetricsSource = make_source(
            SourceSettings(
                kind=args.source,
                router_url=args.router_url,
                prometheus_url=args.prometheus_url,
                prometheus_matchers=args.prometheus_matchers,
                prometheus_mode=args.prometheus_mode,
                max_staleness_s=policy.max_staleness,
                policy=policy,
                context=QueryContext(args.model_name, "", champion, version),
            )
        )
    except PromqlError as exc:
        print(f"kpigate rollout: {exc}", file=sys.stderr)
        return 2

    def show(decision: GateDecision) -> None:
        print(
            f"window {decision.window:>3} at {decision.stage:>5g}%: "
            f"{decision.decision.value.upper():<8} {decision.reasons[0]}",
            flush=True,
        )

    # The head is anchored as a tag on the version after every append (kpigate/audit_anchor.py).
    anchor = RegistryAnchor(registry, args.model_name, version, f"{args.model_name}-{version}")
    trail = AuditTrail(args.audit or state_dir / "audit.jsonl", anchor=anchor)
    actor = default_actor()
    journal = Journal(
        trail=trail,
        notifier=dispatcher_from_env(trail=trail, actor=actor),
        policy=policy,
        policy_digest=policy_hash(args.policy),
        model_name=args.model_name,
        rollout_id=f"{args.model_name}-{version}",
        actor=actor,
    )
    runner = LocalRunner(
        policy=policy,
        registry=registry,
        backend=backend,
        source=source,
        store=FileStore(evidence),
        model_name=args.model_name,
        rollout_id=f"{args.model_name}-{version}",
        mode=args.mode,
        interval_s=args.interval or None,
        on_decision=show,
        on_message=lambda message: print(message, flush=True),
        journal=journal,
        control_dir=state_dir,
    )
    print(f"rollout of {args.model_name} version {version}; evidence in {evidence}", flush=True)
    outcome = runner.run(version)
    print(f"{outcome.action.upper()}: {outcome.reason}")
    try:
        attach_to_registry(registry, args.model_name, version, trail.path, journal.rollout_id)
        print(f"audit trail {trail.path} attached to {args.model_name} version {version}")
    except RegistryError as exc:
        print(f"the audit trail stays in {trail.path}: attaching it failed ({exc})")
    return {"promote": 0, "rollback": 0, "suspended": 4}.get(outcome.action, 3)

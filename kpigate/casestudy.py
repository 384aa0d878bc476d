"""The parts of the fraud case study the demo starts and stops: router, relay, traffic, runner.

Every part is real: the router is `kpigate serve` in its own process group, the relay a uvicorn
server on loopback that MLflow's webhooks call, the traffic an HTTP client posting predictions
and, later, their labels. `Stack.close()` stops everything it started, in reverse order.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette

from kpigate.registry.server import free_loopback_port
from kpigate.runner import LocalRunner, model_lock
from kpigate.steps.promote_or_rollback import Outcome


class RouterProcess:
    """`kpigate serve` as a child process in its own process group."""

    def __init__(self, workdir: Path, tracking_uri: str, model_name: str, token: str) -> None:
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.log_path = workdir / "router.log"
        self.db_url = f"sqlite:///{workdir / 'predictions.db'}"  # the prediction log
        command = [
            sys.executable, "-m", "kpigate.cli", "serve",
            "--model-name", model_name, "--tracking-uri", tracking_uri,
            "--db-url", self.db_url,
            "--port", str(self.port), "--log-level", "warning",
        ]  # fmt: skip
        env = {**os.environ, "KPIGATE_ADMIN_TOKEN": token, "MLFLOW_TRACKING_URI": tracking_uri}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the router exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the router did not come up in {timeout_s:.0f}s; see {self.log_path}")

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.request(
            method,
            f"{self.url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


class AppThread:
    """A Starlette app on uvicorn in a background thread, on a free loopback port."""

    def __init__(self, app: Starlette) -> None:
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="relay", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the relay did not start")
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def __enter__(self) -> AppThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TrafficProcess:
    """`kpigate traffic` as a child process (its own interpreter, so it does not compete with the
    runner for the GIL) until close(), which stops it with SIGTERM and reads its summary."""

    def __init__(
        self,
        workdir: Path,
        url: str,
        rate: float,
        fraud_share: float,
        delays: tuple[float, float],
        part: int = 1,
    ) -> None:
        """`delays`: seconds until a fraud label is sent (uniform, 0.5x to 1.5x) and until a
        legitimate one is (fixed); set_delays() changes them while it runs. `part` numbers the
        replayers of one workdir, each with its own log and summary."""
        self.delays = delays
        self.summary_path = workdir / f"traffic-summary-{part}.json"
        self.log_path = workdir / f"traffic-{part}.log"
        self.delays_path = workdir / f"traffic-delays-{part}.json"
        fraud_s, legit_s = delays
        command = [
            sys.executable, "-m", "kpigate.cli", "traffic", "--url", url,
            "--count", "100000000", "--rate", f"{rate:g}", "--concurrency", "32",
            "--fraud-delay", f"{fraud_s:g}", "--fraud-delay-dist", "uniform",
            "--maturity", f"{legit_s:g}", "--legit-delay-dist", "fixed",
            "--seed", str(10 + part), "--drift", "0.5",
            "--fraud-share", f"{fraud_share:g}", "--quiet", "--no-wait",
            "--json", str(self.summary_path), "--delays-file", str(self.delays_path),
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def set_delays(self, delays: tuple[float, float]) -> None:
        """Label delays for the predictions answered from now on (the file, then SIGHUP); the
        labels already scheduled keep their times, so the cohorts served so far keep theirs."""
        from kpigate.traffic import write_delays

        write_delays(str(self.delays_path), *delays)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGHUP)
        self.delays = delays

    def close(self) -> dict[str, Any]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        if not self.summary_path.exists():
            raise RuntimeError(f"the traffic replayer left no summary; see {self.log_path}")
        summary: dict[str, Any] = json.loads(self.summary_path.read_text())
        return summary


def served_count(router_url: str) -> float:
    """Answers the router has served so far (kpigate_decisions_total, shadow copies excluded)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{router_url}/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "kpigate_decisions_total" and sample.labels.get("shadow") == "false"
    )


def wait_for_traffic(
    router_url: str,
    timeout_s: float = 90.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Return once the router answers a request it had not answered at the call (a replayer
    just started takes seconds to send on a busy machine); RuntimeError after `timeout_s`."""
    deadline = clock() + timeout_s
    before = served_count(router_url)
    while served_count(router_url) <= before:
        if clock() > deadline:
            raise RuntimeError(f"no traffic reached the router in {timeout_s:.0f}s")
        sleep(0.5)


def measure_rate(
    router_url: str,
    seconds: float = 8.0,
    warmup_timeout_s: float = 90.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Requests per second the router actually answers: counted over `seconds` once traffic
    flows (the replayer needs a few seconds to start on a busy machine)."""
    wait_for_traffic(router_url, warmup_timeout_s, clock, sleep)
    sleep(1.0)  # past the first burst of connections
    start_count, start = served_count(router_url), clock()
    sleep(seconds)
    return (served_count(router_url) - start_count) / max(clock() - start, 1e-9)


@dataclass
class RunnerTrigger:
    """The relay's trigger for the embedded default: the local runner, in a thread of this
    process, so its decisions are printed as they happen."""

    make_runner: Callable[[str, str], LocalRunner]
    lock_dir: Path
    name: str = "local"
    outcomes: dict[tuple[str, str], Outcome] = field(default_factory=dict)
    errors: dict[tuple[str, str], BaseException] = field(default_factory=dict)
    threads: dict[tuple[str, str], threading.Thread] = field(default_factory=dict)

    def start(self, model_name: str, model_version: str) -> str:
        key = (model_name, model_version)

        def run() -> None:
            try:
                with model_lock(self.lock_dir, model_name):
                    self.outcomes[key] = self.make_runner(model_name, model_version).run(
                        model_version
                    )
            except BaseException as exc:
                self.errors[key] = exc

        thread = threading.Thread(target=run, name=f"rollout-{model_version}", daemon=True)
        # Started before it is published: wait() joins whatever it finds in `threads`, and
        # joining a thread that has not started raises RuntimeError.
        thread.start()
        self.threads[key] = thread
        return f"local runner for {model_name} version {model_version}"

    def wait(
        self, model_name: str, model_version: str, timeout_s: float | Callable[[], float]
    ) -> Outcome:
        """The rollout's outcome. `timeout_s` may be a function, asked again while waiting: the
        demo's bound grows when it lengthens the rollout's windows."""
        key = (model_name, model_version)
        started = time.monotonic()

        def deadline() -> float:
            return started + (timeout_s() if callable(timeout_s) else timeout_s)

        while key not in self.threads:
            if time.monotonic() > deadline():
                raise TimeoutError(
                    f"no rollout of {model_name} version {model_version} started: did the "
                    "MLflow webhook reach the relay?"
                )
            time.sleep(0.1)
        thread = self.threads[key]
        while thread.is_alive() and time.monotonic() < deadline():
            thread.join(min(1.0, max(0.0, deadline() - time.monotonic())))
        if key in self.errors:
            raise RuntimeError(f"the rollout failed: {self.errors[key]!r}") from self.errors[key]
        if key not in self.outcomes:
            raise TimeoutError(f"the rollout of version {model_version} did not finish in time")
        return self.outcomes[key]


@dataclass
class Stack:
    """Things to stop, in reverse order of starting."""

    closers: list[Callable[[], Any]] = field(default_factory=list)

    def add(self, closer: Callable[[], Any]) -> None:
        self.closers.append(closer)

    def close(self) -> None:
        while self.closers:
            closer = self.closers.pop()
            with contextlib.suppress(Exception):
                closer()

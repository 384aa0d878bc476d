"""One real Prometheus per test session (Debian's `prometheus`), scraping targets tests choose.

Targets come from a file_sd file the tests rewrite, so the session's one Prometheus can scrape
whichever router a test starts. Without the binary the tests skip with a message, except when
KPIGATE_REQUIRE_PROMETHEUS=1 (CI), where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.serve_fixtures import free_port

SCRAPE_INTERVAL = "500ms"


@dataclass
class PrometheusServer:
    url: str
    targets_file: Path
    process: subprocess.Popen[bytes]

    def scrape(self, *targets: str) -> None:
        """Point Prometheus at these host:port targets (job kpigate-router)."""
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(
            json.dumps([{"targets": list(targets), "labels": {"job": "kpigate-router"}}])
        )
        tmp.replace(self.targets_file)

    def scrape_groups(self, *groups: tuple[list[str], dict[str, str]]) -> None:
        """Point Prometheus at target groups, each with its own target labels, as Kubernetes
        service discovery plus relabelling gives each pod's series its pod labels."""
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                [
                    {"targets": targets, "labels": {"job": "kpigate-router", **labels}}
                    for targets, labels in groups
                ]
            )
        )
        tmp.replace(self.targets_file)

    def wait_for(self, query: str, predicate: object, timeout_s: float = 20.0) -> list[dict]:  # type: ignore[type-arg]
        """Poll an instant query until predicate(result) holds."""
        deadline = time.monotonic() + timeout_s
        result: list[dict] = []  # type: ignore[type-arg]
        while time.monotonic() < deadline:
            response = httpx.get(f"{self.url}/api/v1/query", params={"query": query}, timeout=5)
            result = response.json()["data"]["result"]
            if predicate(result):  # type: ignore[operator]
                return result
            time.sleep(0.2)
        raise AssertionError(f"Prometheus never satisfied the condition on {query!r}: {result}")


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found:
        return found
    message = "the `prometheus` binary is not installed (Debian package prometheus; make test installs it as root)"
    if os.environ.get("KPIGATE_REQUIRE_PROMETHEUS") == "1":
        pytest.fail(message + ", and KPIGATE_REQUIRE_PROMETHEUS=1")
    pytest.skip(message)


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    binary = prometheus_binary()
    home = tmp_path_factory.mktemp("prometheus")
    targets = home / "targets.json"
    targets.write_text("[]")
    (home / "prometheus.yml").write_text(
        f"""
global:
  scrape_interval: {SCRAPE_INTERVAL}
  evaluation_interval: 1s
scrape_configs:
  - job_name: kpigate-router
    file_sd_configs:
      - files: ["{targets}"]
        refresh_interval: 1s
"""
    )
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(home / "prometheus.log", "wb"),  # noqa: SIM115
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"Prometheus did not start: {(home / 'prometheus.log').read_text()}")
        time.sleep(0.2)
    server = PrometheusServer(url, targets, process)
    yield server
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


class Exporter:
    """A loopback /metrics endpoint serving one prometheus_client registry: a stand-in for a
    mesh sidecar or a model server, exposing whatever metric names a test registers."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.target = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def text(self) -> str:
        return generate_latest(self.registry).decode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def start_exporter() -> Iterator[object]:
    """start_exporter(registry) -> Exporter; every exporter started is closed after the test."""
    started: list[Exporter] = []

    def start(registry: CollectorRegistry) -> Exporter:
        exporter = Exporter(registry)
        started.append(exporter)
        return exporter

    yield start
    for exporter in started:
        exporter.close()

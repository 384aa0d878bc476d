"""Start and stop a real local `mlflow server` (the registry the demo and the tests talk to)."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from kpigate.registry.base import RegistryError

# Webhooks are how the registry tells the relay about alias/tag events. MLflow refuses plain
# http and loopback/private targets by default, and a local relay is exactly that.
DEFAULT_SERVER_ENV: Mapping[str, str] = {
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    # The job runner (GenAI scorers) forks about eight huey workers; kpigate uses none of it,
    # and webhooks are delivered from the web process. Pass "true" in env= to bring it back.
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    # MLflow caches the webhook list per event for 60 s by default: a relay registered just
    # after an event of the same kind would miss its first deliveries.
    "MLFLOW_WEBHOOK_CACHE_TTL": "1",
}
# A cold `mlflow server` (imports plus schema migrations) takes 15-25 s on a busy 2-core box.
DEFAULT_START_TIMEOUT_S = 120.0


def sqlalchemy_store_uri(uri: str) -> str:
    """Pick a PostgreSQL driver that is installed.

    SQLAlchemy reads a bare postgresql:// as psycopg2, but kpigate's serve extra installs
    psycopg 3; without this a correct URI fails deep inside the server's startup.
    """
    if not uri.startswith(("postgresql://", "postgres://")):
        return uri
    import importlib.util

    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg"):
        return "postgresql+psycopg://" + uri.split("://", 1)[1]
    return uri


def free_loopback_port() -> int:
    """A port that was free a moment ago; the server binds it right after, so races are rare."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class MlflowServer:
    """A `mlflow server` child process in its own process group.

    The group matters: `mlflow server` forks uvicorn/gunicorn workers, and killing only the
    parent leaves them holding the port. `stop()` signals the whole group.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        backend_store_uri: str | None = None,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        workers: int = 1,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
    ) -> None:
        self._own_tmp = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kpigate-mlflow-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.backend_store_uri = sqlalchemy_store_uri(
            backend_store_uri or f"sqlite:///{self.workdir / 'mlflow.db'}"
        )
        self.artifacts_dir = self.workdir / "artifacts"
        self.port = port or free_loopback_port()
        self.env = {**DEFAULT_SERVER_ENV, **(env or {})}
        self.workers = workers
        self.start_timeout_s = start_timeout_s
        self.log_path = self.workdir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """Pid of the server process, which is also its process group id."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        # `python -m mlflow` rather than the `mlflow` script: the venv's bin/ is often not on PATH.
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--backend-store-uri",
            self.backend_store_uri,
            # Artifacts are proxied through the server (mlflow-artifacts:/), so a client in any
            # process or container needs only the tracking URI, not this directory.
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.artifacts_dir),
        ]

    def start(self, *, wait: bool = True) -> str:
        """Start the server and block until /health answers; returns the tracking URI.

        With wait=False it returns at once, so a caller can train models during the ~6-25 s
        the server needs to boot, then call wait_healthy().
        """
        if self.running:
            if wait:
                self.wait_healthy()
            return self.tracking_uri
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        atexit.register(self.stop)
        if wait:
            self.wait_healthy()
        return self.tracking_uri

    def wait_healthy(self) -> None:
        """Block until /health answers; on failure stop the server and raise RegistryError."""
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self) -> None:
        if self._proc is None:
            raise RegistryError("mlflow server was never started; call start() first")
        deadline = time.monotonic() + self.start_timeout_s
        url = f"{self.tracking_uri}/health"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RegistryError(
                    f"mlflow server exited with code {self._proc.returncode} before it became "
                    f"healthy (backend store {self._redacted_store()}). Last log lines from "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise RegistryError(
            f"mlflow server on {self.tracking_uri} was not healthy after {self.start_timeout_s:.0f}"
            f" s. Raise start_timeout_s on a slow machine, or read {self.log_path}:\n"
            f"{self.log_tail()}"
        )

    def _redacted_store(self) -> str:
        # A PostgreSQL URI may carry a password; never print it.
        scheme, sep, rest = self.backend_store_uri.partition("://")
        if sep and "@" in rest:
            return f"{scheme}://***@{rest.split('@', 1)[1]}"
        return self.backend_store_uri

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the whole process group; escalate to SIGKILL if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ValueError):
            atexit.unregister(self.stop)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout_s)
        # Workers may outlive the parent; the group id is the parent's pid either way.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout_s)

    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

"""A router replica in a process of its own, for tests that SIGKILL or SIGSTOP it.

`python -m tests.router_process --db-url URL --prefix P --port N [--weight W --mode M]` serves
FixedModel v1 (score 0.1) as the champion and v2 (score 0.9) as the candidate; `RouterProcess`
starts one in its own process group and waits until it is ready.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


class RouterProcess:
    def __init__(self, db_url: str, prefix: str, port: int, replica_id: str, **opts: str) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.replica_id = replica_id
        self.db_url, self.prefix = db_url, prefix
        cmd = [sys.executable, "-m", "tests.router_process", "--port", str(port),
               "--prefix", prefix, "--replica-id", replica_id]  # fmt: skip
        for name, value in opts.items():
            cmd += [f"--{name.replace('_', '-')}", value]
        # The URL goes through the environment, as in production (never argv).
        env = dict(os.environ, KPIGATE_DB_URL=db_url, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout_s: float = 60.0) -> RouterProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router {self.replica_id} exited {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"router {self.replica_id} not ready within {timeout_s}s")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def main() -> None:
    import uvicorn

    from kpigate.secrets import read_secret
    from kpigate.serve.app import create_app
    from kpigate.serve.cli import uvicorn_config
    from kpigate.serve.config import ServeConfig
    from kpigate.serve.loader import StaticLoader
    from tests.serve_fixtures import FixedModel, constant

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--replica-id", required=True)
    parser.add_argument("--weight", type=float, default=0.0)
    parser.add_argument("--mode", default="canary")
    args = parser.parse_args()
    models = {
        "champion": FixedModel("1", score=constant(0.1)),
        "candidate": FixedModel("2", score=constant(0.9)),
    }
    config = ServeConfig(
        db_url=read_secret("KPIGATE_DB_URL") or "",
        table_prefix=args.prefix,
        replica_id=args.replica_id,
        initial_weight=args.weight,
        initial_mode=args.mode,
    )
    app = create_app(config, StaticLoader(models))
    server = uvicorn.Server(
        uvicorn_config(app, config, "127.0.0.1", args.port, log_level="warning", access_log=False)
    )
    server.run()


if __name__ == "__main__":
    main()

"""The servers the router benchmark compares, each started in a process group of its own.

kpigate is `kpigate serve` from this checkout's environment (its CLI only, so changes to its
internals slot in); the peers run from their own environments (bench_venvs.py): KServe V1 with a
custom Model on the router's booster call, MLServer's xgboost runtime with one worker, and a bare
Starlette endpoint as the HTTP ceiling. Every server gets OMP_NUM_THREADS=1: XGBoost's OpenMP
threads spinning on a busy 2-core machine make a single-row predict ~30x slower, and kpigate
already scores with one thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from bench_venvs import python_of
from wrk_load import CARD

HERE = Path(__file__).resolve().parent
MODEL_NAME = "fraud"


@dataclass
class Server:
    name: str
    path: str  # where requests go
    body: str  # one request's JSON; CARD is replaced by a fresh card id per request
    cmd: list[str]
    env: dict[str, str]
    log: Path
    port: int
    score: Callable[[Any], float] | None  # P(fraud) from an answer; None: the ceiling has none
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", **extra)


def kpigate(
    name: str,
    work: Path,
    tracking_uri: str,
    db_url: str,
    prefix: str,
    weight: float,
    body: dict[str, Any],
) -> Server:
    """`kpigate serve`: metrics on, the prediction log at db_url (passed in the environment, as
    in production), its own table prefix so no two routers share routing state."""
    cli = Path(sys.executable).with_name("kpigate")
    port = free_port()
    cmd = [
        str(cli),
        "serve",
        "--tracking-uri",
        tracking_uri,
        "--model-name",
        MODEL_NAME,
        "--port",
        str(port),
        "--weight",
        f"{weight:g}",
        "--table-prefix",
        prefix,
        "--log-level",
        "warning",
    ]
    env = _env(KPIGATE_DB_URL=db_url, KPIGATE_ADMIN_TOKEN="bench")
    return Server(
        name,
        "/predict",
        json.dumps(body),
        cmd,
        env,
        work / f"{name}.log",
        port,
        lambda answer: float(answer["score"]),
    )


def kserve_v1(name: str, work: Path, venv: Path, model_file: Path, row: list[float]) -> Server:
    port = free_port()
    cmd = [
        str(python_of(venv)),
        str(HERE / "peers" / "kserve_model.py"),
        str(model_file),
        str(port),
    ]
    body = json.dumps({"instances": [row]})
    return Server(
        name,
        f"/v1/models/{MODEL_NAME}:predict",
        body,
        cmd,
        _env(KSERVE_LOGLEVEL="WARNING"),
        work / f"{name}.log",
        port,
        lambda answer: float(answer["predictions"][0]),
    )


def mlserver(name: str, work: Path, venv: Path, model_file: Path, row: list[float]) -> Server:
    """MLServer's own xgboost runtime (mlserver_xgboost.XGBoostModel) on the same model file,
    one parallel worker, no access log (debug off), V2 protocol asking for predict_proba."""
    port = free_port()
    home = work / "mlserver"
    (home / MODEL_NAME).mkdir(parents=True, exist_ok=True)
    shutil.copy(model_file, home / MODEL_NAME / "model.json")
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": 1,
        "debug": False,
    }
    model = {
        "name": MODEL_NAME,
        "implementation": "mlserver_xgboost.XGBoostModel",
        "parameters": {"uri": "./model.json"},
    }
    (home / "settings.json").write_text(json.dumps(settings))
    (home / MODEL_NAME / "model-settings.json").write_text(json.dumps(model))
    body = json.dumps(
        {
            "inputs": [
                {"name": "input-0", "shape": [1, len(row)], "datatype": "FP32", "data": row}
            ],
            "outputs": [{"name": "predict_proba"}],
        }
    )
    cmd = [str(venv / "bin" / "mlserver"), "start", str(home)]
    return Server(
        name,
        f"/v2/models/{MODEL_NAME}/infer",
        body,
        cmd,
        _env(),
        work / f"{name}.log",
        port,
        lambda answer: float(answer["outputs"][0]["data"][-1]),
    )


def http_ceiling(name: str, work: Path, venv: Path) -> Server:
    port = free_port()
    cmd = [str(python_of(venv)), str(HERE / "peers" / "ceiling.py"), str(port)]
    return Server(
        name, "/predict", '{"card_id": "CARD"}', cmd, _env(), work / f"{name}.log", port, None
    )


# -- lifecycle --------------------------------------------------------------------------------


def start(server: Server) -> None:
    with server.log.open("wb") as log:
        server.proc = subprocess.Popen(
            server.cmd,
            env=server.env,
            cwd=server.log.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def log_tail(server: Server, lines: int = 6) -> str:
    try:
        text = server.log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def alive(server: Server) -> bool:
    return server.proc is not None and server.proc.poll() is None


def one_request(server: Server, card: str = "warmup") -> Any:
    """One answer's JSON; raises on a refused request or a non-2xx answer."""
    body = server.body.replace(CARD, card)
    answer = httpx.post(
        server.url + server.path,
        content=body,
        timeout=10,
        headers={"Content-Type": "application/json"},
    )
    answer.raise_for_status()
    return answer.json()


def wait_ready(server: Server, timeout_s: float) -> None:
    """Until the server answers a prediction; RuntimeError with its log's tail if it exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(server):
            code = server.proc.returncode if server.proc else None
            raise RuntimeError(f"exited with code {code}: {log_tail(server)}")
        try:
            one_request(server)
            return
        except (httpx.HTTPError, ValueError):
            time.sleep(0.3)
    raise RuntimeError(f"no answer within {timeout_s:g} s: {log_tail(server)}")


def stop(server: Server) -> None:
    """SIGTERM to the server's process group, SIGKILL after 20 s; then SIGKILL to whatever is
    left in the group (MLServer's worker process outlives a leader that died)."""
    proc = server.proc
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)

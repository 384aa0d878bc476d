"""Pytest plugin for router tests: real uvicorn servers on loopback, small in-process models.

Servers run in a thread of the test process so tests can inject models (slow, failing, fixed
scores) through the router's ModelLoader interface; the HTTP path, SQLite file and threads are
all real.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import uvicorn

from kpigate.fraud.models import MODEL_INPUTS
from kpigate.fraud.schema import FEATURES, LABEL
from kpigate.serve.app import create_app
from kpigate.serve.cli import uvicorn_config
from kpigate.serve.config import TOKEN_ENV, ServeConfig
from kpigate.serve.loader import ScoringModel, StaticLoader
from kpigate.serve.schema import ModelInputs
from kpigate.traffic import generate_transactions

ADMIN_TOKEN = "test-admin-token-4f1c"


@dataclass
class FixedModel:
    """Scores from a function of the feature frame; optionally slow or broken."""

    version: str
    threshold: float = 0.5
    score: Callable[[pd.DataFrame], np.ndarray[Any, Any]] = field(
        default=lambda frame: np.full(len(frame), 0.1)
    )
    delay_s: float = 0.0
    fail: bool = False
    calls: int = 0
    inputs: ModelInputs = MODEL_INPUTS

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray[Any, Any]:
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError(f"model {self.version} is broken on purpose")
        return self.score(frame)


def constant(value: float) -> Callable[[pd.DataFrame], np.ndarray[Any, Any]]:
    return lambda frame: np.full(len(frame), value)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RouterServer:
    """A router app on uvicorn in a background thread, on a free loopback port."""

    def __init__(self, config: ServeConfig, loader: Any) -> None:
        self.config = config
        self.app = create_app(config, loader)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn_config(self.app, config, "127.0.0.1", self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self._run, name="uvicorn-test", daemon=True)
        self.exit_code: int | str | None = None

    def _run(self) -> None:
        try:
            self.server.run()
        except SystemExit as exc:  # uvicorn exits 3 when the lifespan (model loading) fails
            self.exit_code = exc.code

    @property
    def core(self) -> Any:
        return self.app.state.core

    def start(self) -> RouterServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"router did not start on {self.url} (exit {self.exit_code}; see log above)"
                )
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, timeout=10, headers=headers)

    def admin(self) -> httpx.Client:
        return self.client(ADMIN_TOKEN)


def transactions(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Request bodies (no label) from the traffic generator."""
    out = []
    for tx in generate_transactions(n, seed):
        tx.pop(LABEL)
        out.append(tx)
    return out


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` in a /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@pytest.fixture(scope="session", autouse=False)
def admin_token() -> Iterator[str]:
    old = os.environ.get(TOKEN_ENV)
    os.environ[TOKEN_ENV] = ADMIN_TOKEN
    yield ADMIN_TOKEN
    if old is None:
        os.environ.pop(TOKEN_ENV, None)
    else:
        os.environ[TOKEN_ENV] = old


@pytest.fixture
def start_router(tmp_path: Path, admin_token: str) -> Iterator[Callable[..., RouterServer]]:
    """Start routers on a fresh SQLite file (shared by the routers of one test, so a restart
    can be tested); all are stopped at teardown."""
    started: list[RouterServer] = []

    def start(models: Mapping[str, ScoringModel] | None = None, **overrides: Any) -> RouterServer:
        if models is None:
            models = {"champion": FixedModel("1"), "candidate": FixedModel("2")}
        overrides.setdefault("db_url", f"sqlite:///{tmp_path / 'router.db'}")
        config = replace(ServeConfig(), **overrides)
        server = RouterServer(config, StaticLoader(models)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def shared_router(
    tmp_path_factory: pytest.TempPathFactory, admin_token: str
) -> Iterator[RouterServer]:
    """One canary router at 30% for tests that only read: baseline v1 scores 0.1, candidate v2
    scores 0.9, so the answer shows which arm served."""
    db = tmp_path_factory.mktemp("shared-router") / "router.db"
    models = {
        "champion": FixedModel("1", score=constant(0.1)),
        "candidate": FixedModel("2", score=constant(0.9)),
    }
    config = ServeConfig(db_url=f"sqlite:///{db}", initial_weight=30.0, initial_mode="canary")
    server = RouterServer(config, StaticLoader(models)).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def training_frame() -> tuple[pd.DataFrame, np.ndarray[Any, Any]]:
    """3000 generated rows as model input (categoricals as codes) and labels."""
    from kpigate.fraud.models import instance_schema
    from kpigate.serve.instances import InstanceParser

    parser = InstanceParser(instance_schema())
    rows, labels = [], []
    for tx in generate_transactions(3000, seed=7):
        labels.append(tx.pop(LABEL))
        rows.append(parser.parse(tx).row)
    return pd.DataFrame(rows, columns=list(FEATURES)), np.asarray(labels)


POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REQUIRE_POSTGRES_ENV = "KPIGATE_REQUIRE_POSTGRES"


def postgres_or_skip() -> str:
    """The test PostgreSQL URL; skips when it is unreachable unless KPIGATE_REQUIRE_POSTGRES=1."""
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:
        message = (
            f"PostgreSQL not reachable at {POSTGRES_URL} ({type(exc).__name__}); start it "
            f"(trust auth, user postgres, database test) or unset {REQUIRE_POSTGRES_ENV}"
        )
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(message)
        pytest.skip(message)
    finally:
        engine.dispose()
    return POSTGRES_URL


@dataclass(frozen=True)
class Database:
    url: str | None  # None: the router's SQLite file under tmp_path
    prefix: str


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> Iterator[Database]:
    """The prediction log on a SQLite file and on PostgreSQL (fresh table prefix per test,
    dropped afterwards)."""
    import uuid

    prefix = f"t{uuid.uuid4().hex[:10]}_"
    if request.param == "sqlite":
        yield Database(None, prefix)
        return
    url = postgres_or_skip()
    yield Database(url, prefix)
    from kpigate.serve.predlog import Tables, make_engine

    engine = make_engine(url)
    Tables(prefix).drop(engine)
    engine.dispose()

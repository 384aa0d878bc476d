"""Pytest plugin: fraud data, the trained baseline/candidate, and one real `mlflow server`.

Everything here is session-scoped: a cold `mlflow server` takes 6-25 s to boot on this machine,
and training both models takes about a second, so every test shares one of each.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import pytest

from kpigate.fraud.data import generate
from kpigate.fraud.models import (
    BASELINE_TRAIN_DRIFT,
    CANDIDATE_TRAIN_DRIFT,
    FraudModel,
    train_baseline,
    train_candidate,
)
from kpigate.registry.base import CANDIDATE, CHAMPION, ModelVersionRef
from kpigate.registry.server import MlflowServer

TRAIN_ROWS = 40_000
HOLDOUT_ROWS = 200_000
HOLDOUT_DRIFT = 0.5  # the traffic the candidate is rolled out into
REGISTERED_NAME = "kpigate-fraud"


@dataclass(frozen=True)
class FraudFrames:
    baseline_train: pd.DataFrame  # drift 0: what the production model learned from
    candidate_train: pd.DataFrame  # drifted: recent traffic the challenger learned from
    holdout: pd.DataFrame  # drifted, unseen by both: where they are compared
    holdout_undrifted: pd.DataFrame  # the baseline's own world, to show that drift hurts it


@dataclass(frozen=True)
class TrainedModels:
    baseline: FraudModel
    candidate: FraudModel


@dataclass(frozen=True)
class RegisteredModels:
    tracking_uri: str
    name: str
    champion: ModelVersionRef
    candidate: ModelVersionRef
    models: TrainedModels


@pytest.fixture(scope="session")
def mlflow_server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real `mlflow server` (SQLite store, proxied local artifacts) in its own process group,
    booting in the background; stopped, group and all, at the end of the session."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start(wait=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_process: MlflowServer) -> str:
    """Tracking URI of the session's MLflow server, once it answers /health."""
    mlflow_server_process.wait_healthy()
    return mlflow_server_process.tracking_uri


@pytest.fixture(scope="session")
def fraud_frames() -> FraudFrames:
    return FraudFrames(
        baseline_train=generate(TRAIN_ROWS, seed=1, drift=BASELINE_TRAIN_DRIFT),
        candidate_train=generate(TRAIN_ROWS, seed=2, drift=CANDIDATE_TRAIN_DRIFT),
        holdout=generate(HOLDOUT_ROWS, seed=3, drift=HOLDOUT_DRIFT),
        holdout_undrifted=generate(HOLDOUT_ROWS, seed=3, drift=0.0),
    )


@pytest.fixture(scope="session")
def trained_models(fraud_frames: FraudFrames) -> TrainedModels:
    return TrainedModels(
        baseline=train_baseline(fraud_frames.baseline_train, seed=0),
        candidate=train_candidate(fraud_frames.candidate_train, seed=0),
    )


@pytest.fixture(scope="session")
def registered_models(
    mlflow_server_process: MlflowServer,
    trained_models: TrainedModels,
    fraud_frames: FraudFrames,
    mlflow_server: str,
) -> RegisteredModels:
    """Baseline registered as version 1 with alias champion, candidate as version 2 with alias
    candidate, both with offline metrics on the drifted holdout."""
    # Parameter order matters: the server boots while the models train, then we wait for it.
    from kpigate.fraud.registration import register_model

    # A 50k slice is plenty for offline metrics; scoring all 200k rows again buys nothing.
    evaluation = fraud_frames.holdout.iloc[:50_000]
    champion = register_model(
        trained_models.baseline,
        tracking_uri=mlflow_server,
        eval_frame=evaluation,
        name=REGISTERED_NAME,
        alias=CHAMPION,
        train_info={"rows": TRAIN_ROWS, "drift": BASELINE_TRAIN_DRIFT, "seed": 1},
    )
    candidate = register_model(
        trained_models.candidate,
        tracking_uri=mlflow_server,
        eval_frame=evaluation,
        name=REGISTERED_NAME,
        alias=CANDIDATE,
        train_info={"rows": TRAIN_ROWS, "drift": CANDIDATE_TRAIN_DRIFT, "seed": 2},
    )
    return RegisteredModels(
        tracking_uri=mlflow_server,
        name=REGISTERED_NAME,
        champion=champion,
        candidate=candidate,
        models=trained_models,
    )

"""The router loads real XGBoost and LightGBM versions from an MLflow registry by alias."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from kpigate.serve.config import ServeConfig
from kpigate.serve.loader import (
    AliasNotFoundError,
    MlflowAliasLoader,
    ModelLoadError,
    fraud_probability,
)
from tests.serve_fixtures import RouterServer, transactions


def signed_like_the_demo(x: pd.DataFrame) -> dict[str, Any]:
    """log_model arguments: the frame's signature and the demo's vocabularies."""
    import mlflow

    from kpigate.fraud.models import MODEL_INPUTS
    from kpigate.serve.schema import VOCABULARIES_KEY

    vocab = {k: list(v) for k, v in MODEL_INPUTS.vocabularies.items()}
    return {
        "signature": mlflow.models.infer_signature(x.head(100)),
        "metadata": {VOCABULARIES_KEY: vocab},
    }


@pytest.fixture(scope="module")
def registry(
    tmp_path_factory: pytest.TempPathFactory,
    training_frame: tuple[pd.DataFrame, np.ndarray[Any, Any]],
) -> Iterator[str]:
    """A local SQLite-backed registry: model 'fraud' v1 = XGBoost (champion), v2 = LightGBM
    (candidate, threshold tag 0.3), both with the demo's signature and vocabularies."""
    import lightgbm
    import mlflow
    import xgboost

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp = mlflow.create_experiment("router-tests", artifact_location=(root / "art").as_uri())
    x, y = training_frame
    xgb = xgboost.XGBClassifier(n_estimators=30, max_depth=3).fit(x, y)
    lgb = lightgbm.LGBMClassifier(n_estimators=30, verbose=-1).fit(x, y)
    client = mlflow.MlflowClient()
    signed = signed_like_the_demo(x)
    with mlflow.start_run(experiment_id=exp):
        mlflow.xgboost.log_model(xgb, name="model", registered_model_name="fraud", **signed)
    with mlflow.start_run(experiment_id=exp):
        mlflow.log_param("threshold", 0.3)
        mlflow.lightgbm.log_model(lgb, name="model", registered_model_name="fraud", **signed)
    client.set_registered_model_alias("fraud", "champion", "1")
    client.set_registered_model_alias("fraud", "candidate", "2")
    client.set_model_version_tag("fraud", "1", "threshold", "0.4")
    yield uri
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None restores the default


def test_loader_resolves_aliases_and_thresholds(
    registry: str, training_frame: tuple[pd.DataFrame, np.ndarray[Any, Any]]
) -> None:
    loader = MlflowAliasLoader("fraud", registry)
    champion, candidate = loader.load("champion"), loader.load("candidate")
    assert (champion.version, champion.threshold) == ("1", 0.4)
    assert (candidate.version, candidate.threshold) == ("2", 0.3)
    x, _ = training_frame
    for model in (champion, candidate):
        scores = fraud_probability(model, x.head(50))
        exact = model.estimator.predict_proba(x.head(50))[:, 1]  # type: ignore[attr-defined]
        np.testing.assert_allclose(scores, exact, rtol=1e-6)


def test_missing_alias_or_model_is_a_clear_error(registry: str) -> None:
    with pytest.raises(AliasNotFoundError, match=r"fraud@staging.*set_registered_model_alias"):
        MlflowAliasLoader("fraud", registry).load("staging")
    with pytest.raises(ModelLoadError, match="nosuchmodel@champion"):
        MlflowAliasLoader("nosuchmodel", registry).load("champion")


def test_router_serves_registered_models(registry: str, tmp_path: Path, admin_token: str) -> None:
    config = ServeConfig(
        model_name="fraud", tracking_uri=registry, db_url=f"sqlite:///{tmp_path / 'p.db'}",
        initial_weight=50.0,
    )  # fmt: skip
    server = RouterServer(config, MlflowAliasLoader("fraud", registry)).start()
    try:
        with server.client() as client:
            answers = client.post("/predict", json={"instances": transactions(200, seed=31)})
            versions = {(p["arm"], p["model_version"]) for p in answers.json()["predictions"]}
    finally:
        server.stop()
    assert versions == {("baseline", "1"), ("candidate", "2")}


def test_router_refuses_to_start_without_a_champion(
    start_router: Callable[..., RouterServer], tmp_path: Path, registry: str
) -> None:
    config = ServeConfig(
        model_name="absent", tracking_uri=registry, db_url=f"sqlite:///{tmp_path / 'p.db'}"
    )
    with pytest.raises(RuntimeError, match="did not start"):
        RouterServer(config, MlflowAliasLoader("absent", registry)).start()

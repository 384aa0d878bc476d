"""Log the fraud models to MLflow as versions of one registered model, and load them back."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any, Final

import mlflow
import pandas as pd

from kpigate.fraud.data import model_input
from kpigate.fraud.models import MODEL_INPUTS, Flavor, FraudModel
from kpigate.registry.base import FLAVOR_TAG, THRESHOLD_TAG, ModelVersionRef, RegistryError
from kpigate.registry.mlflow import MlflowRegistry, probe
from kpigate.serve.schema import VOCABULARIES_KEY

MODEL_NAME: Final = "kpigate-fraud"
EXPERIMENT: Final = "kpigate-fraud"
ROLE_TAG: Final = "kpigate.role"
_FLAVORS: Final[dict[str, Flavor]] = {"xgboost": "xgboost", "lightgbm": "lightgbm"}


@contextlib.contextmanager
def _using(tracking_uri: str) -> Iterator[None]:
    # mlflow's logging API is fluent (module-global URI and active run). Restore the caller's
    # settings afterwards so registering does not silently redirect their other runs.
    old_tracking, old_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old_tracking)
        mlflow.set_registry_uri(old_registry)


def register_model(
    model: FraudModel,
    *,
    tracking_uri: str,
    eval_frame: pd.DataFrame,
    name: str = MODEL_NAME,
    alias: str | None = None,
    experiment: str = EXPERIMENT,
    train_info: Mapping[str, Any] | None = None,
) -> ModelVersionRef:
    """Log `model` in a run with offline metrics on `eval_frame`, register it as a new version
    of `name`, tag flavor/threshold/role on the version, and point `alias` at it.

    The version tags are what the router reads, so serving needs no training code or run lookups.
    """
    probe(tracking_uri)
    features = model_input(eval_frame)
    scores = model.predict_proba(features)
    metrics = model.evaluate(eval_frame)
    finite = {k: v for k, v in metrics.items() if v == v}  # MLflow rejects NaN
    from mlflow.models import infer_signature

    signature = infer_signature(features.head(100), scores[:100])
    example = features.head(3)
    with _using(tracking_uri):
        mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name=f"{model.role}-{model.flavor}") as run:
            mlflow.log_params({k: str(v) for k, v in model.params.items()})
            mlflow.log_params(
                {"threshold": model.threshold, "flavor": model.flavor, "role": model.role}
            )
            if train_info:
                mlflow.log_params({f"train_{k}": str(v) for k, v in train_info.items()})
            mlflow.log_metrics(finite)
            mlflow.set_tags({FLAVOR_TAG: model.flavor, THRESHOLD_TAG: str(model.threshold)})
            common: dict[str, Any] = {
                "name": "model",
                "signature": signature,
                "input_example": example,
                # The router validates requests by the signature and encodes the categoricals
                # with these vocabularies (kpigate/serve/schema.py).
                "metadata": {
                    VOCABULARIES_KEY: {k: list(v) for k, v in MODEL_INPUTS.vocabularies.items()}
                },
                "registered_model_name": name,
            }
            if model.flavor == "xgboost":
                info = mlflow.xgboost.log_model(model.estimator, model_format="ubj", **common)
            else:
                # skops, not pickle: loading a registered model must not run arbitrary code.
                info = mlflow.lightgbm.log_model(
                    model.estimator, serialization_format="skops", **common
                )
            mlflow.log_dict(metrics, "offline_metrics.json")
    registered = info.registered_model_version
    if registered is None:
        raise RegistryError(f"MLflow logged run {run.info.run_id} but registered no version")
    version = str(registered)
    registry = MlflowRegistry(tracking_uri, check=False)
    registry.set_tag(name, version, FLAVOR_TAG, model.flavor)
    registry.set_tag(name, version, THRESHOLD_TAG, repr(float(model.threshold)))
    registry.set_tag(name, version, ROLE_TAG, model.role)
    if alias:
        registry.set_alias(name, alias, version)
    return registry.resolve(name, version)


def load_model(
    ref: str, *, tracking_uri: str, name: str = MODEL_NAME, cache_dir: str | None = None
) -> FraudModel:
    """Load a registered version by alias ('champion', 'candidate') or number, as a FraudModel
    whose `version`, `threshold` and `flavor` come from the registry.

    Native boosters are loaded (not pyfunc): a single-row XGBoost score takes ~0.1 ms.
    """
    registry = MlflowRegistry(tracking_uri)
    mv = registry.resolve(name, ref)
    tag = mv.tags.get(FLAVOR_TAG, "")
    flavor = _FLAVORS.get(tag)
    if flavor is None:
        raise RegistryError(
            f"{name} v{mv.version} has no usable {FLAVOR_TAG} tag ({tag!r}); register it with "
            "kpigate.fraud.registration.register_model, or set the tag to xgboost or lightgbm"
        )
    try:
        threshold = float(mv.tags[THRESHOLD_TAG])
    except (KeyError, ValueError):
        raise RegistryError(
            f"{name} v{mv.version} lacks a numeric {THRESHOLD_TAG} tag; set it to the operating "
            "threshold (score >= threshold flags fraud)"
        ) from None
    with contextlib.ExitStack() as stack:
        dst = cache_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="kpigate-model-"))
        local = registry.download_model(name, mv.version, dst)
        if flavor == "xgboost":
            estimator = mlflow.xgboost.load_model(local)
        else:
            estimator = mlflow.lightgbm.load_model(local)
    return FraudModel(
        flavor=flavor,
        estimator=estimator,
        threshold=threshold,
        role=mv.tags.get(ROLE_TAG, "model"),
        name=name,
        version=mv.version,
        aliases=mv.aliases,
    )

"""The case study's two models: an XGBoost baseline and a recall-tuned LightGBM candidate.

Both are trained on model_input() frames, scored with their native boosters (no pandas or
sklearn on the hot path), and carry an operating threshold: score >= threshold means "flag as
fraud". Registration in MLflow, and loading a version back by alias, live in
kpigate.fraud.registration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from kpigate.fraud.data import model_input
from kpigate.fraud.metrics import offline_metrics
from kpigate.fraud.schema import CATEGORICAL, FEATURES, LABEL, REGIONS
from kpigate.serve.schema import InputColumn, InstanceSchema, ModelInputs, parse_segment

Flavor = Literal["xgboost", "lightgbm"]
FloatArray = npt.NDArray[np.float64]

# The baseline keeps the probability cut an unweighted classifier implies. The candidate is
# tuned toward recall twice over: positives weigh 3x in training and the cut sits lower.
BASELINE_THRESHOLD: Final = 0.5
CANDIDATE_THRESHOLD: Final = 0.3
CANDIDATE_POS_WEIGHT: Final = 3.0
# The paper's production baseline trained before the drift; its challenger on recent traffic.
BASELINE_TRAIN_DRIFT: Final = 0.0
CANDIDATE_TRAIN_DRIFT: Final = 0.5

# What the models take, as the router reads it from their MLflow signature and metadata: every
# feature a float32 column (model_input()), the categoricals as codes into their vocabularies.
MODEL_INPUTS: Final = ModelInputs(
    tuple(InputColumn(name, "float") for name in FEATURES),
    {name: tuple(vocab) for name, vocab in CATEGORICAL.items()},
)


def instance_schema() -> InstanceSchema:
    """The router's instance schema for these models with its default configuration (entity key
    card_id; segments region, payment_method, amount_band)."""
    from kpigate.serve.config import ENTITY_KEY, SEGMENTS

    return InstanceSchema.build(MODEL_INPUTS, ENTITY_KEY, [parse_segment(s) for s in SEGMENTS])


# Deliberately bad candidates for the rollback scenarios (see train_candidate).
BAD_CANDIDATES: Final[dict[str, dict[str, Any]]] = {
    "recall-drop": {"degrade": 0.5},
    "region-gap": {"blind_region": "eu", "blind_share": 0.7},
}

_XGB_PARAMS: Final[dict[str, Any]] = {
    "objective": "binary:logistic",
    "max_depth": 5,
    "learning_rate": 0.1,
    "tree_method": "hist",
    "n_jobs": 1,
}
_XGB_TREES: Final = 100
_LGB_PARAMS: Final[dict[str, Any]] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_child_samples": 20,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "n_jobs": 1,
    "verbose": -1,
    "deterministic": True,
    "force_row_wise": True,
}
_LGB_TREES: Final = 300


@dataclass
class FraudModel:
    """A trained classifier plus what serving needs: its flavor and operating threshold.

    The estimator is the sklearn-API wrapper (XGBClassifier / LGBMClassifier), which is what is
    logged to MLflow so any loader gets predict_proba; scoring goes to the native booster.
    """

    flavor: Flavor
    estimator: Any  # xgboost.XGBClassifier | lightgbm.LGBMClassifier
    threshold: float
    role: str = "model"
    params: dict[str, Any] = field(default_factory=dict)
    # Set when loaded from the registry (kpigate.fraud.registration.load_model).
    name: str | None = None
    version: str | None = None
    aliases: tuple[str, ...] = ()
    booster: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.flavor == "xgboost":
            self.booster = self.estimator.get_booster()
            # One request, one core: OpenMP threads only add wake-up latency to a 1-row predict.
            self.booster.set_param({"nthread": 1})
        else:
            self.booster = self.estimator.booster_

    @property
    def inputs(self) -> ModelInputs:
        return MODEL_INPUTS

    def predict_proba(self, features: pd.DataFrame | npt.ArrayLike) -> FloatArray:
        """Fraud scores in [0, 1], one per row of a model_input()-shaped frame or array."""
        return predict_scores(self.flavor, self.booster, features)

    def flag(self, features: pd.DataFrame | npt.ArrayLike) -> npt.NDArray[np.bool_]:
        return self.predict_proba(features) >= self.threshold

    def evaluate(self, frame: pd.DataFrame) -> dict[str, float]:
        """Offline KPIs on labelled transactions (a generate() frame)."""
        return offline_metrics(frame, self.predict_proba(model_input(frame)), self.threshold)


def as_matrix(features: pd.DataFrame | npt.ArrayLike) -> npt.NDArray[np.float32]:
    if isinstance(features, pd.DataFrame):
        if tuple(features.columns) == FEATURES:  # model_input() order: no reindexing copy
            return np.ascontiguousarray(features.to_numpy(dtype=np.float32))
        missing = [f for f in FEATURES if f not in features.columns]
        if missing:
            raise ValueError(
                f"model input lacks {', '.join(missing)}; build it with "
                "kpigate.fraud.data.model_input() or requests_to_model_input()"
            )
        features = features[list(FEATURES)].to_numpy(dtype=np.float32)
    matrix = np.asarray(features, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix.reshape(1, -1)
    if matrix.shape[1] != len(FEATURES):
        raise ValueError(f"model input has {matrix.shape[1]} columns, expected {len(FEATURES)}")
    return np.ascontiguousarray(matrix)


def predict_scores(
    flavor: Flavor, booster: Any, features: pd.DataFrame | npt.ArrayLike
) -> FloatArray:
    matrix = as_matrix(features)
    if flavor == "xgboost":
        # inplace_predict skips DMatrix construction and pandas dtype checks (~0.6 ms a call in
        # the sklearn wrapper), and is thread-safe.
        raw = booster.inplace_predict(matrix, validate_features=False)
    else:
        raw = booster.predict(matrix, num_threads=1)
    return np.asarray(raw, dtype=np.float64).reshape(-1)


def _xy(frame: pd.DataFrame) -> tuple[pd.DataFrame, npt.NDArray[np.float32]]:
    # A frame, not a matrix, so the boosters record feature names for anyone loading them.
    return model_input(frame), frame[LABEL].to_numpy(dtype=np.float32)


def train_baseline(frame: pd.DataFrame, *, seed: int = 0) -> FraudModel:
    """XGBoost, 100 trees, trained as the paper's production model was: on pre-drift data."""
    import xgboost as xgb

    x, y = _xy(frame)
    estimator = xgb.XGBClassifier(n_estimators=_XGB_TREES, random_state=seed, **_XGB_PARAMS)
    estimator.fit(x, y)
    return FraudModel(
        flavor="xgboost",
        estimator=estimator,
        threshold=BASELINE_THRESHOLD,
        role="baseline",
        params={**_XGB_PARAMS, "n_estimators": _XGB_TREES, "random_state": seed},
    )


def train_candidate(
    frame: pd.DataFrame,
    *,
    seed: int = 0,
    degrade: float = 0.0,
    blind_region: str | None = None,
    blind_share: float = 1.0,
    threshold: float = CANDIDATE_THRESHOLD,
    pos_weight: float = CANDIDATE_POS_WEIGHT,
) -> FraudModel:
    """LightGBM tuned toward recall (positive class weight, lower threshold).

    The knobs make deliberately bad candidates for the 'bad rollout' scenarios, each a failure
    seen in practice:
    - degrade in [0, 1): that share of fraud labels never reached the training set (a broken
      chargeback feed), so the model under-scores fraud everywhere: recall falls steeply once
      degrade passes ~0.25 (on the demo's drifted data, 40,000 rows: 0.4 about -3 points
      against the baseline, 0.5 about -5, 0.55 about -11).
    - blind_region (+ blind_share): that share of one region's fraud labels was lost, so the
      model learns the region is safe; its recall there drops while the overall numbers barely
      move, which only a per-segment gate catches.
    BAD_CANDIDATES holds settings for both scenarios.
    """
    import lightgbm as lgb

    if not 0.0 <= degrade < 1.0:
        raise ValueError(f"degrade must be in [0, 1), got {degrade!r}")
    if blind_region is not None and blind_region not in REGIONS:
        raise ValueError(f"blind_region {blind_region!r} is not one of {', '.join(REGIONS)}")
    x, y = _xy(frame)
    y = y.copy()
    rng = np.random.default_rng([seed, 7])
    if degrade > 0.0:
        y[(y == 1) & (rng.random(len(y)) < degrade)] = 0.0
    if blind_region is not None:
        in_region = frame["region"].astype(str).to_numpy() == blind_region
        y[(y == 1) & in_region & (rng.random(len(y)) < blind_share)] = 0.0
    params = {**_LGB_PARAMS, "scale_pos_weight": pos_weight, "random_state": seed}
    estimator = lgb.LGBMClassifier(n_estimators=_LGB_TREES, **params)
    estimator.fit(x, y)
    role = "candidate" if degrade == 0.0 and blind_region is None else "bad-candidate"
    return FraudModel(
        flavor="lightgbm",
        estimator=estimator,
        threshold=threshold,
        role=role,
        params={
            **params,
            "n_estimators": _LGB_TREES,
            "degrade": degrade,
            "blind_region": blind_region or "",
            "blind_share": blind_share if blind_region else 0.0,
        },
    )

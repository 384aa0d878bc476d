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
from kpigate.fraud.schema import FEATURES, LABEL, REGIONS

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

_XGB_PARAMS: Final[dict[str, Any]] = {
    "objective": "binary:logistic",
    "eval_metric": "logloss",
    "max_depth": 5,
    "eta": 0.1,
    "tree_method": "hist",
    "nthread": 1,
}
_XGB_TREES: Final = 100
_LGB_PARAMS: Final[dict[str, Any]] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_child_samples": 20,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "feature_fraction": 0.8,
    "num_threads": 1,
    "verbose": -1,
    "deterministic": True,
    "force_row_wise": True,
}
_LGB_TREES: Final = 300


@dataclass
class FraudModel:
    """A trained booster plus what serving needs: its flavor and operating threshold."""

    flavor: Flavor
    booster: Any  # xgboost.Booster | lightgbm.Booster; both are untyped enough to not matter
    threshold: float
    role: str = "model"
    params: dict[str, Any] = field(default_factory=dict)
    # Set when loaded from the registry (kpigate.fraud.registration.load_model).
    name: str | None = None
    version: str | None = None
    aliases: tuple[str, ...] = ()

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
        # inplace_predict skips DMatrix construction: ~10x faster for one row, and thread-safe.
        raw = booster.inplace_predict(matrix, validate_features=False)
    else:
        raw = booster.predict(matrix, num_threads=1)
    return np.asarray(raw, dtype=np.float64).reshape(-1)


def _xy(frame: pd.DataFrame) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    return as_matrix(model_input(frame)), frame[LABEL].to_numpy(dtype=np.float32)


def train_baseline(frame: pd.DataFrame, *, seed: int = 0) -> FraudModel:
    """XGBoost, 100 trees, trained as the paper's production model was: on pre-drift data."""
    import xgboost as xgb

    x, y = _xy(frame)
    params = {**_XGB_PARAMS, "seed": seed}
    booster = xgb.train(params, xgb.DMatrix(x, label=y, feature_names=list(FEATURES)), _XGB_TREES)
    return FraudModel(
        flavor="xgboost",
        booster=booster,
        threshold=BASELINE_THRESHOLD,
        role="baseline",
        params={**params, "n_estimators": _XGB_TREES},
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
      chargeback feed), so the model under-scores fraud everywhere; 0.6 costs about 5-6 recall
      points against the good candidate, 0.85 about 10 against the baseline.
    - blind_region: fraud labels from that region were lost, so the model learns the region is
      safe and its recall there collapses while the overall numbers look nearly fine.
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
    params = {**_LGB_PARAMS, "scale_pos_weight": pos_weight, "seed": seed}
    dataset = lgb.Dataset(x, label=y, feature_name=list(FEATURES), free_raw_data=True)
    booster = lgb.train(params, dataset, num_boost_round=_LGB_TREES)
    role = "candidate" if degrade == 0.0 and blind_region is None else "bad-candidate"
    return FraudModel(
        flavor="lightgbm",
        booster=booster,
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

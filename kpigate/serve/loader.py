"""How the router gets its two models: a small loader interface and an MLflow alias loader.

Any registered version with a column-based input signature can be served: XGBoost and LightGBM
binary classifiers are scored by their native boosters on numpy rows (the fast path of
kpigate/serve/scoring.py), scikit-learn classifiers by predict_proba, and any other model through
MLflow's pyfunc predict on a DataFrame typed by its signature.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from kpigate.serve.schema import VOCABULARIES_KEY, ModelInputs, SchemaError

# Scores a float matrix (rows in the model's column order) without pandas.
NativeScorer = Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]]


@runtime_checkable
class ScoringModel(Protocol):
    """A loaded model version. predict_proba takes a DataFrame of its `inputs` columns
    (vocabulary columns as integer codes) and returns the score per row (P(positive)), either as
    shape (n,) or as sklearn's (n, 2)."""

    @property
    def version(self) -> str: ...

    @property
    def threshold(self) -> float: ...

    @property
    def inputs(self) -> ModelInputs: ...

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray[Any, Any]: ...


class ModelLoader(Protocol):
    def load(self, alias: str) -> ScoringModel: ...


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says which one, from where, and what to check."""


class AliasNotFoundError(ModelLoadError):
    """The registered model has no version under that alias (normal between rollouts)."""


class StaticLoader:
    """A ModelLoader over in-process models by alias (tests, benchmarks, embedded use); a
    missing alias fails like MLflow's."""

    def __init__(self, models: Mapping[str, ScoringModel]) -> None:
        self.models = models

    def load(self, alias: str) -> ScoringModel:
        if alias not in self.models:
            raise AliasNotFoundError(f"no model under alias '{alias}' in this loader")
        return self.models[alias]


def fraud_probability(model: ScoringModel, frame: pd.DataFrame) -> np.ndarray[Any, Any]:
    """The score (P(positive)) as a 1-d float array whatever shape the model returns."""
    proba = np.asarray(model.predict_proba(frame), dtype=np.float64)
    if proba.ndim == 2:
        proba = proba[:, -1]
    if proba.shape != (len(frame),):
        raise ValueError(
            f"model version {model.version} returned scores of shape {proba.shape} "
            f"for {len(frame)} rows; expected ({len(frame)},) or ({len(frame)}, 2)"
        )
    return proba


def native_scorer(model: ScoringModel) -> NativeScorer | None:
    """The model's booster on a numpy matrix, when it has one (see LoadedModel)."""
    return model.native if isinstance(model, LoadedModel) else None


@dataclass
class LoadedModel:
    """A ScoringModel around an estimator with sklearn's predict_proba (or predict, for a
    regressor).

    `threads` caps the model's own thread pool: the router gets its parallelism from batching,
    and OpenMP threads spinning on a busy 2-core machine made one XGBoost predict take 9 ms
    instead of 0.3 ms.
    """

    estimator: Any
    version: str
    inputs: ModelInputs
    threshold: float = 0.5
    threads: int | None = 1
    native: NativeScorer | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.threads is not None and hasattr(self.estimator, "set_params"):
            # An estimator without n_jobs keeps its own threading.
            with contextlib.suppress(ValueError, TypeError):
                self.estimator.set_params(n_jobs=self.threads)
        self._columns = [c.name for c in self.inputs.columns]
        self.native = _xgb_native(self.estimator) or _lgb_native(self.estimator)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray[Any, Any]:
        if list(frame.columns) != self._columns:  # selecting columns costs 0.2 ms in pandas 3
            frame = frame[self._columns]
        if self.native is not None:
            return self.native(frame.to_numpy(np.float64))
        if hasattr(self.estimator, "predict_proba"):
            return np.asarray(self.estimator.predict_proba(frame))
        return np.asarray(self.estimator.predict(frame))


@dataclass
class PyfuncModel:
    """A ScoringModel around an MLflow pyfunc model: its predict output is the score (log a
    classifier with `pyfunc_predict_fn="predict_proba"` so that it returns probabilities)."""

    pyfunc: Any
    version: str
    inputs: ModelInputs
    threshold: float = 0.5

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray[Any, Any]:
        out = self.pyfunc.predict(frame)
        if isinstance(out, pd.DataFrame | pd.Series):
            out = out.to_numpy()
        return np.asarray(out, dtype=np.float64)


def _xgb_native(estimator: Any) -> NativeScorer | None:
    """XGBoost binary:logistic: Booster.inplace_predict gives predict_proba(frame)[:, 1] without
    the DMatrix and pandas dtype handling that cost about 0.6 ms per call in xgboost 3.2."""
    name = type(estimator).__name__
    if name == "XGBClassifier":
        if getattr(estimator, "objective", None) != "binary:logistic":
            return None
        try:
            booster = estimator.get_booster()
        except Exception:
            return None
    elif name == "Booster" and type(estimator).__module__.startswith("xgboost"):
        booster = estimator
        try:
            objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
        except Exception:
            return None
        if objective != "binary:logistic":
            return None
    else:
        return None

    def score(matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        rows = matrix.astype(np.float32, copy=False)
        return np.asarray(booster.inplace_predict(rows, validate_features=False))

    return _xgb_dense(booster, score) or score


# A C-contiguous float32 matrix's __array_interface__ as JSON: data pointer, rows, columns.
_F32_INTERFACE = (
    b'{"data": [%d, true], "shape": [%d, %d], "strides": null, "typestr": "<f4", "version": 3}'
)


def _xgb_dense(booster: Any, reference: NativeScorer) -> NativeScorer | None:
    """The C call under Booster.inplace_predict (XGBoosterPredictFromDense), its JSON config
    built once: inplace_predict rebuilds it and the input's array interface with json.dumps and
    probes the input's type on every call, 100 us of a 1 ms answer for one row (xgboost 3.2)
    where this takes 40 us. It reaches into xgboost.core, so it is used only when it gives
    exactly inplace_predict's scores on test rows at load; otherwise, None (inplace_predict)."""
    try:
        import ctypes

        from xgboost.core import _LIB, _check_call, make_jcargs

        c_bst_ulong = ctypes.c_uint64  # xgboost's bst_ulong

        config = make_jcargs(
            type=0, training=False, iteration_begin=0, iteration_end=0, missing=np.nan,
            strict_shape=False, cache_id=0,
        )  # fmt: skip
        predict = _LIB.XGBoosterPredictFromDense
        no_proxy = ctypes.c_void_p()
    except Exception:
        return None

    def score(matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        rows = np.ascontiguousarray(matrix, dtype=np.float32)
        if rows.ndim != 2:
            raise ValueError(f"expected a 2-d matrix of rows, got shape {rows.shape}")
        interface = _F32_INTERFACE % (rows.ctypes.data, rows.shape[0], rows.shape[1])
        shape = ctypes.POINTER(c_bst_ulong)()
        dims = c_bst_ulong()
        out = ctypes.POINTER(ctypes.c_float)()
        _check_call(predict(booster.handle, interface, config, no_proxy, ctypes.byref(shape),
                            ctypes.byref(dims), ctypes.byref(out)))  # fmt: skip
        size = 1
        for i in range(dims.value):
            size *= int(shape[i])
        # The buffer is the booster's (per thread, reused by its next predict): copy it now.
        return np.ctypeslib.as_array(out, (size,)).copy()

    try:
        features = int(booster.num_features())
        probe = np.random.default_rng(0).normal(size=(17, features)).astype(np.float32)
        probe[3, 0] = np.nan  # a missing value, as an absent optional field gives
        for rows in (probe, probe[:1]):
            if not np.array_equal(score(rows), np.asarray(reference(rows)).reshape(-1)):
                return None
    except Exception:
        return None
    return score


def _lgb_native(estimator: Any) -> NativeScorer | None:
    """LightGBM binary: the Booster's predict on a float64 matrix gives predict_proba[:, 1] at a
    third of the cost for 64 rows (0.9 ms against 2.1 ms), 20x less for one: no pandas checks."""
    name = type(estimator).__name__
    if name == "LGBMClassifier":
        if getattr(estimator, "objective", None) not in ("binary", None):
            return None
        try:
            booster = estimator.booster_
        except Exception:
            return None
    elif name == "Booster" and type(estimator).__module__.startswith("lightgbm"):
        booster = estimator
    else:
        return None
    if booster.params.get("objective", "binary") != "binary":
        return None

    def score(matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        rows = matrix.astype(np.float64, copy=False)
        return np.asarray(booster.predict(rows, num_threads=1))

    return score


# Flavors loaded natively, in order; anything else with a python_function flavor is pyfunc.
_NATIVE = ("xgboost", "lightgbm", "sklearn")


def model_inputs(info: Any, where: str) -> ModelInputs:
    """The inputs a logged model declares (mlflow.models.ModelInfo: its signature's inputs and
    the vocabularies in its metadata); a model without a usable signature is refused."""
    signature = info.signature
    if signature is None or signature.inputs is None:
        raise ModelLoadError(
            f"{where} has no input signature, so its requests cannot be validated: log it "
            "with one (log_model(..., signature=mlflow.models.infer_signature(X_train)) or an "
            "input_example)"
        )
    metadata = info.metadata or {}
    vocab = metadata.get(VOCABULARIES_KEY) or {}
    if not isinstance(vocab, dict):
        raise ModelLoadError(f"{where}: metadata '{VOCABULARIES_KEY}' must map columns to lists")
    try:
        return ModelInputs.from_signature(signature.inputs, vocab, where)
    except SchemaError as exc:
        raise ModelLoadError(str(exc)) from exc


class MlflowAliasLoader:
    """Loads `models:/<name>@<alias>` (its native flavor when it has one, else pyfunc) with its
    input signature; the decision threshold comes from the version's tag `threshold` (then the
    run's param `threshold`, then 0.5)."""

    def __init__(self, model_name: str, tracking_uri: str | None = None) -> None:
        self.model_name = model_name
        self.tracking_uri = tracking_uri

    def load(self, alias: str) -> ScoringModel:
        import mlflow
        from mlflow.exceptions import MlflowException

        uri_text = self.tracking_uri or "(default)"
        where = f"model '{self.model_name}@{alias}' from tracking URI {uri_text}"
        if self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_registry_uri(self.tracking_uri)
        client = mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        try:
            mv = client.get_model_version_by_alias(self.model_name, alias)
        except MlflowException as exc:
            raise AliasNotFoundError(
                f"cannot resolve {where}: {exc.message}. Register a version and set the alias "
                f"(MlflowClient().set_registered_model_alias('{self.model_name}', '{alias}', v))."
            ) from exc
        except Exception as exc:
            raise ModelLoadError(
                f"cannot reach the registry for {where}: {exc}. Check --tracking-uri."
            ) from exc
        uri = f"models:/{self.model_name}/{mv.version}"
        where = f"{where} (version {mv.version})"
        try:
            info = mlflow.models.get_model_info(uri)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot read {where}, {uri}: {type(exc).__name__}: {exc}"
            ) from exc
        inputs = model_inputs(info, where)
        threshold = _threshold(client, mv)
        version = str(mv.version)
        try:
            for flavor in _NATIVE:
                if flavor in info.flavors:
                    module = __import__(f"mlflow.{flavor}", fromlist=["load_model"])
                    estimator = module.load_model(uri)
                    if flavor != "sklearn" or hasattr(estimator, "predict_proba"):
                        return LoadedModel(estimator, version, inputs, threshold)
            if "python_function" in info.flavors:
                pyfunc = mlflow.pyfunc.load_model(uri)
                return PyfuncModel(pyfunc, version, inputs, threshold)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load {where}, {uri}: {type(exc).__name__}: {exc}"
            ) from exc
        raise ModelLoadError(
            f"{where} has flavors {sorted(info.flavors)}; the router needs one of "
            f"{list(_NATIVE)} or python_function"
        )


def _threshold(client: Any, mv: Any) -> float:
    raw = (mv.tags or {}).get("threshold")
    if raw is None and mv.run_id:
        try:
            raw = client.get_run(mv.run_id).data.params.get("threshold")
        except Exception:
            raw = None
    try:
        return float(raw) if raw is not None else 0.5
    except ValueError as exc:
        raise ModelLoadError(
            f"model '{mv.name}' version {mv.version} has threshold {raw!r}, not a number"
        ) from exc

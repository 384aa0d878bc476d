"""The fast path (numpy rows straight to the booster, a lone request scored without a thread hop)
gives the scores of the pyfunc path for the demo's XGBoost and LightGBM versions.

The versions are the demo's, registered by kpigate.fraud.registration with their signature and
vocabularies on the session's MLflow server; requests carry the categoricals as strings, which
the router encodes with the vocabularies from the version's MLflow metadata. The reference is
the model MLflow's pyfunc loader gives back (mlflow/pyfunc/__init__.py: load_model,
PyFuncModel.get_raw_model; mlflow/xgboost/__init__.py and mlflow/lightgbm/__init__.py: the
_XGBModelWrapper / _LGBModelWrapper around the logged estimator) scoring a frame encoded the
training way (kpigate.fraud.data.model_input).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pandas as pd
import pytest

from kpigate.fraud.data import model_input
from kpigate.serve.config import ENTITY_KEY
from kpigate.serve.instances import InstanceParser
from kpigate.serve.loader import LoadedModel, MlflowAliasLoader
from kpigate.serve.schema import InstanceSchema, parse_segment
from kpigate.serve.scoring import Batcher
from tests.mlflow_fixtures import RegisteredModels
from tests.serve_fixtures import transactions

SEGMENTS = [parse_segment(s) for s in ("region", "payment_method", "amount_band=amount:50,500")]


def _score(batcher: Batcher, rows: list[tuple[Any, ...]]) -> list[float]:
    async def run() -> list[float]:
        return list(await asyncio.gather(*(batcher.score(row) for row in rows)))

    return asyncio.run(run())


@pytest.mark.parametrize(("alias", "flavor"), [("champion", "xgboost"), ("candidate", "lightgbm")])
def test_fast_path_scores_equal_the_pyfunc_path(
    registered_models: RegisteredModels, alias: str, flavor: str
) -> None:
    import mlflow

    from kpigate.fraud.models import instance_schema

    model = MlflowAliasLoader(registered_models.name, registered_models.tracking_uri).load(alias)
    assert isinstance(model, LoadedModel) and model.native is not None
    schema = InstanceSchema.build(model.inputs, ENTITY_KEY, SEGMENTS)
    assert schema.fields == instance_schema().fields  # the logged signature is the demo's
    requests = transactions(400, seed=11)
    rows = [InstanceParser(schema).parse(tx).row for tx in requests]

    version = registered_models.champion if alias == "champion" else registered_models.candidate
    pyfunc = mlflow.pyfunc.load_model(f"models:/{registered_models.name}/{version.version}")
    assert flavor in type(pyfunc.get_raw_model()).__module__
    encoded = model_input(pd.DataFrame(requests))  # the training side's categorical codes
    reference = pyfunc.get_raw_model().predict_proba(encoded)[:, 1]

    fast = Batcher(model, alias, schema)
    lone = [_score(fast, [row])[0] for row in rows[:20]]  # one at a time: inline
    assert fast.inline_batches == 20 and not fast._executor._threads  # no thread ever started
    batched = _score(fast, rows)  # 400 at once: micro-batches in the worker thread
    assert fast.batches > fast.inline_batches
    np.testing.assert_allclose(lone, reference[:20], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(batched, reference, rtol=1e-5, atol=1e-7)

    # The router's DataFrame path (what a model without a booster takes) agrees too.
    slow_model = LoadedModel(model.estimator, model.version, model.inputs, model.threshold)
    slow_model.native = None
    slow = Batcher(slow_model, alias, schema)
    assert slow.inline_rows == 0
    np.testing.assert_allclose(_score(slow, rows), reference, rtol=1e-5, atol=1e-7)
    for batcher in (fast, slow):
        batcher.close()


def test_a_slow_inline_booster_goes_back_to_the_thread() -> None:
    """A booster slower inline than INLINE_MAX_S every time (a big model) stops holding the
    event loop after SLOW_STREAK predicts."""
    import time

    from kpigate.fraud.models import MODEL_INPUTS, instance_schema
    from kpigate.serve.scoring import SLOW_STREAK

    model = LoadedModel(object(), "1", MODEL_INPUTS)

    def slow_native(matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        time.sleep(0.005)
        return np.full(len(matrix), 0.2)

    model.native = slow_native
    batcher = Batcher(model, "baseline", instance_schema())
    row = InstanceParser(instance_schema()).parse(transactions(1)[0]).row
    scores = [_score(batcher, [row])[0] for _ in range(SLOW_STREAK + 2)]
    assert scores == [0.2] * (SLOW_STREAK + 2)
    assert batcher.inline_batches == SLOW_STREAK and batcher.batches == SLOW_STREAK + 2
    batcher.close()


def test_the_xgboost_dense_call_equals_inplace_predict_or_is_not_used(
    registered_models: RegisteredModels,
) -> None:
    """The champion scores through XGBoosterPredictFromDense with its config built once, which
    gives exactly Booster.inplace_predict's scores; a call that disagrees at load is not used."""
    from kpigate.serve.loader import _xgb_dense

    model = MlflowAliasLoader(registered_models.name, registered_models.tracking_uri).load(
        "champion"
    )
    assert isinstance(model, LoadedModel) and model.native is not None
    assert "_xgb_dense" in model.native.__qualname__
    booster = model.estimator.get_booster()
    schema = InstanceSchema.build(model.inputs, ENTITY_KEY, SEGMENTS)
    rows = np.asarray(
        [InstanceParser(schema).parse(tx).row for tx in transactions(300, seed=12)], np.float32
    )
    for matrix in (rows, rows[:1], rows[5:69]):
        expected = booster.inplace_predict(matrix, validate_features=False)
        assert np.array_equal(model.native(matrix), expected)

    def off_by_a_little(matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return np.asarray(booster.inplace_predict(matrix, validate_features=False)) + 1e-7

    assert _xgb_dense(booster, off_by_a_little) is None

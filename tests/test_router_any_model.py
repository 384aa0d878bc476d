"""The router serves any MLflow model with an input signature, not only the fraud demo's.

A churn model unlike the demo's (other columns: a string plan with a vocabulary, an integer
tenure, a float fee, a boolean, an optional number; a pyfunc-only flavor) is logged with its
signature to a real MLflow registry and served end to end through a real router. MLflow
behaviour relied on, read in its source: mlflow/types/schema.py (Schema, ColSpec `type` and
`required`, DataType names), mlflow/models/model.py (ModelInfo.signature, ModelInfo.metadata),
mlflow/pyfunc/__init__.py (PyFuncModel.predict enforcing the signature on the DataFrame).
"""

from __future__ import annotations

import math
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow.pyfunc
import pandas as pd
import pytest

from kpigate.serve.config import ServeConfig
from kpigate.serve.loader import MlflowAliasLoader, ModelLoadError
from tests.serve_fixtures import RouterServer, metric_value

PLANS = ("basic", "plus", "premium")
CHURN, UNSIGNED = "kpigate-test-churn", "kpigate-test-unsigned"
# Listing requirements skips MLflow's inference (a subprocess importing the model: ~10 s each).
NO_INFERENCE = ["mlflow", "pandas"]
SEGMENTS = ("plan", "tenure_band=tenure_months:12,36:new,settled,loyal")


class ChurnModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """P(churn) from a fixed formula, so the test can compute the expected score itself."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        return model_input.apply(churn_score, axis=1).to_numpy()


def churn_score(row: Any) -> float:
    fee = 0.0 if row["discount"] != row["discount"] else float(row["discount"])  # NaN: absent
    z = (
        0.02 * float(row["monthly_fee"])
        - 0.05 * int(row["tenure_months"])
        + (0.0 if bool(row["autopay"]) else 0.8)
        + {"basic": 0.3, "plus": 0.0, "premium": -0.4}[row["plan"]]
        - fee
    )
    return 1.0 / (1.0 + math.exp(-z))


def churn_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "plan": pd.Series(["basic", "plus"], dtype=object),
            "tenure_months": pd.Series([3, 40], dtype="int64"),
            "monthly_fee": pd.Series([19.5, 49.0], dtype="float64"),
            "autopay": pd.Series([True, False], dtype="bool"),
            "discount": pd.Series([0.1, 0.0], dtype="float64"),
        }
    )


@pytest.fixture(scope="module")
def churn_registry(mlflow_server: str) -> Iterator[str]:
    """On the session's MLflow server: CHURN v1: the pyfunc ChurnModel with its signature (discount optional) and the plan
    vocabulary (champion); CHURN v2: the same model without a signature (candidate);
    UNSIGNED v1: no signature at all (champion)."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    # The session's MLflow server (tests/mlflow_fixtures.py), under names of this module's own.
    uri = mlflow_server
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp = mlflow.create_experiment(f"churn-{uuid.uuid4().hex[:8]}")
    signature = ModelSignature(
        inputs=Schema(
            [
                ColSpec("string", "plan"),
                ColSpec("long", "tenure_months"),
                ColSpec("double", "monthly_fee"),
                ColSpec("boolean", "autopay"),
                ColSpec("double", "discount", required=False),
            ]
        )
    )
    metadata = {"kpigate_vocabularies": {"plan": list(PLANS)}}
    with mlflow.start_run(experiment_id=exp):
        mlflow.pyfunc.log_model(
            name="model", python_model=ChurnModel(), signature=signature, metadata=metadata,
            registered_model_name=CHURN, pip_requirements=NO_INFERENCE,
        )  # fmt: skip
    with mlflow.start_run(experiment_id=exp):
        mlflow.pyfunc.log_model(name="model", python_model=ChurnModel(),
                                registered_model_name=CHURN,
                                pip_requirements=NO_INFERENCE)  # fmt: skip
    with mlflow.start_run(experiment_id=exp):
        mlflow.pyfunc.log_model(name="model", python_model=ChurnModel(),
                                registered_model_name=UNSIGNED,
                                pip_requirements=NO_INFERENCE)  # fmt: skip
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(CHURN, "champion", "1")
    client.set_registered_model_alias(CHURN, "candidate", "2")
    client.set_registered_model_alias(UNSIGNED, "champion", "1")
    client.set_model_version_tag(CHURN, "1", "threshold", "0.6")
    yield uri
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None restores the default


@pytest.fixture(scope="module")
def churn_router(
    churn_registry: str, tmp_path_factory: pytest.TempPathFactory, admin_token: str
) -> Iterator[RouterServer]:
    db = tmp_path_factory.mktemp("churn-router") / "router.db"
    config = ServeConfig(
        model_name=CHURN, tracking_uri=churn_registry, db_url=f"sqlite:///{db}",
        entity_key="customer_id", segments=SEGMENTS,
    )  # fmt: skip
    server = RouterServer(config, MlflowAliasLoader(CHURN, churn_registry)).start()
    yield server
    server.stop()


def customer(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"customer_id": "c-17", "plan": "basic", "tenure_months": 40,
                            "monthly_fee": 29.0, "autopay": False, "discount": 0.25}  # fmt: skip
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def test_a_second_model_is_scored_through_the_router(churn_router: RouterServer) -> None:
    with churn_router.client() as client:
        one = client.post("/predict", json=customer())
        absent = client.post("/predict", json=customer(discount=None, customer_id=99))
        batch = client.post("/predict", json={"instances": [customer(plan=p) for p in PLANS]})
        metrics = client.get("/metrics").text
        state = client.get("/readyz").json()
    assert one.status_code == 200, one.text
    answer = one.json()
    expected = churn_score(pd.Series(customer()))
    assert answer["score"] == pytest.approx(expected, rel=1e-9)
    assert (answer["model_version"], answer["arm"]) == ("1", "baseline")
    assert answer["decision"] == ("decline" if expected >= 0.6 else "approve")
    assert absent.json()["score"] == pytest.approx(
        churn_score(pd.Series(customer(discount=float("nan")))), rel=1e-9
    )
    scores = [p["score"] for p in batch.json()["predictions"]]
    assert scores == pytest.approx([churn_score(pd.Series(customer(plan=p))) for p in PLANS])
    # The candidate (no signature) is refused; the baseline serves everything meanwhile.
    assert "no input signature" in state["candidate"]
    # Segments are counted under their configured names.
    assert metric_value(metrics, "kpigate_decisions_total", arm="baseline") == 5
    db = churn_router.config.db_url.removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT entity_key, region, payment_method, amount_band FROM kpigate_predictions "
            "ORDER BY id"
        ).fetchall()
    # plan in the first slot, the tenure band in the second, the third slot empty.
    assert rows[0] == ("c-17", "basic", "loyal", "")
    assert rows[1][0] == "99"


def test_labels_count_in_the_configured_segments(churn_router: RouterServer) -> None:
    with churn_router.client() as client:
        answer = client.post("/predict", json=customer(tenure_months=5, plan="plus")).json()
        report = client.post("/feedback", json={"request_id": answer["request_id"], "label": 1})
        metrics = client.get("/metrics").text
    assert report.json()["joined"] == 1
    for segment in ("plan=plus", "tenure_band=new"):
        assert metric_value(metrics, "kpigate_outcomes_total", segment=segment) == 1
    assert metric_value(metrics, "kpigate_outcomes_total", segment="region=plus") == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"plan": "gold"}, "plan"),
        ({"plan": 3}, "plan"),
        ({"tenure_months": 2.5}, "tenure_months"),
        ({"tenure_months": 2**63}, "tenure_months"),
        ({"tenure_months": None}, "tenure_months"),
        ({"monthly_fee": "29"}, "monthly_fee"),
        ({"autopay": 1}, "autopay"),
        ({"discount": True}, "discount"),
        ({"amount": 10.0}, "amount"),
        ({"customer_id": None}, "customer_id"),
        ({"customer_id": "x" * 129}, "customer_id"),
    ],
)
def test_an_invalid_field_is_a_422_naming_it(
    churn_router: RouterServer, change: dict[str, Any], field: str
) -> None:
    response = httpx.post(f"{churn_router.url}/predict", json=customer(**change), timeout=10)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


def test_openapi_reflects_the_signature(churn_router: RouterServer) -> None:
    document = httpx.get(f"{churn_router.url}/openapi.json", timeout=10).json()
    instance = document["components"]["schemas"]["Instance"]
    props = instance["properties"]
    assert set(props) == {"customer_id", "plan", "tenure_months", "monthly_fee", "autopay",
                          "discount"}  # fmt: skip
    assert props["plan"] == {"type": "string", "enum": list(PLANS)}
    assert props["tenure_months"]["type"] == "integer"
    assert props["monthly_fee"]["type"] == "number"
    assert props["autopay"] == {"type": "boolean"}
    assert set(instance["required"]) == set(props) - {"discount"}
    assert instance["additionalProperties"] is False


def test_a_model_without_a_signature_does_not_start(
    churn_registry: str, tmp_path: Path, admin_token: str
) -> None:
    with pytest.raises(ModelLoadError, match=rf"{UNSIGNED}@champion.*no input signature"):
        MlflowAliasLoader(UNSIGNED, churn_registry).load("champion")
    config = ServeConfig(
        model_name=UNSIGNED, tracking_uri=churn_registry,
        db_url=f"sqlite:///{tmp_path / 'p.db'}",
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="did not start"):
        RouterServer(config, MlflowAliasLoader(UNSIGNED, churn_registry)).start()


def test_segments_that_the_model_lacks_stop_the_start(churn_registry: str) -> None:
    """The fraud demo's default segments on the churn model: a SchemaError saying which."""
    from kpigate.serve.schema import InstanceSchema, SchemaError, parse_segment

    model = MlflowAliasLoader(CHURN, churn_registry).load("champion")
    defaults = [parse_segment(s) for s in ServeConfig().segments]
    with pytest.raises(SchemaError, match=r"segment 'region' reads field 'region'.*--segment"):
        InstanceSchema.build(model.inputs, "customer_id", defaults)
    with pytest.raises(SchemaError, match="entity key 'plan' is also a model input"):
        InstanceSchema.build(model.inputs, "plan", [])


def test_the_default_segments_are_the_fraud_demos() -> None:
    """amount_band=amount:50,500:low,mid,high bands amounts as kpigate.fraud.schema does."""
    from kpigate.fraud.models import instance_schema
    from kpigate.fraud.schema import SEGMENTS, amount_band

    schema = instance_schema()
    assert schema.segment_names == SEGMENTS
    band = schema.segments[2]
    for amount in (0.0, 49.99, 50.0, 499.0, 500.0, 1e6):
        assert band.value(amount) == amount_band(amount)


def test_serve_flags_set_the_entity_key_segments_and_vocabularies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import argparse

    from kpigate.serve.cli import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--entity-key", "customer_id", "--segment", "plan",
                              "--segment", "tenure_band=tenure_months:12,36",
                              "--vocabulary", "plan=basic,plus"])  # fmt: skip
    config = config_from_args(args)
    assert config.entity_key == "customer_id"
    assert config.segments == ("plan", "tenure_band=tenure_months:12,36")
    assert config.vocabularies == {"plan": ("basic", "plus")}
    assert config_from_args(parser.parse_args([])).segments == ServeConfig().segments
    assert config_from_args(parser.parse_args(["--no-segments"])).segments == ()
    for bad in (["--segment", "band=amount:high,low"], ["--vocabulary", "plan"]):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(bad)
        assert exit_.value.code == 2
    assert "--vocabulary" in capsys.readouterr().err

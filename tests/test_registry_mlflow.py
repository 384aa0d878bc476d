"""The MLflow registry on a real `mlflow server`: aliases, tags, metrics, signature, artifacts,
loading by alias from another process, errors a user can hit, and a PostgreSQL backend store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kpigate.fraud.data import model_input
from kpigate.fraud.models import train_baseline
from kpigate.fraud.registration import load_model, register_model
from kpigate.fraud.schema import FEATURES
from kpigate.registry.base import (
    APPROVAL_TAG,
    CANDIDATE,
    CHAMPION,
    FLAVOR_TAG,
    THRESHOLD_TAG,
    ModelNotFound,
    Registry,
    RegistryUnavailable,
)
from kpigate.registry.mlflow import MlflowRegistry
from kpigate.registry.server import MlflowServer, free_loopback_port
from tests.mlflow_fixtures import FraudFrames, RegisteredModels

pytestmark = pytest.mark.slow

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
REQUIRE_POSTGRES_ENV = "KPIGATE_REQUIRE_POSTGRES"


@pytest.fixture(scope="module")
def registry(registered_models: RegisteredModels) -> MlflowRegistry:
    return MlflowRegistry(registered_models.tracking_uri)


def test_mlflow_registry_satisfies_the_registry_protocol(registry: MlflowRegistry) -> None:
    assert isinstance(registry, Registry)


def test_champion_and_candidate_are_versions_of_one_model(
    registered_models: RegisteredModels, registry: MlflowRegistry
) -> None:
    name = registered_models.name
    champion, candidate = registry.resolve(name, CHAMPION), registry.resolve(name, CANDIDATE)
    assert (champion.version, candidate.version) == ("1", "2")
    assert registry.get_aliases(name) == {CHAMPION: "1", CANDIDATE: "2"}
    assert champion.tags[FLAVOR_TAG] == "xgboost" and candidate.tags[FLAVOR_TAG] == "lightgbm"
    assert float(champion.tags[THRESHOLD_TAG]) == registered_models.models.baseline.threshold
    assert float(candidate.tags[THRESHOLD_TAG]) == registered_models.models.candidate.threshold
    assert registry.resolve(name, "2").aliases == (CANDIDATE,)


def test_versions_carry_offline_metrics_and_signature(
    registered_models: RegisteredModels, registry: MlflowRegistry
) -> None:
    name = registered_models.name
    for ref in (CHAMPION, CANDIDATE):
        metrics = registry.offline_metrics(name, ref)
        for key in ("precision", "recall", "auc", "fpr", "recall_region_eu"):
            assert 0.0 <= metrics[key] <= 1.0, (ref, key)
        assert any(k.startswith("recall_payment_method_") for k in metrics)
        assert any(k.startswith("recall_amount_band_") for k in metrics)
        assert [c["name"] for c in registry.input_schema(name, ref)] == list(FEATURES)
        assert float(registry.params(name, ref)["threshold"]) > 0
    base, cand = registry.offline_metrics(name, CHAMPION), registry.offline_metrics(name, CANDIDATE)
    assert cand["recall"] > base["recall"]


def test_aliases_and_tags_can_be_moved_and_read_back(
    registered_models: RegisteredModels, registry: MlflowRegistry
) -> None:
    name = registered_models.name
    registry.set_alias(name, "shadow", "2")
    assert registry.resolve(name, "shadow").version == "2"
    registry.delete_alias(name, "shadow")
    with pytest.raises(ModelNotFound, match="no alias 'shadow'"):
        registry.resolve(name, "shadow")

    assert not registry.is_approved(name, "2")
    assert registry.is_approved(name, "2", alias=CANDIDATE)  # approval by alias
    registry.set_tag(name, "2", APPROVAL_TAG, "true")
    assert registry.get_tags(name, "2")[APPROVAL_TAG] == "true"
    assert registry.is_approved(name, CANDIDATE)  # approval by tag, resolved via alias
    registry.set_tag(name, "2", APPROVAL_TAG, "false")
    assert not registry.is_approved(name, "2")


def test_evidence_artifacts_round_trip(
    registered_models: RegisteredModels, registry: MlflowRegistry, tmp_path: Path
) -> None:
    name = registered_models.name
    registry.log_text(name, CANDIDATE, "stage 5%: PROMOTE\n", "kpigate/decisions.txt")
    registry.log_dict(name, CANDIDATE, {"stage": 5, "verdict": "PROMOTE"}, "kpigate/stage5.json")
    text = Path(registry.download_artifact(name, "2", "kpigate/decisions.txt", str(tmp_path)))
    data = Path(registry.download_artifact(name, "2", "kpigate/stage5.json", str(tmp_path)))
    assert text.read_text() == "stage 5%: PROMOTE\n"
    assert json.loads(data.read_text()) == {"stage": 5, "verdict": "PROMOTE"}
    metrics_json = registry.download_artifact(name, "1", "offline_metrics.json", str(tmp_path))
    assert "recall" in json.loads(Path(metrics_json).read_text())


def test_load_by_alias_from_another_process(
    registered_models: RegisteredModels, fraud_frames: FraudFrames, tmp_path: Path
) -> None:
    rows = fraud_frames.holdout.iloc[:20]
    rows_path = tmp_path / "rows.npy"
    np.save(rows_path, model_input(rows).to_numpy())
    script = (
        "import json, sys, numpy as np\n"
        "from kpigate.fraud.registration import load_model\n"
        "x = np.load(sys.argv[2])\n"
        "out = {}\n"
        "for alias in ('champion', 'candidate'):\n"
        "    m = load_model(alias, tracking_uri=sys.argv[1], name=sys.argv[3])\n"
        "    out[alias] = {'version': m.version, 'threshold': m.threshold,\n"
        "                  'flavor': m.flavor, 'scores': m.predict_proba(x).tolist()}\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            registered_models.tracking_uri,
            str(rows_path),
            registered_models.name,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # a stray ./mlflow.db would show that the URI was ignored
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not (tmp_path / "mlflow.db").exists()
    expected = {
        CHAMPION: (registered_models.champion.version, registered_models.models.baseline),
        CANDIDATE: (registered_models.candidate.version, registered_models.models.candidate),
    }
    x = model_input(rows)
    for alias, (version, model) in expected.items():
        assert loaded[alias]["version"] == version
        assert loaded[alias]["threshold"] == model.threshold
        assert loaded[alias]["flavor"] == model.flavor
        np.testing.assert_allclose(loaded[alias]["scores"], model.predict_proba(x), rtol=1e-6)


def test_in_process_load_scores_one_row_as_the_trained_model(
    registered_models: RegisteredModels,
) -> None:
    """What a load can prove without a clock: the champion's native booster, by alias, scoring
    a single row as the trained model does (its speed: `make bench-scoring`,
    docs/bench-scoring.md)."""
    model = load_model(CHAMPION, tracking_uri=registered_models.tracking_uri)
    assert model.version == registered_models.champion.version
    assert CHAMPION in model.aliases
    assert model.flavor == registered_models.models.baseline.flavor
    row = np.zeros((1, len(FEATURES)), dtype=np.float32)
    scores = model.predict_proba(row)
    assert scores.shape == (1,)
    np.testing.assert_allclose(
        scores, registered_models.models.baseline.predict_proba(row), rtol=1e-6
    )


def test_user_errors_are_specific_and_actionable(
    registered_models: RegisteredModels, registry: MlflowRegistry
) -> None:
    name = registered_models.name
    with pytest.raises(ModelNotFound, match="no registered model 'no-such-model'"):
        registry.resolve("no-such-model", CHAMPION)
    with pytest.raises(ModelNotFound, match=r"no alias 'staging' \(aliases: candidate->v2"):
        registry.resolve(name, "staging")
    with pytest.raises(ModelNotFound, match="has no version 99"):
        registry.resolve(name, "99")
    with pytest.raises(ModelNotFound):
        registry.set_alias(name, CHAMPION, "99")
    assert registry.resolve(name, CHAMPION).version == "1"  # the failed move changed nothing


def test_unreachable_server_fails_fast_with_a_hint() -> None:
    dead = f"http://127.0.0.1:{free_loopback_port()}"
    start = time.monotonic()
    with pytest.raises(RegistryUnavailable, match=r"unreachable.*Start one"):
        MlflowRegistry(dead)
    with pytest.raises(RegistryUnavailable):
        load_model(CHAMPION, tracking_uri=dead)
    assert time.monotonic() - start < 15


# -- a second server, on PostgreSQL ---------------------------------------------------------


def _postgres_or_skip() -> None:
    import psycopg

    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3):
            return
    except psycopg.Error as exc:
        message = (
            f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL} ({exc}); start it (trust auth, "
            f"user postgres, database test) to run this test, or set {REQUIRE_POSTGRES_ENV}=1 "
            "to make its absence a failure"
        )
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A fresh, empty database (dropped afterwards); yields its URI."""
    _postgres_or_skip()
    import psycopg

    db = f"kpigate_mlflow_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{db}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def test_postgres_backend_store_registers_and_resolves(
    postgres_database: str, fraud_frames: FraudFrames, tmp_path: Path
) -> None:
    # A small model: this test is about the store, not the metrics.
    model = train_baseline(fraud_frames.baseline_train.iloc[:5_000])
    server = MlflowServer(tmp_path / "pg-server", backend_store_uri=postgres_database)
    server.start()
    group = server.pid
    try:
        ref = register_model(
            model,
            tracking_uri=server.tracking_uri,
            eval_frame=fraud_frames.holdout.iloc[:5_000],
            name="kpigate-fraud-pg",
            alias=CHAMPION,
        )
        registry = MlflowRegistry(server.tracking_uri)
        assert registry.resolve("kpigate-fraud-pg", CHAMPION).version == ref.version == "1"
        assert "recall" in registry.offline_metrics("kpigate-fraud-pg", CHAMPION)
        loaded = load_model(CHAMPION, tracking_uri=server.tracking_uri, name="kpigate-fraud-pg")
        x = model_input(fraud_frames.holdout.iloc[:50])
        np.testing.assert_allclose(loaded.predict_proba(x), model.predict_proba(x), rtol=1e-6)
    finally:
        server.stop()
    # The rows really went to PostgreSQL, not to a SQLite file next to the server.
    import psycopg

    with psycopg.connect(postgres_database) as conn:
        row = conn.execute("SELECT name FROM registered_models").fetchone()
    assert row == ("kpigate-fraud-pg",)
    assert not (tmp_path / "pg-server" / "mlflow.db").exists()
    # stop() took the whole process group (server, uvicorn worker) down with it.
    assert group is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)

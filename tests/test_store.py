"""Evidence stores: a JSONL file, and the candidate version's MLflow run artifacts (real server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpigate.evidence_record import WindowRecord, record_of
from kpigate.registry.mlflow import MlflowRegistry
from kpigate.store import StoreError, open_store
from kpigate.store.file import FileStore
from tests.mlflow_fixtures import RegisteredModels


def _window(index: int) -> WindowRecord:
    return record_of({"window": index, "stage": 5, "kpis": {}})


def test_file_store_round_trip_and_torn_tail(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "a" / "evidence.jsonl")
    assert store.read() == []
    store.append(_window(1))
    store.append(_window(2))
    with store.path.open("a") as out:
        out.write('{"window": 3, "kp')  # a crash mid-append
    assert store.read() == [_window(1), _window(2)]
    store.path.write_text('{"window":1,"stage":5,"kpis":{}}\nnot json\n{"window": 2}\n')
    with pytest.raises(StoreError, match="line 2 is not JSON"):
        store.read()


def test_a_record_off_the_schema_is_an_error_naming_its_line_and_field(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "evidence.jsonl")
    store.path.write_text(
        '{"window":1,"stage":5,"kpis":{}}\n{"window":2,"stage":5,"kpis":{},"stal":true}\n'
    )
    with pytest.raises(StoreError, match="line 2: window 2: stal: unknown field") as caught:
        store.read()
    assert caught.value.kind.exit_code == 2
    assert store.path.read_text().count("\n") == 2  # nothing was lost


@pytest.mark.slow
def test_mlflow_store_keeps_evidence_with_the_version(registered_models: RegisteredModels) -> None:
    uri = (
        f"mlflow://models/{registered_models.name}/{registered_models.candidate.version}/store-test"
    )
    store = open_store(uri, registered_models.tracking_uri)
    assert store.read() == []
    store.append(_window(1))
    store.append(_window(2))
    again = open_store(uri, registered_models.tracking_uri)  # a later step, another process
    assert again.read() == [_window(1), _window(2)]
    registry = MlflowRegistry(registered_models.tracking_uri)
    assert registry.resolve(registered_models.name, registered_models.candidate.version)
    with pytest.raises(StoreError, match="not an MLflow evidence URI"):
        open_store("mlflow://models/only-two", registered_models.tracking_uri)

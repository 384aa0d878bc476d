"""The instance schema: what a /predict instance holds, built once from a model's signature.

A model version says which columns it takes (its MLflow input signature, `ModelInputs`) and the
vocabularies of the columns it sees as integer codes; the router's configuration says which field
is the entity key and which segments KPIs are sliced by. `InstanceSchema` joins the two, and
request validation (kpigate/serve/instances.py), the OpenAPI document (kpigate/serve/openapi.py)
and the scorer's column order and dtypes (kpigate/serve/scoring.py) are all derived from it.

Segments fill the prediction log's three segment slots in order (docs/prediction-log.md): the
fraud demo's region, payment_method and amount_band land in the columns of the same names.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kpigate.serve.predlog import SEGMENT_SLOTS

# MLflow DataType names (mlflow/types/schema.py) the router can take from JSON, and the numpy
# dtype each is fed to the model as.
DTYPES: dict[str, np.dtype[Any]] = {
    "boolean": np.dtype("bool"),
    "integer": np.dtype("int32"),
    "long": np.dtype("int64"),
    "float": np.dtype("float32"),
    "double": np.dtype("float64"),
    "string": np.dtype("object"),
}
NUMERIC = frozenset({"integer", "long", "float", "double"})
INTEGER_RANGE = {"integer": 2**31, "long": 2**63}
# Key of the model's MLflow metadata that holds its vocabularies ({column: [value, ...]}): the
# value at index i is fed to the model as code i.
VOCABULARIES_KEY = "kpigate_vocabularies"


class SchemaError(ValueError):
    """The model's signature and the router's configuration do not make an instance schema."""


@dataclass(frozen=True)
class InputColumn:
    """One column of a model's input signature: MLflow's ColSpec name, type name and required."""

    name: str
    type: str
    required: bool = True


@dataclass(frozen=True)
class ModelInputs:
    """What a model version says about its inputs."""

    columns: tuple[InputColumn, ...]
    vocabularies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_signature(
        cls, schema: Any, vocabularies: Mapping[str, Sequence[str]] | None = None, where: str = ""
    ) -> ModelInputs:
        """From an MLflow input `Schema` (ModelSignature.inputs); a tensor-based or unnamed
        schema, or a column of a type JSON cannot carry, is a SchemaError naming it."""
        from mlflow.types.schema import DataType

        at = f"{where}: " if where else ""
        if schema is None:
            raise SchemaError(f"{at}the model has no input signature")
        if schema.is_tensor_spec() or not schema.has_input_names():
            raise SchemaError(
                f"{at}the input signature must name its columns (a column-based signature, "
                "e.g. mlflow.models.infer_signature(a DataFrame)); tensor or unnamed inputs "
                "cannot be validated per field"
            )
        columns = []
        for spec in schema.inputs:
            kind = spec.type.name if isinstance(spec.type, DataType) else str(spec.type)
            if kind not in DTYPES:
                raise SchemaError(
                    f"{at}input column '{spec.name}' has type {kind}; the router takes "
                    f"{sorted(DTYPES)}"
                )
            columns.append(InputColumn(spec.name, kind, bool(spec.required)))
        vocab = {
            str(k): tuple(str(v) for v in values) for k, values in (vocabularies or {}).items()
        }
        return cls(tuple(columns), vocab)


@dataclass(frozen=True)
class Segment:
    """A segment KPIs can be read in (`name=value`): an input field's value, or its band."""

    name: str
    field: str
    edges: tuple[float, ...] = ()
    labels: tuple[str, ...] = ()

    def value(self, raw: Any) -> str:
        if not self.edges:
            if isinstance(raw, bool):
                return "true" if raw else "false"
            return str(raw)
        for edge, label in zip(self.edges, self.labels, strict=False):
            if raw < edge:
                return label
        return self.labels[-1]


def parse_segment(spec: str) -> Segment:
    """`NAME` (the field NAME's value) or `NAME=FIELD:EDGE,EDGE[:LABEL,LABEL,LABEL]` (bands)."""
    name, sep, rest = spec.partition("=")
    name = name.strip()
    if not name:
        raise SchemaError(f"segment {spec!r}: empty name; use NAME or NAME=FIELD:EDGE,...")
    if not sep:
        return Segment(name, name)
    parts = rest.split(":")
    if len(parts) not in (2, 3) or not parts[0].strip():
        raise SchemaError(f"segment {spec!r}: use NAME=FIELD:EDGE,EDGE[:LABEL,LABEL,LABEL]")
    try:
        edges = tuple(float(e) for e in parts[1].split(","))
    except ValueError:
        raise SchemaError(f"segment {spec!r}: band edges must be numbers") from None
    if any(not math.isfinite(e) for e in edges) or list(edges) != sorted(set(edges)):
        raise SchemaError(f"segment {spec!r}: band edges must be finite and increasing")
    if len(parts) == 3:
        labels = tuple(label.strip() for label in parts[2].split(","))
        if len(labels) != len(edges) + 1 or not all(labels):
            raise SchemaError(f"segment {spec!r}: {len(edges)} edges need {len(edges) + 1} labels")
    else:
        inner = [f"{a:g}-{b:g}" for a, b in itertools.pairwise(edges)]
        labels = (f"<{edges[0]:g}", *inner, f">={edges[-1]:g}")
    return Segment(name, parts[0].strip(), edges, labels)


@dataclass(frozen=True)
class InputField:
    """A model input as a request field: its JSON type, required or not, and, with a
    vocabulary, the strings it accepts (fed as their index unless the column is a string)."""

    name: str
    type: str
    required: bool
    vocabulary: tuple[str, ...] | None = None

    @property
    def dtype(self) -> np.dtype[Any]:
        return DTYPES[self.type]

    @property
    def encoded(self) -> bool:
        """A string from the vocabulary in the request, its integer code for the model."""
        return self.vocabulary is not None and self.type != "string"


@dataclass(frozen=True)
class InstanceSchema:
    entity_key: str
    fields: tuple[InputField, ...]
    segments: tuple[Segment, ...]

    @classmethod
    def build(
        cls,
        inputs: ModelInputs,
        entity_key: str,
        segments: Sequence[Segment],
        vocabularies: Mapping[str, Sequence[str]] | None = None,
    ) -> InstanceSchema:
        """The model's inputs with the configured entity key, segments and vocabularies (the
        configuration's vocabularies override the model's)."""
        names = [c.name for c in inputs.columns]
        if not names:
            raise SchemaError("the input signature has no columns")
        if len(set(names)) != len(names):
            raise SchemaError(f"the input signature repeats a column: {names}")
        if entity_key in names:
            raise SchemaError(
                f"the entity key '{entity_key}' is also a model input; the router routes on "
                "it and does not pass it to the model: choose another --entity-key"
            )
        vocab = {**inputs.vocabularies, **{k: tuple(v) for k, v in (vocabularies or {}).items()}}
        for name, values in vocab.items():
            if name not in names:
                raise SchemaError(f"vocabulary for '{name}', which is not an input ({names})")
            if not values or len(set(values)) != len(values):
                raise SchemaError(f"vocabulary of '{name}' must list distinct values")
        fields = tuple(
            InputField(c.name, c.type, c.required, vocab.get(c.name)) for c in inputs.columns
        )
        by_name = {f.name: f for f in fields}
        if len(segments) > len(SEGMENT_SLOTS):
            raise SchemaError(
                f"{len(segments)} segments, but the prediction log has {len(SEGMENT_SLOTS)} "
                "segment slots"
            )
        if len({s.name for s in segments}) != len(segments):
            raise SchemaError(f"segment names repeat: {[s.name for s in segments]}")
        for segment in segments:
            source = by_name.get(segment.field)
            if source is None:
                raise SchemaError(
                    f"segment '{segment.name}' reads field '{segment.field}', which is not an "
                    f"input of this model ({names}); set --segment for its columns, or "
                    "--no-segments"
                )
            if segment.edges and source.type not in NUMERIC:
                raise SchemaError(f"segment '{segment.name}': bands need a numeric field")
            continuous = source.type in ("float", "double") and source.vocabulary is None
            if continuous and not segment.edges:
                raise SchemaError(
                    f"segment '{segment.name}' on the continuous field '{segment.field}' "
                    f"needs bands: {segment.name}={segment.field}:EDGE,EDGE"
                )
            if not source.required:
                raise SchemaError(f"segment '{segment.name}': field '{segment.field}' is optional")
        return cls(entity_key, fields, tuple(segments))

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def numeric(self) -> bool:
        """Every value the model gets is a number: rows can go to a booster as a matrix."""
        return all(f.type in NUMERIC for f in self.fields)

    @property
    def segment_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.segments)

    def frame(self, rows: Sequence[Sequence[Any]]) -> pd.DataFrame:
        """The rows as a DataFrame with the signature's column names and dtypes."""
        if self.numeric and all(f.type == self.fields[0].type for f in self.fields):
            matrix = np.asarray(rows, dtype=self.fields[0].dtype)
            return pd.DataFrame(matrix, columns=self.columns)
        data = {}
        for i, f in enumerate(self.fields):
            values = [row[i] for row in rows]
            if f.type == "string":
                data[f.name] = pd.Series(values, dtype=object)
            elif f.type in ("integer", "long") and any(v != v for v in values):
                data[f.name] = pd.Series(values, dtype="float64")  # a missing optional integer
            else:
                data[f.name] = pd.Series(values, dtype=f.dtype)
        return pd.DataFrame(data, columns=self.columns)

    def describe(self) -> dict[str, Any]:
        return {
            "entity_key": self.entity_key,
            "inputs": [
                {"name": f.name, "type": f.type, "required": f.required}
                | ({"vocabulary": list(f.vocabulary)} if f.vocabulary else {})
                for f in self.fields
            ],
            "segments": {
                s.name: slot for s, slot in zip(self.segments, SEGMENT_SLOTS, strict=False)
            },
        }

    def difference(self, other: InstanceSchema) -> str | None:
        """Why `other` (a candidate's) cannot take this schema's rows, else None."""
        if other.fields == self.fields:
            return None
        mine, theirs = {f.name: f for f in self.fields}, {f.name: f for f in other.fields}
        for name in mine.keys() - theirs.keys():
            return f"it lacks input '{name}'"
        for name in theirs.keys() - mine.keys():
            return f"it takes input '{name}', which the baseline does not"
        for name, f in mine.items():
            if theirs[name] != f:
                return f"input '{name}' is {theirs[name]} there, {f} in the baseline"
        return "its inputs are in another order"

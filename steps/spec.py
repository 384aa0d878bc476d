"""A step's inputs, defined once: a pydantic model whose fields give both the step's command-line
flags (argparse, for `python -m kpigate.steps.<step>`) and the arguments the WorkflowTemplate
passes it (Hera), so a flag is spelled in one place.

A field's `argo` value is what the template passes: an Argo expression
(`{{inputs.parameters.stage}}`, `{{workflow.parameters.model-name}}`) or one of the template's
own values named by a token (`$POLICY`, `$EVIDENCE`, `$OUT_DIR`, `$VERSION`, `$BASELINE`), which
workflows/progressive_delivery.py resolves. Fields without one keep their default on Argo; a
template that uses a step differently (the exit handler's rollback) overrides values by field.
Inputs several steps share are defined once, in steps/inputs.py.
"""

from __future__ import annotations

import argparse
import re
import types
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.config import JsonDict
from pydantic.fields import FieldInfo

from kpigate.steps.common import StepError

_INPUT = re.compile(r"\{\{inputs\.parameters\.([\w-]+)\}\}")


class StepInputs(BaseModel):
    """Base of every step's inputs: unknown fields are refused, values validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def field(
    default: Any = ...,
    *,
    help: str,
    argo: str | None = None,
    choices: Sequence[str] | None = None,
) -> Any:
    """A step input: `help` for --help, `argo` what the template passes, `choices` for a value
    from a registry of implementations (a Literal type says its choices itself)."""
    extra: JsonDict = {}
    if argo is not None:
        extra["argo"] = argo
    if choices is not None:
        extra["choices"] = list(choices)
    return Field(default, description=help, json_schema_extra=extra or None)


def _choices(info: FieldInfo) -> list[str] | None:
    extra = info.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("choices"), list):
        return [str(c) for c in extra["choices"]]  # type: ignore[union-attr]
    return None


def wf(name: str) -> str:
    """A reference to a WorkflowTemplate argument."""
    return "{{workflow.parameters." + name + "}}"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _plain(annotation: Any) -> Any:
    """X for `X | None`."""
    if get_origin(annotation) in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        if len(options) == 1:
            return options[0]
    return annotation


def add_flags(parser: argparse.ArgumentParser, model: type[StepInputs]) -> None:
    """One flag per field: type, choices, default and help from the field."""
    for name, info in model.model_fields.items():
        kwargs: dict[str, Any] = {"dest": name, "help": info.description}
        annotation = _plain(info.annotation)
        if annotation is bool:
            kwargs["action"] = "store_true"
        elif get_origin(annotation) is Literal:
            kwargs["choices"] = list(get_args(annotation))
        elif _choices(info) is not None:
            kwargs["choices"] = _choices(info)
        elif annotation in (int, float):
            kwargs["type"] = annotation
        if info.is_required():
            kwargs["required"] = True
        elif annotation is not bool:
            kwargs["default"] = info.default
        parser.add_argument(flag(name), **kwargs)


def parse(model: type[StepInputs], args: argparse.Namespace) -> Any:
    """The validated inputs; a value the model refuses is bad input (exit 2)."""
    values = {name: getattr(args, name) for name in model.model_fields}
    for name, info in model.model_fields.items():
        allowed = _choices(info)
        if allowed is not None and values[name] not in allowed:
            raise StepError(f"{flag(name)}: {values[name]!r} is not one of {', '.join(allowed)}")
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{flag(str(e['loc'][0]))}: {e['msg']}" for e in exc.errors() if e["loc"]
        )
        raise StepError(problems or str(exc)) from None


def argo_flags(model: type[StepInputs], **overrides: str | bool) -> dict[str, str | None]:
    """Flag -> what the template passes, in field order (a bool flag stands alone, None).

    `overrides` replace a field's `argo` value for one template (True passes a bool flag,
    False drops a field); a name the model lacks is a bug, refused."""
    unknown = sorted(set(overrides) - set(model.model_fields))
    if unknown:
        raise KeyError(f"{model.__name__} has no field {', '.join(unknown)}")
    out: dict[str, str | None] = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra
        value: str | bool | None = None
        if isinstance(extra, dict) and isinstance(extra.get("argo"), str):
            value = str(extra["argo"])
        value = overrides.get(name, value)
        if value is None or value is False:
            continue
        out[flag(name)] = None if _plain(info.annotation) is bool else str(value)
    return out


def argo_inputs(flags: Mapping[str, str | None]) -> list[str]:
    """The template inputs these (resolved) arguments reference, in order."""
    names: list[str] = []
    for value in flags.values():
        for name in _INPUT.findall(value or ""):
            if name not in names:
                names.append(name)
    return names

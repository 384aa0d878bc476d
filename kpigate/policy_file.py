"""Read a policy file defensively: bytes to a plain YAML document, or one error naming the file,
the field and the line.

A policy file comes from a person or a repository, not from kpigate, so every way a file can
hurt the loader is refused here before validation sees it: a file too large to be a policy, an
encoding other than UTF-8, nesting deep enough to exhaust the stack, anchors that expand into
millions of values, a duplicated key (YAML keeps the last one silently), integers too long to
convert and numbers that are not finite. Pydantic then checks the fields' meaning.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

MAX_BYTES = 1 << 20  # a policy is a few kilobytes; a megabyte leaves room for comments
MAX_DEPTH = 32  # the policy itself nests four levels deep
MAX_VALUES = 100_000  # values after expanding aliases: stops "billion laughs" documents
MAX_DIGITS = 15  # an integer with more digits is no count, weight or number of seconds

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_MERGE = "tag:yaml.org,2002:merge"


class PolicyFileError(ValueError):
    """The file cannot be read as a policy document; the message names file, field and line."""


class _TooDeep(Exception):
    def __init__(self, where: str, mark: Any) -> None:
        self.where, self.mark = where, mark


class _Loader(yaml.SafeLoader):
    """SafeLoader whose composer stops at MAX_DEPTH instead of exhausting Python's stack."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.trail: list[str] = []  # the field path being composed, for the error

    def compose_node(self, parent: Any, index: Any) -> Any:
        if isinstance(index, int):
            self.trail.append(f"[{index}]")
        elif isinstance(index, yaml.ScalarNode):
            self.trail.append(("." if any(self.trail) else "") + index.value[:64])
        else:  # a mapping's key, or the document's root
            self.trail.append("")
        try:
            if len(self.trail) > MAX_DEPTH:
                shown = "".join(self.trail[:6]) or "(top level)"
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise _TooDeep(shown, mark)
            return super().compose_node(parent, index)
        finally:
            self.trail.pop()


def _line(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}"


def _decode(path: Path, data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise PolicyFileError(f"{path}: the file is UTF-16 (it starts with a UTF-16 byte-order "
                              "mark); save it as UTF-8")  # fmt: skip
    if b"\x00" in data:
        at = data.index(b"\x00")
        raise PolicyFileError(
            f"{path}: NUL byte at offset {at}: the file is binary or UTF-16/32; save it as UTF-8"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise PolicyFileError(
            f"{path}: not UTF-8 at line {line}, column {column} (byte 0x{data[exc.start]:02x}): "
            "the file is in another encoding such as Latin-1; save it as UTF-8"
        ) from None


def _read_bytes(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)  # never more, whatever the file claims to be
    except OSError as exc:
        raise PolicyFileError(f"{path}: cannot read the policy file ({exc.strerror})") from None
    if len(data) > MAX_BYTES:
        raise PolicyFileError(
            f"{path}: larger than {MAX_BYTES // 1024} KiB, which no policy is: is this the "
            "right file?"
        )
    return data


def _shorten(where: str) -> str:
    return where if len(where) <= 80 else where[:80] + "…"


def _field(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _walk(path: Path, root: yaml.Node, loader: _Loader) -> None:
    """Check every node, aliases expanded, naming each by its field path (kpis[0] (recall).x)."""
    seen = 0
    stack: list[tuple[yaml.Node, str, int]] = [(root, "", 1)]
    while stack:
        node, where, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES or depth > MAX_DEPTH:
            limit = f"{MAX_VALUES} values" if seen > MAX_VALUES else f"{MAX_DEPTH} levels"
            field = _shorten(where) or "(top level)"
            raise PolicyFileError(
                f"{path}: {field} ({_line(node)}): the document expands to more than {limit} "
                "(aliases referring to aliases, or to themselves)"
            )
        if isinstance(node, yaml.ScalarNode):
            _check_scalar(path, node, where, loader)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                stack.append((item, f"{where}[{index}]{_name_of(item)}", depth + 1))
        elif isinstance(node, yaml.MappingNode):
            stack.extend(_mapping_children(path, node, where, depth, loader))


def _name_of(node: yaml.Node) -> str:
    """` (recall)` for a list item that is a mapping with a plain `name`, as errors show KPIs."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            named = isinstance(key, yaml.ScalarNode) and key.value == "name"
            if named and isinstance(value, yaml.ScalarNode) and len(value.value) <= 64:
                return f" ({value.value})"
    return ""


def _mapping_children(
    path: Path, node: yaml.MappingNode, where: str, depth: int, loader: _Loader
) -> Iterator[tuple[yaml.Node, str, int]]:
    first: dict[tuple[str, str], yaml.Node] = {}
    for key, value in node.value:
        if key.tag == _MERGE:  # `<<: *defaults` overrides by design: not a duplicate
            yield value, where, depth + 1
            continue
        if not isinstance(key, yaml.ScalarNode):
            raise PolicyFileError(
                f"{path}: {where or '(top level)'} ({_line(key)}): a key must be a plain name, "
                "not a list or mapping"
            )
        label = _field(where, key.value if len(key.value) <= 64 else key.value[:64] + "…")
        ident = (key.tag, key.value)
        if ident in first:
            raise PolicyFileError(
                f"{path}: {label}: duplicate key ({_line(key)} repeats {_line(first[ident])}); "
                "YAML would silently keep only the last one: merge them into one"
            )
        first[ident] = key
        _check_scalar(path, key, label, loader)
        yield value, label, depth + 1


def _check_scalar(path: Path, node: yaml.ScalarNode, where: str, loader: _Loader) -> None:
    if node.tag == _INT:
        digits = sum(c.isdigit() for c in node.value)
        if digits > MAX_DIGITS:
            raise PolicyFileError(
                f"{path}: {where} ({_line(node)}): an integer of {digits} digits; a policy "
                f"number has at most {MAX_DIGITS}"
            )
    elif node.tag == _FLOAT:
        value = loader.construct_yaml_float(node)
        if not math.isfinite(value):
            raise PolicyFileError(
                f"{path}: {where} ({_line(node)}): {node.value!r} is not a finite number "
                "(infinity, NaN, or too large to represent)"
            )


def read_document(path: str | Path) -> Any:
    """The file's single YAML document as plain data; PolicyFileError on any hostile input."""
    path = Path(path)
    text = _decode(path, _read_bytes(path))
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise PolicyFileError(f"{path}: the file is empty: a policy needs at least `kpis:`")
        _walk(path, root, loader)
        return loader.construct_document(root)
    except _TooDeep as exc:
        raise PolicyFileError(
            f"{path}: {exc.where}… (line {exc.mark.line + 1}): nested more than {MAX_DEPTH} "
            "levels deep, and no policy field nests that far"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyFileError(f"{path}: not valid YAML{where}: {problem}") from None
    finally:
        loader.dispose()


def non_finite_fields(value: Any, where: str = "") -> list[str]:
    """Field paths of every infinite or NaN float in a validated model (strings like "inf" pass
    pydantic's float fields, and a policy number that is not finite means nothing)."""
    found: list[str] = []
    if isinstance(value, float):
        if not math.isfinite(value):
            found.append(where or "(top level)")
    elif isinstance(value, BaseModel):
        for field_name in type(value).model_fields:
            found += non_finite_fields(getattr(value, field_name), _field(where, field_name))
    elif isinstance(value, dict):
        for key, item in value.items():
            found += non_finite_fields(item, _field(where, str(key)))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            name = getattr(item, "name", None)
            label = f" ({name})" if isinstance(name, str) else ""
            found += non_finite_fields(item, f"{where}[{index}]{label}")
    return found

"""Secrets for the router and the relay from the environment or a mounted file, never argv only.

`NAME` holds the value itself; `NAME_FILE` names a file holding it (a Kubernetes secret mount).
A command-line flag, where one exists, still wins, but its help says argv is visible to every
user of the machine (`ps`). (A shared kpigate/secrets.py is planned; this stays private until.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


class SecretError(ValueError):
    """A secret's file is named but cannot be read."""


def from_env(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of `name`, else the stripped content of the file `name`_FILE, else None."""
    env = os.environ if environ is None else environ
    value = env.get(name)
    if value:
        return value.strip()
    path = env.get(f"{name}_FILE")
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError(f"{name}_FILE={path}: cannot read it ({type(exc).__name__})") from None
    return text or None


def help_text(name: str, what: str) -> str:
    return f"{what}: set {name}, or {name}_FILE to a file holding it"

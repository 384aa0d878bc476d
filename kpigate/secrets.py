"""Secrets from the environment or from a file, never only from argv (which `ps` shows to every
user of the machine and shells keep in their history).

For a secret NAME (e.g. KPIGATE_ARGO_TOKEN): the flag, if a command still offers one, else the
NAME variable, else the file named by NAME_FILE (a mounted Kubernetes secret or a file of mode
0600). A trailing newline in the file is dropped, since `echo` and editors add one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

MAX_SECRET_BYTES = 64 * 1024  # a token or a URL; a larger file is the wrong file


class SecretError(ValueError):
    """A secret was given ambiguously or its file cannot be read; names the variable, never
    the value."""


def secret_help(name: str, what: str = "the secret") -> str:
    """The --help sentence for a secret, so every command says it the same way."""
    return f"{what}; better set {name} or {name}_FILE (a file holding it): argv is visible in ps"


def read_secret(
    name: str, flag: str | None = None, env: Mapping[str, str] | None = None
) -> str | None:
    """The secret's value, or None when it is not given at all.

    `flag`: the value from a command-line option, which wins when given (an explicit choice).
    Both NAME and NAME_FILE set is refused: which one is meant cannot be guessed.
    """
    if flag:
        return flag
    env = os.environ if env is None else env
    direct, file_name = env.get(name) or None, env.get(f"{name}_FILE") or None
    if direct is not None and file_name is not None:
        raise SecretError(f"both {name} and {name}_FILE are set: unset one of them")
    if direct is not None:
        return direct
    if file_name is None:
        return None
    try:
        with Path(file_name).open("rb") as handle:
            data = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise SecretError(f"{name}_FILE={file_name}: cannot read it ({exc.strerror})") from None
    if len(data) > MAX_SECRET_BYTES:
        raise SecretError(f"{name}_FILE={file_name}: larger than {MAX_SECRET_BYTES} bytes")
    try:
        value = data.decode("utf-8").removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError:
        raise SecretError(f"{name}_FILE={file_name}: not UTF-8 text") from None
    if not value:
        raise SecretError(f"{name}_FILE={file_name}: the file is empty")
    return value

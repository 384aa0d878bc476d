"""The console channel: one line per message on stderr, for when no chat is configured."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TextIO

from kpigate.notify.base import Severity


def _value(text: str) -> str:
    text = " ".join(str(text).split())  # one line, whatever the reason text holds
    return f'"{text}"' if (" " in text or not text) else text


def console_line(severity: Severity, message: str, fields: Mapping[str, str]) -> str:
    stamp = datetime.now(UTC).strftime("%H:%M:%SZ")
    parts = [f"{stamp} kpigate {Severity(severity).value.upper():8s}", " ".join(message.split())]
    parts.extend(f"{key}={_value(value)}" for key, value in fields.items())
    return "  ".join(parts)


class ConsoleNotifier:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream  # None: whatever sys.stderr is at post time (pytest swaps it)

    def post(self, severity: Severity, message: str, fields: Mapping[str, str]) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        print(console_line(severity, message, fields), file=stream, flush=True)

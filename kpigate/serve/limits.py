"""Request limits: a capped, timed body read, bounded JSON nesting, and a header read timeout.

Each refusal is a BodyError with its HTTP status and a message naming the limit and its setting,
so a client that hits one knows what to change. The limits live in ServeConfig and the
`kpigate serve` flags; their defaults are in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import ClientDisconnect, Request


class BodyError(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The whole body, refused with 413 past `max_bytes` (before reading on, when the client
    declares its length) and with 408 when it does not arrive within `timeout_s`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyError(413, f"request body is larger than the limit of {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise BodyError(
                        413, f"request body is larger than the limit of {max_bytes} bytes"
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise BodyError(408, f"request body not received within {timeout_s:g}s") from None
    except ClientDisconnect:
        raise BodyError(400, "the client disconnected while sending the body") from None
    return b"".join(chunks)


def parse_json(body: bytes, max_depth: int) -> Any:
    """JSON with at most `max_depth` levels of arrays and objects, else BodyError(400)."""
    deep = BodyError(400, f"JSON is nested deeper than the limit of {max_depth} levels")
    try:
        value = json.loads(body)
    except RecursionError:
        raise deep from None
    except ValueError:  # also invalid UTF-8 and integers too long to convert
        raise BodyError(400, "request body is not valid JSON") from None
    if _depth_exceeds(value, max_depth):
        raise deep
    return value


def _depth_exceeds(value: Any, max_depth: int) -> bool:
    # Iterative: the check itself must not recurse on hostile input.
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth + 1 > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


async def read_json(request: Request, max_bytes: int, timeout_s: float, max_depth: int) -> Any:
    return parse_json(await read_body(request, max_bytes, timeout_s), max_depth)


def header_timeout_protocol(timeout_s: float) -> type:
    """uvicorn's httptools protocol, closing a connection whose request headers take longer
    than `timeout_s` (a client dribbling headers would otherwise hold it open forever;
    uvicorn's own keep-alive timeout covers only idle connections)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            idle = self.cycle is None or self.cycle.response_complete
            if idle and not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol

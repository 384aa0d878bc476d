"""The authenticated admin API: read and set weight and mode, detach the candidate, reload models.

Every endpoint needs `Authorization: Bearer <token>` with the token from KPIGATE_ADMIN_TOKEN or
the file named by KPIGATE_ADMIN_TOKEN_FILE (a mounted secret). Changes apply to the next request
and are written to the database first, so a restarted router comes back in the same state.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kpigate.serve.config import MODES, TOKEN_ENV, TOKEN_FILE_ENV, read_admin_token
from kpigate.serve.loader import ModelLoadError
from kpigate.serve.router import RouterCore, StateConflict

Handler = Callable[[Request], Awaitable[Response]]


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def authenticated(handler: Handler) -> Handler:
    async def wrapper(request: Request) -> Response:
        expected = read_admin_token()
        if expected is None:
            return _error(
                503,
                f"admin API disabled: set {TOKEN_ENV} or {TOKEN_FILE_ENV} for the router",
            )
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return JSONResponse(
                {"error": "missing admin token: send 'Authorization: Bearer <token>'"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(given.strip().encode(), expected.encode()):
            return JSONResponse(
                {"error": "wrong admin token"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    return wrapper


def admin_routes(core: RouterCore) -> list[Route]:
    @authenticated
    async def get_state(request: Request) -> Response:
        return JSONResponse(core.describe())

    @authenticated
    async def put_state(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, 'body must be JSON like {"weight": 25, "mode": "canary"}')
        if not isinstance(body, dict) or not body or set(body) - {"weight", "mode"}:
            return _error(422, "body must be an object with 'weight' (percent 0-100) and/or 'mode'")
        weight = body.get("weight")
        mode = body.get("mode")
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int | float)):
            return _error(422, f"weight must be a number of percent in [0, 100], got {weight!r}",
                          field="weight")  # fmt: skip
        if mode is not None and mode not in MODES:
            return _error(422, f"mode must be one of {list(MODES)}, got {mode!r}", field="mode")
        try:
            await run_in_threadpool(core.set_state, None if weight is None else float(weight), mode)
        except ValueError as exc:
            return _error(422, str(exc), field="weight")
        except StateConflict as exc:
            return _error(409, str(exc))
        return JSONResponse(core.describe())

    @authenticated
    async def detach(request: Request) -> Response:
        await run_in_threadpool(core.detach)
        return JSONResponse(core.describe())

    @authenticated
    async def reload(request: Request) -> Response:
        try:
            await run_in_threadpool(core.reload)
        except ModelLoadError as exc:
            return _error(502, f"reload failed, still serving the previous models: {exc}")
        return JSONResponse(core.describe())

    @authenticated
    async def get_faults(request: Request) -> Response:
        return JSONResponse(asdict(core.faults))

    @authenticated
    async def put_faults(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, 'body must be JSON like {"candidate_delay_ms": 80}')
        allowed = {"candidate_delay_ms", "candidate_error_share"}
        if not isinstance(body, dict) or set(body) - allowed:
            return _error(422, f"body must be an object with fields among {sorted(allowed)}")
        for name, value in body.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                return _error(422, f"{name} must be a non-negative number", field=name)
        if body.get("candidate_error_share", 0) > 1:
            return _error(422, "candidate_error_share is a share in [0, 1]",
                          field="candidate_error_share")  # fmt: skip
        core.faults = replace(core.faults, **{k: float(v) for k, v in body.items()})
        return JSONResponse(asdict(core.faults))

    return [
        Route("/admin/faults", get_faults, methods=["GET"]),
        Route("/admin/faults", put_faults, methods=["PUT"]),
        Route("/admin/state", get_state, methods=["GET"]),
        Route("/admin/state", put_state, methods=["PUT"]),
        Route("/admin/detach", detach, methods=["POST"]),
        Route("/admin/reload", reload, methods=["POST"]),
    ]

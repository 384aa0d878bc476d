"""The authenticated admin API: read and set weight and mode, detach the candidate, reload models.

Every endpoint needs `Authorization: Bearer <token>` with the token from KPIGATE_ADMIN_TOKEN or
the file named by KPIGATE_ADMIN_TOKEN_FILE (a mounted secret). A change is written to the shared
database first (so a restarted router comes back in the same state), applied here, and answered
only once every live replica has applied it; otherwise 503 names the replicas that lag.
"""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kpigate.serve.config import MODES, TOKEN_ENV, TOKEN_FILE_ENV, read_admin_token
from kpigate.serve.limits import BodyError
from kpigate.serve.loader import ModelLoadError
from kpigate.serve.predlog import redacted
from kpigate.serve.router import RouterCore, StateConflict
from kpigate.serve.shared import Replica

Handler = Callable[[Request], Awaitable[Response]]
log = logging.getLogger(__name__)


def _finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _database_error(action: str, exc: Exception) -> JSONResponse:
    log.error("admin: could not %s: %s", action, redacted(exc))
    return _error(503, f"could not {action}: the shared state database is unavailable; retry")


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


def _applied(core: RouterCore, laggards: list[Replica]) -> JSONResponse:
    body = core.describe()
    if not laggards:
        return JSONResponse(body)
    names = ", ".join(
        r.replica_id + (f" ({r.error})" if r.error else f" at version {r.applied_version}")
        for r in laggards
    )
    wait = core.config.state_apply_timeout_s
    return _error(
        503,
        f"state version {core.version} is saved, but replica(s) {names} did not apply it within "
        f"{wait:g}s: they keep the old routing until they do; retry or check them",
        laggards=[r.replica_id for r in laggards],
        state=body,
    )


def admin_routes(core: RouterCore, read_body: Callable[[Request], Awaitable[Any]]) -> list[Route]:
    """`read_body` reads a request's JSON under the router's limits (BodyError otherwise)."""

    async def body_or_error(request: Request, example: str) -> Any:
        try:
            return await read_body(request)
        except BodyError as exc:
            if exc.status == 400:
                return _error(400, f"{exc.message}: send JSON like {example}")
            return _error(exc.status, exc.message)

    @authenticated
    async def get_state(request: Request) -> Response:
        try:
            replicas = await run_in_threadpool(core.replicas)
        except Exception as exc:
            log.warning("could not read the replicas: %s", redacted(exc))
            replicas = None
        return JSONResponse({**core.describe(), "replicas": replicas})

    @authenticated
    async def put_state(request: Request) -> Response:
        body = await body_or_error(request, '{"weight": 25, "mode": "canary"}')
        if isinstance(body, Response):
            return body
        if not isinstance(body, dict) or not body or set(body) - {"weight", "mode"}:
            return _error(422, "body must be an object with 'weight' (percent 0-100) and/or 'mode'")
        weight = body.get("weight")
        mode = body.get("mode")
        if weight is not None and not _finite_number(weight):
            return _error(422, f"weight must be a number of percent in [0, 100], got {weight!r}",
                          field="weight")  # fmt: skip
        if mode is not None and mode not in MODES:
            return _error(422, f"mode must be one of {list(MODES)}, got {mode!r}", field="mode")
        try:
            laggards = await run_in_threadpool(
                core.set_state, None if weight is None else float(weight), mode
            )
        except ValueError as exc:
            return _error(422, str(exc), field="weight")
        except StateConflict as exc:
            return _error(409, str(exc))
        except Exception as exc:
            return _database_error("set the state", exc)
        return _applied(core, laggards)

    @authenticated
    async def detach(request: Request) -> Response:
        try:
            laggards = await run_in_threadpool(core.detach)
        except Exception as exc:
            return _database_error("detach", exc)
        return _applied(core, laggards)

    @authenticated
    async def reload(request: Request) -> Response:
        try:
            laggards = await run_in_threadpool(core.reload)
        except ModelLoadError as exc:
            return _error(502, f"reload failed, still serving the previous models: {exc}")
        except Exception as exc:
            return _database_error("reload", exc)
        return _applied(core, laggards)

    @authenticated
    async def get_faults(request: Request) -> Response:
        return JSONResponse(asdict(core.faults))

    @authenticated
    async def put_faults(request: Request) -> Response:
        body = await body_or_error(request, '{"candidate_delay_ms": 80}')
        if isinstance(body, Response):
            return body
        allowed = {"candidate_delay_ms", "candidate_error_share"}
        if not isinstance(body, dict) or set(body) - allowed:
            return _error(422, f"body must be an object with fields among {sorted(allowed)}")
        for name, value in body.items():
            if not _finite_number(value) or value < 0:
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

"""The HTTP ceiling: a Starlette endpoint that reads the body and returns a constant.

Served by uvicorn the way `kpigate serve` is (uvloop and httptools when installed, no access
log), in its own environment with kpigate's starlette and uvicorn versions. Nothing is parsed or
scored, so no server doing real work on the same requests can be faster.

usage: python ceiling.py PORT
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ANSWER = b'{"score": 0.5, "decision": "approve"}'


async def predict(request: Request) -> Response:
    await request.body()
    return Response(ANSWER, media_type="application/json")


def main() -> None:
    app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)


if __name__ == "__main__":
    main()

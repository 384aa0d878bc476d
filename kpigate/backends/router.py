"""The kpigate router's admin API (kpigate/serve/admin.py) over HTTP.

The router keeps (weight, mode, detached) and persists them, so every call here is idempotent:
PUT sets absolute values, and detaching twice is the same as once. The state is shared by every
replica through the router's database: the replica that takes a change answers only once every
live replica has applied it, and otherwise 503 with the laggards, which fails the call here
naming them (kpigate/serve/admin.py), so a step never goes on while a replica routes the old way.
"""

from __future__ import annotations

import os
from typing import Any

from kpigate.backends.base import BackendError, BackendSettings, check_percent
from kpigate.errors import Kind, kind_of_status

# The admin paths, in one place (they mirror kpigate.serve.admin.admin_routes; a test checks).
STATE_PATH = "/admin/state"  # GET: state; PUT {"weight": percent, "mode": "canary"|"shadow"}
DETACH_PATH = "/admin/detach"  # POST: weight 0 and the candidate unloaded
RELOAD_PATH = "/admin/reload"  # POST: re-resolve the champion and candidate aliases
TOKEN_ENV = "KPIGATE_ADMIN_TOKEN"


class RouterBackend:
    def __init__(self, settings: BackendSettings, client: Any = None) -> None:
        """`client`: an httpx.Client to use instead of a new one (tests, connection reuse)."""
        token = settings.admin_token or os.environ.get(TOKEN_ENV)
        if not token:
            raise BackendError(
                f"the router backend needs the router's admin token: set {TOKEN_ENV} "
                "(in the workflow it comes from the secret kpigate-router-admin)",
                kind=Kind.BAD_INPUT,
            )
        self.url = settings.router_url.rstrip("/")
        if client is None:
            try:
                import httpx
            except ImportError:  # pragma: no cover - depends on the installed extras
                raise BackendError(
                    "the router backend needs httpx: pip install 'kpigate[serve]' or httpx"
                ) from None
            client = httpx.Client(timeout=settings.timeout_s)
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self.url + path
        try:
            response = self.client.request(method, url, json=body, headers=self.headers)
        except Exception as exc:  # httpx.HTTPError and OS errors alike
            raise BackendError(
                f"cannot reach the router admin API at {url}: {exc}; check --router-url "
                "and that the router is running",
                kind=Kind.UNAVAILABLE,
            ) from None
        try:
            data = response.json()
        except ValueError:
            data = {"error": response.text[:300]}
        if response.status_code == 401:
            raise BackendError(
                f"the router at {self.url} refused the admin token ({data.get('error')}): "
                f"set {TOKEN_ENV} to the router's token",
                kind=Kind.REFUSED,
            )
        laggards = data.get("laggards") if isinstance(data, dict) else None
        if response.status_code == 503 and laggards:
            raise BackendError(
                f"{method} {url}: the change is saved but not applied by every router replica: "
                f"{data.get('error')} (lagging: {', '.join(map(str, laggards))})"
            )
        if response.status_code >= 400:
            raise BackendError(
                f"{method} {url} failed (HTTP {response.status_code}): {data.get('error', data)}",
                kind=kind_of_status(response.status_code),
            )
        if not isinstance(data, dict):
            raise BackendError(
                f"{method} {url}: expected a JSON object, got {data!r}", kind=Kind.UNAVAILABLE
            )
        return data

    def state(self) -> dict[str, Any]:
        return self._call("GET", STATE_PATH)

    def get_weight(self) -> float:
        state = self.state()
        return 0.0 if state.get("detached") else float(state.get("weight", 0.0))

    def set_weight(self, percent: float) -> None:
        self._call("PUT", STATE_PATH, {"weight": check_percent(percent)})

    def set_mirror(self, on: bool) -> None:
        self._call("PUT", STATE_PATH, {"mode": "shadow" if on else "canary"})

    def detach(self) -> None:
        self._call("POST", DETACH_PATH)

    def promoted(self) -> None:
        """After the champion alias moved to the candidate: serve it as the baseline.

        Reload first (the baseline arm becomes the new champion), then detach the candidate
        arm, which held the same version: no request is ever served by the old model again.
        """
        self._call("POST", RELOAD_PATH)
        self._call("POST", DETACH_PATH)

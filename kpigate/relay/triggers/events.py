"""Forward an approved version to the Argo Events webhook EventSource (manifests/argo-events/).

The body has MLflow's own webhook envelope, `{entity, action, timestamp, data: {name, version}}`
(mlflow/webhooks/delivery.py), so the Sensor reads one set of paths, `body.data.name` and
`body.data.version`, whether an event comes from this relay or was captured from MLflow. The
EventSource checks only a bearer token (`authSecret`) and cannot verify MLflow's HMAC: the relay
is the only verified path, and the EventSource must stay cluster-internal (docs/pipeline.md).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from kpigate.relay.triggers.base import TriggerError

TOKEN_ENV = "KPIGATE_EVENTS_TOKEN"
# Not an MLflow event kind: the relay has already verified and approved the version.
ENTITY, ACTION = "model_version", "approved"


def envelope(model_name: str, model_version: str) -> dict[str, Any]:
    """The event the Sensor sees as `body`."""
    return {
        "entity": ENTITY,
        "action": ACTION,
        "timestamp": datetime.now(UTC).isoformat(),
        "data": {"name": model_name, "version": model_version},
    }


class ArgoEventsTrigger:
    name = "argo-events"

    def __init__(self, url: str, token: str = "", timeout_s: float = 10.0) -> None:
        self.url, self.token, self.timeout_s = url, token, timeout_s

    def start(self, model_name: str, model_version: str) -> str:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            response = httpx.post(
                self.url,
                json=envelope(model_name, model_version),
                headers=headers,
                timeout=self.timeout_s,
            )
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise TriggerError(f"Argo Events at {self.url} did not take the event: {exc}") from None
        return f"event sent to {self.url}"

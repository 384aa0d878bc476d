"""Forward the approved version to an Argo Events webhook EventSource (manifests/argo-events/)."""

from __future__ import annotations

import httpx

from kpigate.relay.triggers.base import TriggerError


class ArgoEventsTrigger:
    name = "argo-events"

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url, self.timeout_s = url, timeout_s

    def start(self, model_name: str, model_version: str) -> str:
        body = {"model_name": model_name, "model_version": model_version}
        try:
            response = httpx.post(self.url, json=body, timeout=self.timeout_s)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise TriggerError(f"Argo Events at {self.url} did not take the event: {exc}") from None
        return f"event sent to {self.url}"

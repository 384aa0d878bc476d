"""Gate decisions as Grafana annotations on the rollout dashboard, through Grafana's HTTP API.

Configured from the environment, like the other notification channels (kpigate/notify/):

  KPIGATE_GRAFANA_URL            Grafana's base URL, e.g. https://grafana.example.com
  KPIGATE_GRAFANA_TOKEN          a service-account token (or KPIGATE_GRAFANA_TOKEN_FILE=/path)
  KPIGATE_GRAFANA_DASHBOARD_UID  the dashboard to annotate (default: kpigate-rollout)

Each notified decision (a stage passed, a hold on a failing KPI, a rollback, a suspension; not
the routine soaking looks) becomes one `POST /api/annotations` with the documented body
{dashboardUID, time (epoch ms), tags, text} (Grafana's "Annotations HTTP API", legacy /api
form, which every Grafana since 6 accepts). Tags are `kpigate`, the kind and severity, and
`rollout:<id>`: the dashboard's "Gate decisions" annotation query shows tag `kpigate`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from kpigate.notify.base import KIND_FIELD, ROLLOUT_FIELD, NotifyError, Severity

URL_ENV = "KPIGATE_GRAFANA_URL"
TOKEN_ENV = "KPIGATE_GRAFANA_TOKEN"
DASHBOARD_ENV = "KPIGATE_GRAFANA_DASHBOARD_UID"
ANNOTATIONS_PATH = "/api/annotations"
DEFAULT_DASHBOARD_UID = "kpigate-rollout"  # kpigate/observability/dashboard.py UID


class GrafanaAnnotator:
    """A notifier (kpigate/notify/base.py) whose messages are dashboard annotations."""

    def __init__(
        self,
        url: str,
        token: str,
        dashboard_uid: str = DEFAULT_DASHBOARD_UID,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise NotifyError(f"{URL_ENV}={url!r} is not an http(s) URL")
        self.endpoint = url.rstrip("/") + ANNOTATIONS_PATH
        self.dashboard_uid = dashboard_uid
        self.client = client or httpx.Client(timeout=10)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.clock = clock

    def body(self, severity: Severity, message: str, fields: Mapping[str, str]) -> dict[str, Any]:
        tags = ["kpigate", str(severity)]
        if fields.get(KIND_FIELD):
            tags.append(str(fields[KIND_FIELD]))
        if fields.get(ROLLOUT_FIELD):
            tags.append(f"rollout:{fields[ROLLOUT_FIELD]}")
        return {
            "dashboardUID": self.dashboard_uid,
            "time": int(self.clock() * 1000),
            "tags": tags,
            "text": message,
        }

    def post(self, severity: Severity, message: str, fields: Mapping[str, str]) -> None:
        try:
            response = self.client.post(
                self.endpoint, json=self.body(severity, message, fields), headers=self.headers
            )
        except httpx.HTTPError as exc:
            raise NotifyError(f"Grafana at {self.endpoint} unreachable: {exc}") from None
        if response.status_code != 200:
            said = " ".join(response.text.split())[:200]  # one line for the log
            raise NotifyError(
                f"Grafana refused the annotation: HTTP {response.status_code} {said} "
                "(check the URL and the token's annotations:write permission)"
            )


def annotator_from_env(
    env: Mapping[str, str], read_secret: Callable[[Mapping[str, str], str], str | None]
) -> GrafanaAnnotator | None:
    """None unless KPIGATE_GRAFANA_URL is set; the token is required with it."""
    url = env.get(URL_ENV, "").strip()
    if not url:
        return None
    token = read_secret(env, TOKEN_ENV)
    if not token:
        raise NotifyError(f"{URL_ENV} is set but neither {TOKEN_ENV} nor {TOKEN_ENV}_FILE is")
    return GrafanaAnnotator(url, token, env.get(DASHBOARD_ENV, "").strip() or DEFAULT_DASHBOARD_UID)

"""Seldon Core v1's request logger (a graph node's `logger`), as its executor sends events.

From SeldonIO/seldon-core v1.17.1 executor/logger/worker.go and executor/predictor/
predictor_process.go: one binary-mode CloudEvent per request and per response of a graph node,
each with a fresh `ce-id`; the pair is joined by `ce-requestid`, the request's Seldon-Puid.
`ce-type` io.seldon.serving.inference.request / .response (and .feedback, skipped here);
`ce-source` the executor's URL; extensions `ce-modelid` (the graph node), `ce-requestid`,
`ce-inferenceservicename` (the SeldonDeployment), `ce-namespace`, `ce-endpoint` (the predictor's
name), `ce-protocol`. The Go SDK stamps `ce-time` when it sends, so the gap between the two
events only approximates the latency: it is logged, not exported as a latency metric.
Send labels for the Seldon-Puid (set the header on your request to your transaction id).
"""

from __future__ import annotations

from kpigate.collector.events import EventError, Kind

NAME = "seldon"
REQUEST = "io.seldon.serving.inference.request"
RESPONSE = "io.seldon.serving.inference.response"
FEEDBACK = "io.seldon.serving.feedback"
EXACT_TIMES = False
ARM_ATTRIBUTES = ("inferenceservicename", "namespace", "endpoint", "modelid", "source")
DEFAULT_MATCH = {"baseline": "endpoint=baseline", "candidate": "endpoint=candidate"}


def kind_and_pair(attributes: dict[str, str]) -> tuple[Kind | None, str]:
    kind = attributes["type"]
    if kind == FEEDBACK:
        return None, ""
    if kind not in (REQUEST, RESPONSE):
        raise EventError(
            400, f"ce-type {kind[:80]!r} is not a Seldon inference request or response ({REQUEST})"
        )
    puid = attributes.get("requestid")
    if not puid:
        raise EventError(400, "Seldon event without ce-requestid: the pair cannot be joined")
    return ("request" if kind == REQUEST else "response"), puid

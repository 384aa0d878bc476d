"""KServe's InferenceService payload logger (`spec.predictor.logger`), as it sends its events.

From kserve/kserve pkg/logger/worker.go and handler.go: one binary-mode CloudEvent for the
request and one for the response (the response only when the model answered 200), both with
`ce-id` = the request's `Ce-Id` header or a fresh UUID, so the pair shares its id; `ce-type`
org.kubeflow.serving.inference.request / .response; `ce-source` the pod; `ce-time` when the
request arrived / the response left; extensions `ce-inferenceservicename`, `ce-namespace`,
`ce-component` (predictor, transformer, ...), `ce-endpoint` (the pod's `endpoint` label, e.g.
default or canary), `ce-metadata`, `ce-recordedtime`. Send labels for `ce-id`, so give each
inference request a `Ce-Id` header with your transaction id.
"""

from __future__ import annotations

from kpigate.collector.events import EventError, Kind

NAME = "kserve"
REQUEST = "org.kubeflow.serving.inference.request"
RESPONSE = "org.kubeflow.serving.inference.response"
# ce-time is when the request arrived and when the response left: their gap is the latency.
EXACT_TIMES = True
# The attributes an arm is recognised by (--baseline-match / --candidate-match).
ARM_ATTRIBUTES = ("inferenceservicename", "namespace", "component", "endpoint", "source")
DEFAULT_MATCH = {"baseline": "endpoint=default", "candidate": "endpoint=canary"}


def kind_and_pair(attributes: dict[str, str]) -> tuple[Kind | None, str]:
    """(request | response, the id joining the pair); None for a type this collector skips."""
    kind = attributes["type"]
    if kind == REQUEST:
        return "request", attributes["id"]
    if kind == RESPONSE:
        return "response", attributes["id"]
    raise EventError(
        400, f"ce-type {kind[:80]!r} is not a KServe inference request or response ({REQUEST})"
    )

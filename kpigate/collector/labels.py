"""/feedback for the collector: the router's joiner (kpigate/serve/feedback.py), plus parking.

A payload logger delivers a prediction after it was served, so a label can arrive first. The
router would answer such a label `unknown`; the collector parks it (result `pending`) and joins
it, with the joiner and its rules (late, before the prediction, duplicate), when the prediction
lands (app.py). Labels name predictions as ids.py says; they are joined in the log's id form.
"""

from __future__ import annotations

from typing import Any

from kpigate.collector.ids import log_id
from kpigate.collector.store import PairStore
from kpigate.serve.feedback import (
    MAX_PROBLEMS_REPORTED,
    REQUEST_ID_MAX,
    RESULTS,
    FeedbackJoiner,
    FeedbackReport,
    shown,
)


def _mapped(item: Any) -> Any:
    """The item with its request id in the log's form; anything malformed is left for the
    joiner to refuse with its own message."""
    if not isinstance(item, dict):
        return item
    rid = item.get("request_id")
    if not isinstance(rid, str) or not rid or len(rid) > REQUEST_ID_MAX:
        return item
    if not rid.isascii() or not rid.isprintable():
        return item
    return {**item, "request_id": log_id(rid)}


class LabelDesk:
    def __init__(
        self, joiner: FeedbackJoiner, store: PairStore, keep_s: float, max_parked: int
    ) -> None:
        self.joiner = joiner
        self.store = store
        self.keep_s = keep_s  # a parked label older than the label window is dropped
        self.max_parked = max_parked  # beyond it a label that would be parked is dropped

    def receive(self, items: list[Any], now: float) -> tuple[FeedbackReport, int, int]:
        """Blocking. Join what can be joined, park labels of predictions not logged yet (as
        many as there is room for); returns the combined report (its `unknown` are the labels
        neither joined nor parked), how many were parked and how many dropped for want of
        room."""
        self.store.expire_parked(now - self.keep_s)
        total = FeedbackReport(received=len(items))
        pending = dropped_total = 0
        # The joiner lists at most MAX_PROBLEMS_REPORTED problems per call; in chunks of that
        # size every unknown label is listed, and so can be parked.
        for start in range(0, len(items), MAX_PROBLEMS_REPORTED):
            chunk = items[start : start + MAX_PROBLEMS_REPORTED]
            mapped = [_mapped(item) for item in chunk]
            report = self.joiner.join(mapped, now)
            park: list[dict[str, Any]] = []
            waiting: list[dict[str, Any]] = []
            for problem in report.problems:
                original = chunk[problem["index"]]
                rid = original.get("request_id") if isinstance(original, dict) else None
                problem["request_id"] = shown(rid)
                if problem["result"] == "unknown":
                    item = mapped[problem["index"]]
                    park.append({
                        "request_id": item["request_id"], "label": item["label"],
                        "labeled_at": float(item.get("labeled_at", now)),
                    })  # fmt: skip
                    waiting.append(problem)
                problem["index"] += start
            again, dropped = self.store.park(park, now, self.max_parked) if park else (set(), set())
            for problem, item in zip(waiting, park, strict=True):
                if item["request_id"] in again:
                    problem["result"] = "duplicate"
                    problem["detail"] = "already waiting for its prediction"
                elif item["request_id"] in dropped:
                    problem["detail"] = (
                        f"no prediction logged with this id, and {self.max_parked} labels "
                        "already wait for theirs (--max-parked-labels): dropped"
                    )
                else:
                    problem["result"] = "pending"
                    problem["detail"] = "no prediction logged with this id yet: joined when it is"
            parked = len(park) - len(again) - len(dropped)
            pending += parked
            dropped_total += len(dropped)
            for name in RESULTS:
                setattr(total, name, getattr(total, name) + getattr(report, name))
            total.unknown -= len(park) - len(dropped)
            total.duplicate += len(again)
            total.joined_rows += report.joined_rows
            room = MAX_PROBLEMS_REPORTED - len(total.problems)
            total.problems += report.problems[: max(room, 0)]
        return total, pending, dropped_total

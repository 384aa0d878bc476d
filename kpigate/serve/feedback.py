"""Joins delayed ground-truth labels to logged predictions, exactly once per prediction.

The arbiter of "exactly once" is the database: `UPDATE .. WHERE request_id = ? AND label IS NULL`
succeeds for one caller only, so a label sent twice, concurrently or from two router replicas,
is counted once. The metrics are updated only for rows this call actually joined.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update

from kpigate.serve.predlog import PredictionLog

MAX_PROBLEMS_REPORTED = 100


@dataclass
class FeedbackReport:
    received: int = 0
    joined: int = 0
    unknown: int = 0
    duplicate: int = 0
    invalid: int = 0
    late: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)
    # Newly labeled prediction rows (served and shadow copies) with their label and lag.
    joined_rows: list[tuple[dict[str, Any], int, float | None]] = field(default_factory=list)

    def add(self, result: str, index: int, request_id: Any, detail: str | None = None) -> None:
        setattr(self, result, getattr(self, result) + 1)
        if result != "joined" and len(self.problems) < MAX_PROBLEMS_REPORTED:
            problem = {"index": index, "request_id": request_id, "result": result}
            if detail:
                problem["detail"] = detail
            self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "joined": self.joined,
            "unknown": self.unknown,
            "duplicate": self.duplicate,
            "invalid": self.invalid,
            "late": self.late,
            "problems": self.problems,
        }


def parse_items(payload: Any) -> list[Any]:
    """A single {request_id, label} object or {"labels": [...]} or a bare list."""
    if isinstance(payload, dict) and "labels" in payload:
        items = payload["labels"]
        if not isinstance(items, list):
            raise ValueError("'labels' must be a list of {request_id, label} objects")
        return items
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        return [payload]
    raise ValueError('expected {request_id, label}, a list of them, or {"labels": [...]}')


class FeedbackJoiner:
    def __init__(self, predlog: PredictionLog, label_window_s: float) -> None:
        self.predlog = predlog
        self.label_window_s = label_window_s
        # Serialises joins in this process so SQLite never sees two writers racing a snapshot.
        self._lock = threading.Lock()

    def join(self, items: list[Any], now: float) -> FeedbackReport:
        """Blocking: run in a worker thread."""
        report = FeedbackReport(received=len(items))
        wanted: dict[str, tuple[int, int]] = {}
        for index, item in enumerate(items):
            rid = item.get("request_id") if isinstance(item, dict) else None
            label = item.get("label") if isinstance(item, dict) else None
            if not isinstance(rid, str) or not rid:
                report.add("invalid", index, rid, "request_id must be a non-empty string")
            elif isinstance(label, bool) or label not in (0, 1) or not isinstance(label, int):
                report.add("invalid", index, rid, f"label must be 0 or 1, got {label!r}")
            elif rid in wanted:
                report.add("duplicate", index, rid, "repeated within this request")
            else:
                wanted[rid] = (index, label)
        if not wanted:
            return report
        # Rows still in the write buffer must be visible before we look for them.
        self.predlog.flush()
        table = self.predlog.tables.predictions
        cutoff = now - self.label_window_s
        with self._lock, self.predlog.engine.begin() as conn:
            found: dict[str, list[dict[str, Any]]] = {}
            ids = list(wanted)
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                for row in conn.execute(select(table).where(table.c.request_id.in_(chunk))):
                    found.setdefault(row.request_id, []).append(dict(row._mapping))
            for rid, (index, label) in wanted.items():
                rows = found.get(rid)
                if not rows:
                    report.add("unknown", index, rid, "no logged prediction with this request_id")
                    continue
                if any(r["label"] is not None for r in rows):
                    report.add("duplicate", index, rid, "already labeled")
                    continue
                served = min(rows, key=lambda r: bool(r["shadow"]))
                if served["created_at"] < cutoff:
                    report.add("late", index, rid, "past the label window; not counted")
                    continue
                done = conn.execute(
                    update(table)
                    .where(table.c.request_id == rid, table.c.label.is_(None))
                    .values(label=label, labeled_at=now)
                ).rowcount
                if not done:
                    report.add("duplicate", index, rid, "labeled concurrently")
                    continue
                report.add("joined", index, rid)
                for r in rows:
                    lag = None if r["shadow"] else now - r["created_at"]
                    report.joined_rows.append((r, label, lag))
        return report

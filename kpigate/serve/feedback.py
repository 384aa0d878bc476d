"""Joins delayed ground-truth labels to logged predictions, exactly once per prediction.

The arbiter of "exactly once" is the database: `UPDATE .. WHERE request_id = ? AND label IS NULL`
succeeds for one caller only, so a label sent twice, concurrently or to two router replicas, is
counted once. The metrics are updated only for rows this call actually joined. A shadow copy
logged after its label arrived is labelled when it lands (kpigate/serve/predlog.py).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from kpigate.serve.predlog import PredictionLog

MAX_PROBLEMS_REPORTED = 100


RESULTS = ("joined", "unknown", "duplicate", "invalid", "late", "before_prediction")
REQUEST_ID_MAX = 64
# A label time this far ahead of the router's clock is refused as invalid (clock skew allowed).
FUTURE_SKEW_S = 300.0


def shown(value: Any, limit: int = 64) -> Any:
    """A client's value as echoed in a report: strings cut and escaped (no lone surrogates)."""
    if isinstance(value, str) and len(value) <= limit and value.isascii():
        return value
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class FeedbackReport:
    received: int = 0
    joined: int = 0
    unknown: int = 0
    duplicate: int = 0
    invalid: int = 0
    late: int = 0
    # labeled_at earlier than the prediction it labels: not joined.
    before_prediction: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)
    # Newly labeled prediction rows (served and shadow copies) with their label and lag.
    joined_rows: list[tuple[dict[str, Any], int, float | None]] = field(default_factory=list)

    def add(self, result: str, index: int, request_id: Any, detail: str | None = None) -> None:
        setattr(self, result, getattr(self, result) + 1)
        if result != "joined" and len(self.problems) < MAX_PROBLEMS_REPORTED:
            problem = {"index": index, "request_id": shown(request_id), "result": result}
            if detail:
                problem["detail"] = detail
            self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ("received", *RESULTS, "problems")}


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


@dataclass(frozen=True)
class Wanted:
    index: int
    label: int
    labeled_at: float


def _check(item: Any, now: float) -> tuple[str, Wanted | None, str]:
    """(request_id or '', the label to join, or None and why it is invalid)."""
    rid = item.get("request_id") if isinstance(item, dict) else None
    label = item.get("label") if isinstance(item, dict) else None
    at = item.get("labeled_at", now) if isinstance(item, dict) else now
    if not isinstance(rid, str) or not rid:
        return "", None, "request_id must be a non-empty string"
    if len(rid) > REQUEST_ID_MAX or not rid.isascii() or not rid.isprintable():
        return "", None, f"request_id must be printable ASCII of at most {REQUEST_ID_MAX} chars"
    if isinstance(label, bool) or not isinstance(label, int) or label not in (0, 1):
        return rid, None, f"label must be 0 or 1, got {shown(label)}"
    if isinstance(at, bool) or not isinstance(at, int | float):
        return rid, None, "labeled_at must be a Unix time in seconds"
    try:
        stamp = float(at)
    except OverflowError:
        stamp = math.inf
    if not math.isfinite(stamp) or stamp < 0 or stamp > now + FUTURE_SKEW_S:
        return rid, None, "labeled_at must be a Unix time in seconds, not in the future"
    return rid, Wanted(-1, label, stamp), ""


class FeedbackJoiner:
    def __init__(self, predlog: PredictionLog, label_window_s: float) -> None:
        self.predlog = predlog
        self.label_window_s = label_window_s

    def join(self, items: list[Any], now: float) -> FeedbackReport:
        """Blocking: run in a worker thread. Every prediction row is committed before its
        answer leaves, so the row of any request id a client holds is already visible here,
        whichever replica served it."""
        report = FeedbackReport(received=len(items))
        wanted: dict[str, Wanted] = {}
        for index, item in enumerate(items):
            rid, ok, why = _check(item, now)
            if ok is None:
                report.add(
                    "invalid",
                    index,
                    rid or (item.get("request_id") if isinstance(item, dict) else None),
                    why,
                )
            elif rid in wanted:
                report.add("duplicate", index, rid, "repeated within this request")
            else:
                wanted[rid] = Wanted(index, ok.label, ok.labeled_at)
        if not wanted:
            return report
        lock = self.predlog.write_lock if self.predlog.is_sqlite else contextlib.nullcontext()
        with lock, self.predlog.engine.begin() as conn:
            self._join(conn, wanted, now, report)
        return report

    def _join(
        self, conn: Connection, wanted: dict[str, Wanted], now: float, report: FeedbackReport
    ) -> None:
        table = self.predlog.tables.predictions
        cutoff = now - self.label_window_s
        served: dict[str, dict[str, Any]] = {}
        eligible: dict[str, Wanted] = {}
        ids = list(wanted)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            query = select(table).where(table.c.request_id.in_(chunk), table.c.shadow.is_(False))
            for found in conn.execute(query):
                served[found.request_id] = dict(found._mapping)
        for rid, want in wanted.items():
            row = served.get(rid)
            if row is None:
                report.add("unknown", want.index, rid, "no logged prediction with this request_id")
                continue
            if row["label"] is not None:
                report.add("duplicate", want.index, rid, "already labeled")
                continue
            if row["created_at"] < cutoff:
                report.add("late", want.index, rid, "past the label window; not counted")
                continue
            if want.labeled_at < row["created_at"]:
                report.add(
                    "before_prediction", want.index, rid,
                    "labeled_at is earlier than the prediction; not counted",
                )  # fmt: skip
                continue
            eligible[rid] = want
        # One UPDATE per (label, labeled_at) group and chunk, not one per label: RETURNING says
        # which rows this call labelled (a concurrent join took the others). Served rows first:
        # that takes their row locks, which a shadow copy landing now takes as well (predlog.py),
        # so each copy is labelled exactly once, here or when it lands.
        done: set[str] = set()
        for (label, at), rids in _groups(eligible).items():
            for start in range(0, len(rids), 500):
                done.update(self._label(conn, rids[start : start + 500], label, at, shadow=False))
        for rid, want in eligible.items():
            if rid not in done:
                report.add(
                    "duplicate", want.index, rid, "labeled concurrently, or matured meanwhile"
                )
                continue
            row = served[rid]
            report.add("joined", want.index, rid)
            report.joined_rows.append((row, want.label, want.labeled_at - row["created_at"]))
        for (label, at), rids in _groups({r: eligible[r] for r in done}).items():
            for start in range(0, len(rids), 500):
                for copy in self._label(conn, rids[start : start + 500], label, at, shadow=True):
                    report.joined_rows.append((copy, label, None))

    def _label(self, conn: Connection, rids: list[str], label: int, at: float, shadow: bool) -> Any:
        table = self.predlog.tables.predictions
        statement = (
            update(table)
            .where(table.c.request_id.in_(rids), table.c.shadow.is_(shadow))
            .where(table.c.label.is_(None))
            # A row the maturity job has counted (maturity.py) is final: a label racing that
            # claim is late, never joined after the router counted the prediction unlabeled.
            .where(table.c.matured_at.is_(None))
            .values(label=label, labeled_at=at)
        )
        if not shadow:
            return {r for (r,) in conn.execute(statement.returning(table.c.request_id))}
        return [dict(r._mapping) for r in conn.execute(statement.returning(*table.c))]


def _groups(joined: dict[str, Wanted]) -> dict[tuple[int, float], list[str]]:
    """Request ids by (label, labeled_at), sorted so concurrent joins lock rows in one order."""
    groups: dict[tuple[int, float], list[str]] = {}
    for rid, want in sorted(joined.items()):
        groups.setdefault((want.label, want.labeled_at), []).append(rid)
    return groups

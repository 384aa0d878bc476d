"""The collector's own tables, beside the prediction log: halves waiting for their pair, and
labels waiting for their prediction.

A pair row holds whichever half arrived first (a response may come before its request: the
loggers send from a queue of workers) and is marked landed once its predictions are logged, so
a redelivered half (a retry) is recognised as a duplicate, before or after landing. Labels for a
prediction that has not landed yet are parked here and joined when it lands.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine

from kpigate.collector.events import LoggedEvent


class CollectorTables:
    def __init__(self, prefix: str = "kpigate_") -> None:
        self.metadata = MetaData()
        self.pairs = Table(
            f"{prefix}collector_pairs",
            self.metadata,
            Column("pair_id", String(64), primary_key=True),
            Column("request", Text, nullable=True),  # the half as JSON until landed
            Column("response", Text, nullable=True),
            Column("received_at", Float, nullable=False),
            # Set once the pair's predictions are in the log; the halves are then cleared.
            Column("landed_at", Float, nullable=True),
            Column("rows", Integer, nullable=True),
        )
        self.labels = Table(
            f"{prefix}collector_labels",
            self.metadata,
            Column("request_id", String(64), primary_key=True),  # as the client sent it
            Column("label", Integer, nullable=False),
            Column("labeled_at", Float, nullable=False),
            Column("parked_at", Float, nullable=False),
        )

    def create(self, engine: Engine) -> None:
        self.metadata.create_all(engine, checkfirst=True)

    def drop(self, engine: Engine) -> None:
        self.metadata.drop_all(engine, checkfirst=True)


def _half(event: LoggedEvent) -> str:
    return json.dumps(
        {"attributes": event.attributes, "time": event.time, "body": event.body,
         "pair": event.pair_id, "shadow": event.shadow},
        separators=(",", ":"),
    )  # fmt: skip


def _event(text: str, backend: str, kind: Any, key: str) -> LoggedEvent:
    data = json.loads(text)
    return LoggedEvent(
        backend, kind, data.get("pair", key), data["attributes"], data["time"], data["body"],
        bool(data.get("shadow", False)),
    )  # fmt: skip


@dataclass(frozen=True)
class Stored:
    """What storing a half found: `duplicate` (this half was seen before), or the pair's two
    halves when both are now known and not landed yet."""

    duplicate: bool
    request: LoggedEvent | None = None
    response: LoggedEvent | None = None


class PairStore:
    """Blocking: call from a worker thread, one call at a time per process (app.py locks)."""

    def __init__(
        self, engine: Engine, tables: CollectorTables, predictions: Table, write_lock: Any
    ) -> None:
        self.engine = engine
        self.tables = tables
        self.predictions = predictions
        self.write_lock = write_lock  # the prediction log's SQLite writer lock

    def store(self, event: LoggedEvent, now: float) -> Stored:
        """Store this half. With both halves known and not landed, return them (again, for a
        redelivered half whose first landing failed, so that a retry completes it)."""
        t = self.tables.pairs
        with self.write_lock, self.engine.begin() as conn:
            row = conn.execute(select(t).where(t.c.pair_id == event.key).with_for_update()).first()
            if row is None:
                values = {event.kind: _half(event)}
                conn.execute(insert(t).values(pair_id=event.key, received_at=now, **values))
                return Stored(False)
            if row.landed_at is not None:
                return Stored(True)
            duplicate = getattr(row, event.kind) is not None
            other = "response" if event.kind == "request" else "request"
            text = getattr(row, other)
            if not duplicate:
                conn.execute(
                    update(t).where(t.c.pair_id == event.key).values(**{event.kind: _half(event)})
                )
            if text is None:
                return Stored(duplicate)
            partner = _event(text, event.backend, other, event.key)
        request, response = (event, partner) if event.kind == "request" else (partner, event)
        return Stored(duplicate, request, response)

    def forget(self, key: str, kind: str) -> None:
        """Drop a half that does not fit its pair (refused with 422), so the right one can
        still complete it. `key`: LoggedEvent.key."""
        t = self.tables.pairs
        with self.write_lock, self.engine.begin() as conn:
            conn.execute(
                update(t).where(t.c.pair_id == key, t.c.landed_at.is_(None)).values(**{kind: None})
            )

    def unlanded(self, backend: str, limit: int = 100) -> list[tuple[LoggedEvent, LoggedEvent]]:
        """Pairs with both halves stored but not landed: their landing failed (the prediction
        log was unavailable) and nobody is bound to send them again."""
        t = self.tables.pairs
        query = (
            select(t)
            .where(t.c.landed_at.is_(None), t.c.request.is_not(None), t.c.response.is_not(None))
            .order_by(t.c.received_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            (
                _event(r.request, backend, "request", r.pair_id),
                _event(r.response, backend, "response", r.pair_id),
            )
            for r in rows
        ]

    def logged(self, request_ids: list[str], shadow: bool = False) -> set[str]:
        """Which of these request ids the prediction log already holds (served rows, or
        shadow copies)."""
        p = self.predictions
        with self.engine.connect() as conn:
            query = select(p.c.request_id).where(
                p.c.request_id.in_(request_ids), p.c.shadow.is_(shadow)
            )
            return {r for (r,) in conn.execute(query)}

    def landed(self, key: str, rows: int, request_ids: list[str], now: float) -> list[Any]:
        """Mark the pair landed (its halves cleared); remove and return the labels parked for
        `request_ids`, in the same transaction. `key`: LoggedEvent.key."""
        t, lab = self.tables.pairs, self.tables.labels
        parked: list[dict[str, Any]] = []
        with self.write_lock, self.engine.begin() as conn:
            conn.execute(
                update(t)
                .where(t.c.pair_id == key)
                .values(landed_at=now, rows=rows, request=None, response=None)
            )
            for start in range(0, len(request_ids), 500):
                chunk = request_ids[start : start + 500]
                found = conn.execute(select(lab).where(lab.c.request_id.in_(chunk))).all()
                parked += [
                    {"request_id": r.request_id, "label": r.label, "labeled_at": r.labeled_at}
                    for r in found
                ]
                if found:
                    conn.execute(delete(lab).where(lab.c.request_id.in_(chunk)))
        return parked

    def waiting(self) -> tuple[int, int]:
        """(pairs with one half only, parked labels), for the gauges."""
        from sqlalchemy import func

        t, lab = self.tables.pairs, self.tables.labels
        with self.engine.connect() as conn:
            halves = conn.execute(
                select(func.count()).select_from(t).where(t.c.landed_at.is_(None))
            ).scalar_one()
            labels = conn.execute(select(func.count()).select_from(lab)).scalar_one()
        return int(halves), int(labels)

    # -- labels waiting for their prediction ----------------------------------------------

    def park(
        self, items: list[dict[str, Any]], now: float, limit: int
    ) -> tuple[set[str], set[str]]:
        """Park labels by request id, at most `limit` parked in all; returns the ids parked
        already (not changed) and those dropped for want of room."""
        from sqlalchemy import func

        lab = self.tables.labels
        again: set[str] = set()
        dropped: set[str] = set()
        with self.write_lock, self.engine.begin() as conn:
            ids = [i["request_id"] for i in items]
            known = {
                r
                for (r,) in conn.execute(select(lab.c.request_id).where(lab.c.request_id.in_(ids)))
            }
            room = limit - int(conn.execute(select(func.count()).select_from(lab)).scalar_one())
            for item in items:
                if item["request_id"] in known:
                    again.add(item["request_id"])
                    continue
                if room <= 0:
                    dropped.add(item["request_id"])
                    continue
                room -= 1
                known.add(item["request_id"])
                conn.execute(
                    insert(lab).values(
                        request_id=item["request_id"], label=item["label"],
                        labeled_at=item["labeled_at"], parked_at=now,
                    )
                )  # fmt: skip
        return again, dropped

    def prune(self, before: float) -> tuple[int, int]:
        """Delete landed pairs landed before `before`, and lone halves received before it;
        returns (landed, unpaired) deleted. Pairs with both halves (their landing failed) stay:
        they are landed again."""
        t = self.tables.pairs
        lone = (t.c.request.is_(None)) | (t.c.response.is_(None))
        with self.write_lock, self.engine.begin() as conn:
            landed = conn.execute(
                delete(t).where(t.c.landed_at.is_not(None), t.c.landed_at < before)
            ).rowcount
            unpaired = conn.execute(
                delete(t).where(t.c.landed_at.is_(None), lone, t.c.received_at < before)
            ).rowcount
        return int(landed or 0), int(unpaired or 0)

    def expire_parked(self, before: float) -> int:
        lab = self.tables.labels
        with self.write_lock, self.engine.begin() as conn:
            return int(conn.execute(delete(lab).where(lab.c.parked_at < before)).rowcount or 0)

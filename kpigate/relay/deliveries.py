"""The relay's delivery ids, persisted, so a replay is refused after a restart as well.

A delivery is claimed by inserting its id (the primary key makes the claim atomic across relay
replicas sharing one PostgreSQL database); a delivery whose rollout could not be started is
released, so MLflow's retry goes through. Ids are kept at least as long as the timestamp
tolerance (a replay older than that fails the timestamp check anyway), then pruned.
SQLite (a file in the relay's state directory) by default, any SQLAlchemy URL at scale.
"""

from __future__ import annotations

import time

from sqlalchemy import Column, Float, MetaData, String, Table, create_engine, delete, insert
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool

DELIVERY_ID_MAX = 200
PRUNE_EVERY_S = 60.0


class DeliveryStore:
    def __init__(self, engine: Engine, keep_s: float, prefix: str = "kpigate_") -> None:
        self.engine = engine
        self.keep_s = keep_s
        self.metadata = MetaData()
        self.table = Table(
            f"{prefix}relay_deliveries",
            self.metadata,
            Column("delivery_id", String(DELIVERY_ID_MAX), primary_key=True),
            Column("seen_at", Float, nullable=False, index=True),
        )
        self.metadata.create_all(engine, checkfirst=True)
        self._pruned = 0.0

    @classmethod
    def in_memory(cls, keep_s: float) -> DeliveryStore:
        """For tests and embedding: forgotten when the process ends."""
        engine = create_engine(
            "sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool
        )
        return cls(engine, keep_s)

    def claim(self, delivery_id: str, now: float | None = None) -> bool:
        """True for the first claim of this id within the kept window; False for a replay."""
        now = time.time() if now is None else now
        self._prune(now)
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(self.table).values(delivery_id=delivery_id, seen_at=now))
        except sa_exc.IntegrityError:
            return False
        return True

    def release(self, delivery_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(self.table).where(self.table.c.delivery_id == delivery_id))

    def _prune(self, now: float) -> None:
        if now - self._pruned < PRUNE_EVERY_S:
            return
        self._pruned = now
        with self.engine.begin() as conn:
            conn.execute(delete(self.table).where(self.table.c.seen_at < now - self.keep_s))

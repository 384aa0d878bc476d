"""Routing state shared by every router replica: one versioned row, replica heartbeats.

A change writes the row and bumps its version; each replica polls the version (every
`poll_interval_s`, so a change applies everywhere well within a second), applies it, and
reports the version it applied in its heartbeat row. The replica that took the change waits
until every live replica reports it, and names the ones that do not. PostgreSQL serves any
number of replicas; SQLite is one file on one machine and serves exactly one replica.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Engine

from kpigate.serve.predlog import Tables


@dataclass(frozen=True)
class SavedState:
    weight: float
    mode: str
    detached: bool
    version: int
    # The version at which a reload of the models was last asked for.
    reload_version: int


@dataclass(frozen=True)
class Replica:
    replica_id: str
    applied_version: int
    heartbeat_at: float
    error: str | None


class SharedState:
    def __init__(
        self,
        engine: Engine,
        tables: Tables,
        replica_id: str,
        write_lock: threading.Lock | None = None,
        live_after_s: float = 3.0,
    ) -> None:
        self.engine = engine
        self.tables = tables
        self.replica_id = replica_id
        # SQLite has one writer at a time: share the prediction log's lock in this process.
        self._lock = write_lock if engine.dialect.name == "sqlite" else None
        self.live_after_s = live_after_s

    def _writing(self) -> Any:
        return self._lock if self._lock is not None else contextlib.nullcontext()

    def load(self) -> SavedState | None:
        t = self.tables.state
        with self.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.id == 1)).first()
        if row is None:
            return None
        m = row._mapping
        return SavedState(
            float(m["weight"]),
            m["mode"],
            bool(m["detached"]),
            int(m["version"]),
            int(m["reload_version"]),
        )

    def save(
        self,
        weight: float,
        mode: str,
        detached: bool,
        note: str | None = None,
        reload: bool = False,
    ) -> int:
        """Write a new state and return its version (one more than the last)."""
        t = self.tables.state
        values: dict[str, Any] = {
            "weight": weight,
            "mode": mode,
            "detached": detached,
            "updated_at": time.time(),
            "note": note,
        }
        with self._writing(), self.engine.begin() as conn:
            current = conn.execute(
                select(t.c.version, t.c.reload_version).where(t.c.id == 1).with_for_update()
            ).first()
            if current is None:
                version = 1
                conn.execute(
                    insert(t).values(
                        id=1, version=version, reload_version=1 if reload else 0, **values
                    )
                )
                return version
            version = int(current.version) + 1
            if reload:
                values["reload_version"] = version
            conn.execute(update(t).where(t.c.id == 1).values(version=version, **values))
        return version

    def heartbeat(self, applied_version: int, error: str | None = None) -> None:
        t = self.tables.replicas
        values = {"applied_version": applied_version, "heartbeat_at": time.time(), "error": error}
        with self._writing(), self.engine.begin() as conn:
            done = conn.execute(
                update(t).where(t.c.replica_id == self.replica_id).values(**values)
            ).rowcount
            if not done:
                conn.execute(insert(t).values(replica_id=self.replica_id, **values))

    def forget(self) -> None:
        """A replica that stops cleanly leaves the set at once instead of timing out."""
        t = self.tables.replicas
        with self._writing(), self.engine.begin() as conn:
            conn.execute(delete(t).where(t.c.replica_id == self.replica_id))

    def live_replicas(self, now: float | None = None) -> list[Replica]:
        t = self.tables.replicas
        since = (time.time() if now is None else now) - self.live_after_s
        with self.engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.heartbeat_at >= since)).all()
        return [
            Replica(r.replica_id, int(r.applied_version), float(r.heartbeat_at), r.error)
            for r in rows
        ]

    def laggards(self, version: int, timeout_s: float, poll_s: float = 0.05) -> list[Replica]:
        """Wait until every replica live now has applied `version`; return those that did not.

        The set is fixed when the wait starts: a replica that stops heartbeating during the
        wait (stopped, partitioned, killed) is a laggard, not silently dropped; once it has
        been silent for `live_after_s` it no longer counts, and a retry goes through."""
        deadline = time.monotonic() + timeout_s
        expected = {r.replica_id for r in self.live_replicas()}
        while True:
            t = self.tables.replicas
            with self.engine.connect() as conn:
                rows = conn.execute(select(t).where(t.c.replica_id.in_(expected))).all()
            seen = {
                r.replica_id: Replica(
                    r.replica_id, int(r.applied_version), float(r.heartbeat_at), r.error
                )
                for r in rows
            }
            # A replica that stopped cleanly (its row deleted) has nothing left to apply.
            behind = [r for _, r in sorted(seen.items()) if r.applied_version < version or r.error]
            if not behind or time.monotonic() >= deadline:
                return behind
            time.sleep(poll_s)

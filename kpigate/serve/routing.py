"""Which arm answers a request: weights in percent, sticky hashing of the entity key, modes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from kpigate.serve.config import MODES

Arm = Literal["baseline", "candidate"]
# Resolution of the split: a weight is honoured to 0.01 percentage points.
BUCKETS = 10_000


@dataclass(frozen=True)
class RoutingState:
    """What the admin API sets. `weight` is the candidate's share of entities in percent: in
    canary mode the candidate answers them, in shadow mode it scores a copy of their requests."""

    weight: float = 0.0
    mode: str = "canary"
    # A detached candidate is not scored at all until a weight > 0 is set again.
    detached: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 100.0:
            raise ValueError(f"weight must be a percentage in [0, 100], got {self.weight}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")

    @property
    def cutoff(self) -> int:
        return 0 if self.detached else round(self.weight * BUCKETS / 100.0)


@dataclass(frozen=True)
class Route:
    served: Arm
    shadow: bool  # score a copy with the candidate as well


def bucket(entity_key: str, salt: str = "") -> int:
    """A stable bucket in [0, BUCKETS) for an entity. The same key always lands in the same
    bucket (across processes and restarts), and raising the weight only adds buckets, so an
    entity that saw the candidate at 5% still sees it at 25%."""
    digest = hashlib.blake2b(f"{salt}\x00{entity_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def route(
    entity_key: str, state: RoutingState, salt: str = "", has_candidate: bool = True
) -> Route:
    cutoff = state.cutoff if has_candidate else 0
    if cutoff == 0:
        return _BASELINE
    in_share = bucket(entity_key, salt) < cutoff
    if not in_share:
        return _BASELINE
    return _SHADOW if state.mode == "shadow" else _CANDIDATE


_BASELINE = Route("baseline", shadow=False)
_CANDIDATE = Route("candidate", shadow=False)
_SHADOW = Route("baseline", shadow=True)

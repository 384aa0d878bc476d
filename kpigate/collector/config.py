"""Collector settings, and which arm (and model version) a logged event belongs to."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from kpigate.collector import kserve, seldon
from kpigate.collector.events import EventError

BACKENDS: dict[str, ModuleType] = {kserve.NAME: kserve, seldon.NAME: seldon}


@dataclass(frozen=True)
class ArmRule:
    """Events whose attributes all match belong to `arm`, scored by `version`. A value
    `name=v` must equal v; `name^=v` must start with v (e.g. a pod name in ce-source)."""

    arm: str
    version: str
    equals: tuple[tuple[str, str], ...] = ()
    prefixes: tuple[tuple[str, str], ...] = ()
    threshold: float = 0.5
    # The arm's events are shadow copies (Seldon `shadow: true`): logged as shadow rows under
    # the served request's ids, so a label for the served request labels them too.
    shadow: bool = False

    def matches(self, attributes: dict[str, str]) -> bool:
        return all(attributes.get(k) == v for k, v in self.equals) and all(
            attributes.get(k, "").startswith(v) for k, v in self.prefixes
        )


def parse_match(text: str, allowed: tuple[str, ...]) -> tuple[tuple[tuple[str, str], ...], ...]:
    """'endpoint=canary,source^=fraud-predictor' -> (equals, prefixes); ValueError if bad."""
    equals: list[tuple[str, str]] = []
    prefixes: list[tuple[str, str]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, op, value = part.partition("^=") if "^=" in part else part.partition("=")
        name = name.strip().lower()
        if not op or not value or name not in allowed:
            raise ValueError(
                f"bad match {part!r}: use ATTRIBUTE=VALUE or ATTRIBUTE^=PREFIX with ATTRIBUTE "
                f"one of {', '.join(allowed)}"
            )
        (prefixes if op == "^=" else equals).append((name, value))
    if not equals and not prefixes:
        raise ValueError("an arm's match needs at least one ATTRIBUTE=VALUE")
    return tuple(equals), tuple(prefixes)


@dataclass(frozen=True)
class CollectorConfig:
    backend: str = kserve.NAME
    arms: tuple[ArmRule, ...] = ()
    db_url: str = "sqlite:///kpigate-predictions.db"
    table_prefix: str = "kpigate_"
    # The V2 output tensor holding the scores (default: the first one).
    score_output: str | None = None
    label_window_s: float = 7 * 24 * 3600.0
    label_horizon_s: float | None = None
    maturity_interval_s: float = 1.0
    # How often pairs whose landing failed (the log was down) are landed again.
    reland_interval_s: float = 5.0
    # Labels parked for predictions not logged yet, at most: beyond it a label is dropped and
    # counted, so a label feed for traffic this collector never sees cannot fill the database.
    max_parked_labels: int = 100_000
    # A landed pair's row is kept this long, so a half the logger redelivers is recognised as a
    # duplicate, then pruned; so is a lone half whose partner never came (KServe logs no
    # response for a failed request). A pair with both halves waiting to land is kept.
    pair_retention_s: float = 3600.0
    prune_interval_s: float = 60.0
    db_connect_timeout_s: float = 3.0
    db_statement_timeout_s: float = 5.0
    # An event's ce-time this far ahead of the collector's clock is refused.
    future_skew_s: float = 300.0
    max_body_bytes: int = 1024 * 1024
    max_instances: int = 1000
    max_json_depth: int = 32
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0

    def arm_of(self, attributes: dict[str, str]) -> ArmRule:
        found = [rule for rule in self.arms if rule.matches(attributes)]
        if len(found) != 1:
            seen = ", ".join(
                f"{k}={attributes.get(k, '')!r}" for k in BACKENDS[self.backend].ARM_ATTRIBUTES
            )
            what = "neither arm" if not found else "both arms"
            raise EventError(
                422,
                f"the event matches {what} ({seen}): check --baseline-match and --candidate-match",
            )
        return found[0]

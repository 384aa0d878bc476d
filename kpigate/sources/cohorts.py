"""The cohort rule: which serving window's predictions mature next, and whether they are due.

A prediction belongs to the cohort of the window in which it was served. The cohort of window W
(served from `served_from` to `served_to`) is mature `horizon` seconds after `served_to`: every
label that can still count has then arrived, because a label is only counted when it arrives
within `horizon` of its own prediction (a later one is "late" and counts as no label). Each look
judges at most one cohort, the oldest one not judged yet, so every cohort is judged exactly once
and in serving order; when looks fall behind (a missed look, a shorter interval at the next
stage) the backlog is worked off one cohort per look, oldest first.

This module is pure: the sources (prediction log, router metrics, `kpigate windows`) and the
backtest all call it, so they cannot disagree about which cohort a record holds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from kpigate.evidence_record import WindowRecord

Unlabeled = Literal["negative", "exclude"]


@dataclass(frozen=True, slots=True)
class ServedWindow:
    """One evaluation window of a rollout and the interval its traffic was served in."""

    index: int
    stage: float
    served_from: float  # Unix seconds, inclusive
    served_to: float  # Unix seconds, exclusive


@dataclass(frozen=True, slots=True)
class NextCohort:
    """The oldest cohort not judged yet; `due` when it has matured by `now`."""

    window: ServedWindow
    stage: float | None  # None when its serving interval straddles two stages
    matures_at: float
    due: bool

    def cohort_json(self) -> dict[str, Any]:
        """The record's "cohort" field (replay format)."""
        return {"window": self.window.index, "stage": self.stage, "matured_at": self.matures_at}

    def pending_json(self) -> dict[str, Any]:
        """The record's "pending" field (replay format)."""
        return {"window": self.window.index, "matures_at": self.matures_at}


def matures_at(window: ServedWindow, horizon: float) -> float:
    return window.served_to + horizon


def stage_of(window: ServedWindow, windows: Sequence[ServedWindow]) -> float | None:
    """The window's stage, or None when another window of a different stage overlaps its
    serving interval (the traffic split changed while its predictions were served)."""
    for other in windows:
        if (
            other.index != window.index
            and other.stage != window.stage
            and other.served_from < window.served_to
            and window.served_from < other.served_to
        ):
            return None
    return window.stage


def next_cohort(
    windows: Sequence[ServedWindow], judged: Iterable[int], horizon: float, now: float
) -> NextCohort | None:
    """The oldest window whose cohort is not in `judged`, with its maturity; None if none.

    Only windows that have finished serving by `now` can hold a cohort.
    """
    if not math.isfinite(horizon) or horizon < 0:
        raise ValueError(f"the label horizon must be a finite number of seconds >= 0: {horizon}")
    done = set(judged)
    for window in sorted(windows, key=lambda w: w.index):
        if window.index in done or window.served_to > now:
            continue
        at = matures_at(window, horizon)
        return NextCohort(window, stage_of(window, windows), at, due=at <= now)
    return None


def served_windows(records: Iterable[WindowRecord]) -> list[ServedWindow]:
    """The rollout's windows of recorded evidence that carry their serving interval (A/A
    calibration windows precede the rollout: they are no cohort and no serving window of it)."""
    out = []
    for record in records:
        if record.calibration:
            continue
        start, end = record.served_from, record.served_to
        if start is not None and end is not None:
            out.append(ServedWindow(record.window, float(record.stage), float(start), float(end)))
    return out


def judged_cohorts(records: Iterable[WindowRecord]) -> set[int]:
    """Serving windows whose cohort some record already holds."""
    return {record.cohort.window for record in records if record.cohort is not None}


# --- how one prediction counts at maturity ------------------------------------------------------


def label_at_maturity(
    label: int | None,
    labeled_at: float | None,
    created_at: float,
    horizon: float,
    unlabeled: Unlabeled,
) -> int | None:
    """The label a prediction counts with in its matured cohort; None means left out.

    A label counts only when it arrived within the horizon of its own prediction and not before
    it (a clock error or a bad writer); any other label is treated as no label.
    """
    # The same comparisons as the SQL of kpigate/sources/predlog.py, so both round alike.
    on_time = labeled_at is not None and created_at <= labeled_at <= created_at + horizon
    if label is not None and on_time:
        return int(label)
    return 0 if unlabeled == "negative" else None


def outcome_of(declined: bool, label: int) -> str:
    """Confusion cell of one prediction: a decline is the positive (fraud) prediction."""
    if declined:
        return "tp" if label else "fp"
    return "fn" if label else "tn"

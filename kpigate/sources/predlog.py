"""Window counts from the router's prediction log, with SQL: serving windows and matured cohorts.

Reads the table `<prefix>predictions` (the contract is docs/prediction-log.md). A serving window
gives the immediate tables (decisions, latency, errors: a candidate error is a baseline row
logged with fallback = true); a matured cohort gives the label tables (confusion counts per
segment, labeled-score histograms per class) of the predictions *served* in its window, each
label counted only if it arrived within the horizon of its own prediction, and a prediction
without such a label counted as the policy's `unlabeled` says. The tables are the same
`WindowCounts` the router scrape and Prometheus produce, so the KPI catalogue reads every KPI
one way. SQLite embedded, PostgreSQL at scale: both read through the index on created_at.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import and_, case, false, func, literal, literal_column, or_, select, true
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from kpigate.engine.evidence import ClusterMoments, design_effect
from kpigate.errors import Kind
from kpigate.policy import Labels, Policy
from kpigate.serve.metrics import LATENCY_BUCKETS, SCORE_BUCKETS
from kpigate.serve.predlog import Tables, make_engine
from kpigate.sources.base import Collected, SourceError
from kpigate.sources.cohorts import NextCohort, ServedWindow, Unlabeled, outcome_of
from kpigate.sources.counts import WindowCounts, labels_of

DB_URL_ENV = "KPIGATE_DB_URL"
# A/A calibration: the baseline's rows before a rollout split into two halves by this hash of
# the user, independent of the router's bucket (kpigate/serve/routing.py), so the halves are not
# the users who will be the candidate's.
CALIBRATION_SALT = ":kpigate-calibration"
DB_URL_FILE_ENV = "KPIGATE_DB_URL_FILE"
SEGMENTS = ("region", "payment_method", "amount_band")
NO_LABEL = -1


def db_url_from_env(environ: dict[str, str] | None = None) -> str | None:
    """The prediction log's URL from KPIGATE_DB_URL, else from the file KPIGATE_DB_URL_FILE
    names (a mounted secret: the URL holds a password, so it never travels in argv)."""
    env = os.environ if environ is None else environ
    url = env.get(DB_URL_ENV, "").strip()
    if url:
        return url
    path = env.get(DB_URL_FILE_ENV)
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip() or None
    except OSError as exc:
        raise SourceError(f"cannot read {DB_URL_FILE_ENV}={path}: {exc.strerror}") from None


def _cumulative(counts: dict[int, float], n_bounds: int) -> list[float]:
    """Per-bucket counts (index of the first bound >= value) -> cumulative counts per bound."""
    out, running = [], 0.0
    for i in range(n_bounds + 1):
        running += counts.get(i, 0.0)
        out.append(running)
    return out


def _bucket_index(column: Any, bounds: tuple[float, ...]) -> Any:
    """SQL: index of the first bound >= value (len(bounds) for +Inf), as Prometheus counts."""
    return case(*((column <= b, i) for i, b in enumerate(bounds)), else_=len(bounds))


def _le(i: int, bounds: tuple[float, ...]) -> str:
    return "+Inf" if i >= len(bounds) else repr(float(bounds[i]))


# The rates a user's rows can be summed into, from per-user cell counts: metric -> (the cells
# that are successes, the cells that are trials). The same readings as kpigate/sources/catalogue.
LABEL_RATES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "recall": (("tp",), ("tp", "fn")),
    "precision": (("tp",), ("tp", "fp")),
    "fpr": (("fp",), ("fp", "tn")),
    "chargeback_rate": (("fn",), ("fn", "tn")),
    "accuracy": (("tp", "tn"), ("tp", "fp", "fn", "tn")),
}
DECISION_RATES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "approval_rate": (("approve",), ("approve", "decline")),
}
Moments = dict[tuple[str, str], ClusterMoments]  # (arm, metric) -> the arm's per-user sums


def _moments_query(cells: dict[str, Any], rates: dict[str, Any], where: Any, table: Any) -> Any:
    """SQL: per arm and rate, sum over users of y, n, y^2, y n, n^2 and the users with n > 0,
    from per-(arm, entity_key) counts of each cell. One scan, grouped twice."""
    per_user = (
        select(
            table.c.arm.label("arm"),
            *(func.sum(case((cond, 1), else_=0)).label(name) for name, cond in cells.items()),
        )
        .where(where)
        .group_by(table.c.arm, table.c.entity_key)
        .subquery()
    )
    columns: list[Any] = [per_user.c.arm]
    for metric, (hits, tries) in rates.items():
        y = sum((per_user.c[c] for c in hits[1:]), per_user.c[hits[0]])
        n = sum((per_user.c[c] for c in tries[1:]), per_user.c[tries[0]])
        columns += [
            func.sum(y).label(f"{metric}_y"),
            func.sum(n).label(f"{metric}_n"),
            func.sum(y * y).label(f"{metric}_yy"),
            func.sum(y * n).label(f"{metric}_yn"),
            func.sum(n * n).label(f"{metric}_nn"),
            func.sum(case((n > 0, 1), else_=0)).label(f"{metric}_g"),
        ]
    return select(*columns).group_by(per_user.c.arm)


def _moments_of(rows: list[Any], rates: dict[str, Any]) -> Moments:
    out: Moments = {}
    for row in rows:
        values = row._mapping
        for metric in rates:
            parts = (values[f"{metric}_{m}"] for m in ("y", "n", "yy", "yn", "nn", "g"))
            out[(row.arm, metric)] = ClusterMoments(*(float(v or 0) for v in parts))
    return out


def calibration_half(entity_key: str) -> str:
    """The pseudo-arm of a user's baseline rows in an A/A calibration window: "baseline" when
    the first hex digit of md5(entity_key + CALIBRATION_SALT) is below 8, else "candidate".
    md5 because both engines compute it: PostgreSQL natively, SQLite through the same Python
    function registered on the connection (_half_sql); the split is the same on both."""
    digest = hashlib.md5((entity_key + CALIBRATION_SALT).encode(), usedforsecurity=False)
    return "baseline" if digest.hexdigest()[0] < "8" else "candidate"


def _md5_hex(text: str | None) -> str | None:
    if text is None:
        return None
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _half_sql(entity_key: Any) -> Any:
    """SQL: calibration_half(entity_key) ("baseline" or "candidate"), on SQLite and PostgreSQL.
    Constants are inlined, not bound, so the GROUP BY repeats the SELECT's expression exactly."""
    one: Any = literal_column("1")
    salted = entity_key.concat(literal_column(f"'{CALIBRATION_SALT}'"))
    digit = func.substr(func.md5(salted), one, one)
    # A set, not `< '8'`: the comparison would follow the database's collation.
    lower: list[Any] = [literal_column(f"'{d}'") for d in "01234567"]
    return case(
        (digit.in_(lower), literal_column("'baseline'")), else_=literal_column("'candidate'")
    )


class PredlogReader:
    """SQL reads over one prediction log; every method is one or two queries.

    Each table is read with an `arm` expression: the row's arm for a rollout window, or for an
    A/A calibration window (`calibration=True`: the baseline's served rows only) the half of
    its user (calibration_half), so both are counted by one code path.
    """

    def __init__(
        self,
        engine: Engine,
        tables: Tables,
        baseline_version: str | None = None,
        candidate_version: str | None = None,
    ) -> None:
        self.engine = engine
        self.table = tables.predictions
        self.versions = {"baseline": baseline_version, "candidate": candidate_version}

    @classmethod
    def from_url(cls, url: str, prefix: str = "kpigate_", **versions: str | None) -> PredlogReader:
        return cls(make_engine(url), Tables(prefix), **versions)

    def _arms(self) -> ColumnElement[bool]:
        """Rows of the two arms, each at its version when one is given."""
        t = self.table
        parts = []
        for arm, version in self.versions.items():
            cond = t.c.arm == arm
            parts.append(cond if version is None else and_(cond, t.c.model_version == version))
        return or_(*parts)

    def _served(self, start: float, end: float) -> ColumnElement[bool]:
        t = self.table
        return and_(t.c.created_at >= start, t.c.created_at < end)

    def _split(self, calibration: bool) -> tuple[Any, ColumnElement[bool]]:
        """(the arm a row counts for, the rows that count): the two arms, or for calibration the
        baseline's answered rows split by user."""
        t = self.table
        if not calibration:
            return t.c.arm, self._arms()
        version = self.versions["baseline"]
        rows = and_(t.c.arm == "baseline", t.c.shadow == false())
        if version is not None:
            rows = and_(rows, t.c.model_version == version)
        return _half_sql(t.c.entity_key), rows

    def _rows(self, query: Any) -> list[Any]:
        try:
            with self.engine.connect() as conn:
                if conn.dialect.name == "sqlite":
                    # SQLite has no md5: the same function as Python's (calibration_half).
                    raw: Any = conn.connection.driver_connection
                    raw.create_function("md5", 1, _md5_hex, deterministic=True)
                return list(conn.execute(query))
        except SQLAlchemyError as exc:
            raise SourceError(f"prediction log query failed: {type(exc).__name__}: {exc}") from exc

    def immediate(self, start: float, end: float, calibration: bool = False) -> WindowCounts:
        """Decisions, latency and errors of the predictions served in [start, end); with
        `calibration`, the baseline's decisions and latency per half (no errors: a failed
        request is logged as the candidate's only)."""
        t = self.table
        counts = WindowCounts()
        arm_of, rows = self._split(calibration)
        arm_col = arm_of.label("arm_of")
        where = and_(self._served(start, end), rows)
        decisions = select(arm_col, t.c.decision, func.count()).where(where)
        for arm, decision, n in self._rows(decisions.group_by(arm_col, t.c.decision)):
            counts.add(
                "decisions", labels_of({"arm": arm, "decision": decision}, ("arm", "decision")), n
            )
        # Latency is the client's: shadow copies were never answered.
        bucket = _bucket_index(t.c.latency_ms / 1000.0, LATENCY_BUCKETS).label("b")
        latency = (
            select(arm_col, bucket, func.count())
            .where(where, t.c.shadow == false())
            .group_by(arm_col, bucket)
        )
        per_arm: dict[str, dict[int, float]] = {}
        for arm, b, n in self._rows(latency):
            per_arm.setdefault(arm, {})[int(b)] = float(n)
        for arm, found in per_arm.items():
            for i, value in enumerate(_cumulative(found, len(LATENCY_BUCKETS))):
                counts.add(
                    "latency",
                    labels_of({"arm": arm, "le": _le(i, LATENCY_BUCKETS)}, ("arm", "le")),
                    value,
                )
        if calibration:
            return counts
        # A failed candidate request is answered by the baseline and logged with fallback.
        errors = select(func.count()).where(
            self._served(start, end), t.c.fallback == true(), t.c.shadow == false()
        )
        failed = self._rows(errors)[0][0]
        if failed:
            counts.add("errors", (("arm", "candidate"),), float(failed))
        return counts

    def _label(self, horizon: float | None, as_of: float | None) -> Any:
        """SQL: the label a row counts with (NO_LABEL when none counts), see cohorts.py."""
        t = self.table
        conds = [t.c.label.is_not(None), t.c.labeled_at >= t.c.created_at]
        if horizon is not None:
            conds.append(t.c.labeled_at <= t.c.created_at + horizon)
        if as_of is not None:
            conds.append(t.c.labeled_at <= as_of)
        return case((and_(*conds), t.c.label), else_=literal(NO_LABEL))

    def labeled(
        self,
        start: float,
        end: float,
        horizon: float | None,
        unlabeled: Unlabeled,
        as_of: float | None = None,
        calibration: bool = False,
    ) -> WindowCounts:
        """Confusion counts per segment and score histograms per class of the predictions served
        in [start, end), with the labels that count (arrived within `horizon`, by `as_of`);
        with `calibration`, of the baseline's halves."""
        t = self.table
        label = self._label(horizon, as_of).label("lab")
        arm_of, rows = self._split(calibration)
        arm_col = arm_of.label("arm_of")
        where = and_(self._served(start, end), rows)
        counts = WindowCounts()
        keys = (arm_col, t.c.decision, *(t.c[s] for s in SEGMENTS), label)
        confusion = select(*keys, func.count()).where(where).group_by(*keys)
        for arm, decision, region, method, band, lab, n in self._rows(confusion):
            if (value := self._counted(lab, unlabeled)) is None:
                continue
            outcome = outcome_of(decision == "decline", value)
            segments = (
                "all",
                f"region={region}",
                f"payment_method={method}",
                f"amount_band={band}",
            )
            for segment in segments:
                row = {"arm": arm, "segment": segment, "outcome": outcome}
                counts.add("outcomes", labels_of(row, ("arm", "segment", "outcome")), float(n))
        bucket = _bucket_index(t.c.score, SCORE_BUCKETS).label("b")
        scores = (
            select(arm_col, label, bucket, func.count())
            .where(where)
            .group_by(arm_col, label, bucket)
        )
        per: dict[tuple[str, int], dict[int, float]] = {}
        for arm, lab, b, n in self._rows(scores):
            if (value := self._counted(lab, unlabeled)) is not None:
                found = per.setdefault((arm, value), {})
                found[int(b)] = found.get(int(b), 0.0) + float(n)
        for (arm, value), found in per.items():
            for i, total in enumerate(_cumulative(found, len(SCORE_BUCKETS))):
                row = {"arm": arm, "label": str(value), "le": _le(i, SCORE_BUCKETS)}
                counts.add("scores", labels_of(row, ("arm", "label", "le")), total)
        return counts

    def label_moments(
        self,
        start: float,
        end: float,
        horizon: float | None,
        unlabeled: Unlabeled,
        as_of: float | None = None,
    ) -> Moments:
        """Label rates of the predictions served in [start, end), labels as labeled() counts."""
        t = self.table
        label = self._label(horizon, as_of)
        positive = label == 1
        negative = or_(label == 0, label == NO_LABEL) if unlabeled == "negative" else label == 0
        declined = t.c.decision == "decline"
        cells = {
            "tp": and_(declined, positive),
            "fp": and_(declined, negative),
            "fn": and_(~declined, positive),
            "tn": and_(~declined, negative),
        }
        where = and_(self._served(start, end), self._arms())
        return _moments_of(self._rows(_moments_query(cells, LABEL_RATES, where, t)), LABEL_RATES)

    def decision_moments(self, start: float, end: float) -> Moments:
        """Decision rates of the predictions served in [start, end), as immediate() counts."""
        t = self.table
        cells = {"approve": t.c.decision == "approve", "decline": t.c.decision == "decline"}
        where = and_(self._served(start, end), self._arms())
        query = _moments_query(cells, DECISION_RATES, where, t)
        return _moments_of(self._rows(query), DECISION_RATES)

    @staticmethod
    def _counted(lab: Any, unlabeled: Unlabeled) -> int | None:
        if int(lab) != NO_LABEL:
            return int(lab)
        return 0 if unlabeled == "negative" else None

    def label_problems(self, start: float, end: float, horizon: float) -> dict[str, int]:
        """Labels of the window's predictions that do not count: late (after the horizon) and
        before the prediction (a bad clock or writer), so a record can report them."""
        t = self.table
        late = func.sum(case((t.c.labeled_at > t.c.created_at + horizon, 1), else_=0))
        early = func.sum(case((t.c.labeled_at < t.c.created_at, 1), else_=0))
        query = select(late, early).where(
            self._served(start, end), self._arms(), t.c.label.is_not(None)
        )
        row = self._rows(query)[0]
        return {"late": int(row[0] or 0), "before_prediction": int(row[1] or 0)}


def _problems_note(problems: dict[str, int]) -> str:
    found = [f"{n} {kind.replace('_', ' ')}" for kind, n in problems.items() if n]
    return f"labels not counted: {', '.join(found)}" if found else ""


class PredlogSource:
    """The metrics-source interface over the prediction log, plus matured cohorts."""

    name = "predlog"

    def __init__(
        self,
        reader: PredlogReader,
        labels: Labels | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reader = reader
        self.labels = labels
        self.clock = clock
        self._start: float | None = None

    def mark(self) -> None:
        self._start = self.clock()

    def window(self, start: float, end: float) -> WindowCounts:
        """Immediate counts of [start, end); without a labels section also the labels known by
        `end` (the policy then takes label KPIs per serving window, as the router reports)."""
        counts = self.reader.immediate(start, end)
        if self.labels is None:
            _merge(counts, [self.reader.labeled(start, end, None, "exclude", as_of=end)])
        return counts

    def collect(self) -> Collected:
        end = self.clock()
        start = self._start if self._start is not None else end
        self._start = end
        if end <= start:
            raise SourceError("no start-of-window mark")
        return Collected(self.window(start, end), note="prediction log")

    def design_effects(
        self, since: float, window: ServedWindow, cohort: NextCohort | None
    ) -> dict[tuple[str, str], float]:
        """(arm, metric) -> the arm's design effect over the rollout so far: its rows served
        from `since` (the rollout's first window) to the end of this window, or for label rates
        to the end of the matured `cohort`'s window with its labels. Rates not defined (one
        user, a rate of 0 or 1) are left out."""
        moments = self.reader.decision_moments(since, window.served_to)
        if self.labels is None:
            end = window.served_to
            moments |= self.reader.label_moments(since, end, None, "exclude", as_of=end)
        elif cohort is not None:
            labels = self.labels
            moments |= self.reader.label_moments(
                since, cohort.window.served_to, labels.horizon, labels.unlabeled, cohort.matures_at
            )
        out = {}
        for key, m in moments.items():
            if (deff := design_effect(m)) is not None:
                out[key] = deff
        return out

    def calibration(self, window: ServedWindow, cohort: ServedWindow | None) -> Collected:
        """The A/A counts of one calibration window before the rollout: the baseline's answered
        rows served in `window` (decisions, latency), split into the halves "baseline" and
        "candidate" by calibration_half, and its label tables: with a labels section those of
        `cohort` (a window that had matured by the rollout's start) at maturity, without one
        the labels known by the window's end, as window() reads them."""
        reader = self.reader
        counts = reader.immediate(window.served_from, window.served_to, calibration=True)
        if self.labels is None:
            end = window.served_to
            labeled = reader.labeled(window.served_from, end, None, "exclude", end, True)
        elif cohort is not None:
            h = self.labels.horizon
            labeled = reader.labeled(
                cohort.served_from, cohort.served_to, h, self.labels.unlabeled,
                cohort.served_to + h, True,
            )  # fmt: skip
        else:
            return Collected(counts)
        _merge(counts, [labeled])
        return Collected(counts)

    def matured(self, cohort: NextCohort, labels: Labels) -> Collected:
        """The cohort's label tables; labels after its maturity are never seen."""
        w = cohort.window
        counts = self.reader.labeled(
            w.served_from, w.served_to, labels.horizon, labels.unlabeled, as_of=cohort.matures_at
        )
        note = _problems_note(
            self.reader.label_problems(w.served_from, w.served_to, labels.horizon)
        )
        return Collected(counts, note=note)


def _merge(into: WindowCounts, others: Iterable[WindowCounts]) -> None:
    for other in others:
        for key, table in other.tables.items():
            for labels, value in table.items():
                into.add(key, labels, value)


def source_from_env(policy: Policy, prefix: str = "kpigate_") -> PredlogSource:
    """The predlog source of a rollout step, its database URL from the environment only."""
    url = db_url_from_env()
    if not url:
        raise SourceError(
            f"--source predlog needs the prediction log's URL in {DB_URL_ENV} or in the file "
            f"named by {DB_URL_FILE_ENV}",
            kind=Kind.BAD_INPUT,
        )
    return PredlogSource(PredlogReader.from_url(url, prefix), policy.labels)

"""The design effect of a rate with users as the unit: the pure formula, its SQL over the
prediction log (SQLite and PostgreSQL), the record field it fills, and the gate using it."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kpigate.engine import (
    ClusterMoments,
    Decision,
    Observation,
    Rate,
    RolloutState,
    Window,
    compile_plan,
    design_effect,
    judge,
)
from kpigate.engine.classify import design_effect_of
from kpigate.engine.plan import KpiState
from kpigate.policy import Kpi, Policy, Stage
from kpigate.replay import LineError, parse_line, to_window
from kpigate.serve.predlog import Tables
from kpigate.sources.base import Collected
from kpigate.sources.cohorts import ServedWindow, label_at_maturity, outcome_of
from kpigate.sources.predlog import LABEL_RATES, PredlogReader, PredlogSource
from kpigate.sources.records import build_record
from tests.cohort_helpers import engine_for, random_rows, write_rows
from tests.serve_fixtures import Database

pytest_plugins = ["tests.serve_fixtures"]


def _moments(users: list[tuple[float, float]]) -> ClusterMoments:
    """ClusterMoments from per-user (successes, trials), the way the SQL sums them."""
    return ClusterMoments(
        sum(y for y, _ in users),
        sum(n for _, n in users),
        sum(y * y for y, _ in users),
        sum(y * n for y, n in users),
        sum(n * n for _, n in users),
        sum(1 for _, n in users if n > 0),
    )


def _direct(users: list[tuple[float, float]]) -> float:
    """The delta-method formula written out: Var = sum (y - p n)^2 / N^2 x G/(G-1)."""
    y_total, n_total = sum(y for y, _ in users), sum(n for _, n in users)
    p = y_total / n_total
    g = sum(1 for _, n in users if n > 0)
    robust = sum((y - p * n) ** 2 for y, n in users) / n_total**2 * g / (g - 1)
    return robust / (p * (1 - p) / n_total)


def test_one_transaction_per_user_is_binomial() -> None:
    rng = random.Random(1)
    users = [(float(rng.random() < 0.3), 1.0) for _ in range(400)]
    deff = design_effect(_moments(users))
    assert deff == pytest.approx(400 / 399)  # G/(G-1): exactly 1 but for the correction


def test_users_sharing_their_outcome_inflate_it_by_their_size() -> None:
    # every user makes 10 transactions with one outcome: deff ~ 10
    users = [(10.0 * (i % 3 == 0), 10.0) for i in range(300)]
    assert design_effect(_moments(users)) == pytest.approx(10.0 * 300 / 299)
    mixed = [(float(i % 7), 6.0 + i % 5) for i in range(50)]
    assert design_effect(_moments(mixed)) == pytest.approx(_direct(mixed), rel=1e-9)


@pytest.mark.parametrize(
    "users",
    [[(3.0, 5.0)], [(0.0, 4.0), (0.0, 2.0)], [(4.0, 4.0), (2.0, 2.0)], []],
    ids=["one user", "all failures", "all successes", "none"],
)
def test_undefined_design_effects_are_none(users: list[tuple[float, float]]) -> None:
    assert design_effect(_moments(users)) is None


def test_design_effect_times_binomial_is_the_variance_across_replicates() -> None:
    """200 users with Beta propensities and lognormal activity: across replicates the rate
    varies as deff x p (1 - p) / n says (the users are what is sampled)."""
    rng = np.random.default_rng(5)
    rates, predicted = [], []
    for _ in range(1500):
        activity = np.maximum(rng.poisson(rng.lognormal(1.0, 1.0, 200)), 0)
        y = rng.binomial(activity, rng.beta(4.0, 1.0, 200)).astype(float)
        users = list(zip(y.tolist(), activity.astype(float).tolist(), strict=True))
        m = _moments(users)
        deff = design_effect(m)
        assert deff is not None
        p = m.successes / m.trials
        rates.append(p)
        predicted.append(deff * p * (1 - p) / m.trials)
    assert np.mean(predicted) > 3 * np.mean(np.array(rates) * (1 - np.array(rates))) / 1200
    assert np.var(rates) == pytest.approx(np.mean(predicted), rel=0.12)


# --- the SQL: the same sums as a brute force over the rows ---------------------------------


def _brute_moments(
    rows: list[dict[str, Any]], start: float, end: float, horizon: float, unlabeled: str
) -> dict[tuple[str, str], ClusterMoments]:
    cells: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in rows:
        if not start <= row["created_at"] < end:
            continue
        label = label_at_maturity(
            row["label"],
            row["labeled_at"],
            row["created_at"],
            horizon,
            unlabeled,  # type: ignore[arg-type]
        )
        if label is None:
            continue
        cells[(row["arm"], row["entity_key"])][outcome_of(row["decision"] == "decline", label)] += 1
    out = {}
    for arm in ("baseline", "candidate"):
        for metric, (hits, tries) in LABEL_RATES.items():
            users = [
                (sum(c[h] for h in hits), sum(c[t] for t in tries))
                for (a, _), c in cells.items()
                if a == arm
            ]
            out[(arm, metric)] = _moments(users)
    return out


@pytest.mark.parametrize("unlabeled", ["negative", "exclude"])
def test_label_moments_in_sql_equal_a_brute_force_over_the_rows(
    database: Database, tmp_path: Path, unlabeled: str
) -> None:
    engine, _ = engine_for(database, tmp_path)
    tables = Tables(database.prefix)
    rows = random_rows(1500, 0.0, 300.0, 50.0, seed=21)  # 50 entity keys, repeat users
    write_rows(engine, tables, rows)
    reader = PredlogReader(engine, tables)
    got = reader.label_moments(20.0, 250.0, 50.0, unlabeled, as_of=None)  # type: ignore[arg-type]
    want = _brute_moments(rows, 20.0, 250.0, 50.0, unlabeled)
    assert set(got) == set(want)
    for key, m in want.items():
        assert got[key] == pytest.approx(m), key
        assert m.clusters > 10
    engine.dispose()


def test_decision_moments_and_the_source_design_effects(database: Database, tmp_path: Path) -> None:
    engine, _ = engine_for(database, tmp_path)
    tables = Tables(database.prefix)
    rows = random_rows(1200, 0.0, 200.0, 20.0, seed=4)
    # a repeat user whose every transaction is declined: approvals are correlated within users
    rows += [
        {**rows[0], "request_id": f"heavy-{i}", "entity_key": "heavy", "arm": "candidate",
         "model_version": "2", "decision": "decline", "created_at": 10.0 + i * 0.1}
        for i in range(300)
    ]  # fmt: skip
    write_rows(engine, tables, rows)
    source = PredlogSource(PredlogReader(engine, tables), labels=None)
    deffs = source.design_effects(0.0, ServedWindow(3, 5.0, 100.0, 200.0), None)
    for arm in ("baseline", "candidate"):
        per_user: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for row in rows:
            if row["arm"] == arm and row["created_at"] < 200.0:
                per_user[row["entity_key"]][0] += row["decision"] == "approve"
                per_user[row["entity_key"]][1] += 1
        users = [(y, n) for y, n in per_user.values()]
        assert deffs[(arm, "approval_rate")] == pytest.approx(_direct(users))
    assert deffs[("candidate", "approval_rate")] > 5.0  # the heavy user's declines
    assert 0.5 < deffs[("baseline", "approval_rate")] < 2.0  # 50 users, no shared outcome
    assert ("candidate", "recall") in deffs  # labels known by the window's end
    engine.dispose()


def test_a_record_from_the_prediction_log_carries_deff_on_its_rate_arms(
    database: Database, tmp_path: Path
) -> None:
    engine, _ = engine_for(database, tmp_path)
    tables = Tables(database.prefix)
    write_rows(engine, tables, random_rows(1200, 0.0, 200.0, 20.0, seed=8))
    source = PredlogSource(PredlogReader(engine, tables), labels=None)
    policy = Policy(
        name="p",
        kpis=(
            Kpi(name="recall", margin=0.02),
            Kpi(name="recall_eu", metric="recall", segment="region=eu", margin=0.02),
        ),
    )
    first = {"rollout": "r", "window": 1, "stage": 5.0, "served_from": 0.0, "served_to": 100.0}
    history = [build_record(policy, source, Collected(source.window(0.0, 100.0)), [], first)]
    base = {**first, "window": 2, "served_from": 100.0, "served_to": 200.0}
    record = build_record(
        policy, source, Collected(source.window(100.0, 200.0)), history, base
    ).as_json()
    rollout_to_date = source.design_effects(0.0, ServedWindow(2, 5.0, 100.0, 200.0), None)
    for arm in ("baseline", "candidate"):
        data = record["kpis"]["recall"][arm]
        assert data["deff"] == rollout_to_date[(arm, "recall")]  # since the first window
        assert "deff" not in record["kpis"]["recall_eu"][arm]  # one segment: binomial
    assert history[0].as_json()["kpis"]["recall"]["candidate"]["deff"] != data["deff"]
    window = to_window(parse_line(json.dumps(record)), compile_plan(policy))
    candidate = window.kpis["recall"].candidate
    assert isinstance(candidate, Rate) and candidate.deff == data["deff"]
    engine.dispose()


def test_replay_reads_deff_and_refuses_a_bad_one() -> None:
    plan = compile_plan(Policy(name="p", kpis=(Kpi(name="recall", margin=0.01),)))
    line = {"window": 1, "stage": 5, "kpis": {"recall": {
        "baseline": {"successes": 80, "trials": 100, "deff": 2.5},
        "candidate": {"successes": 8, "trials": 10}}}}  # fmt: skip
    obs = to_window(parse_line(json.dumps(line)), plan).kpis["recall"]
    assert isinstance(obs.baseline, Rate) and obs.baseline.deff == 2.5
    assert isinstance(obs.candidate, Rate) and obs.candidate.deff is None
    for bad in (-1.0, "2", float("inf")):
        line["kpis"]["recall"]["baseline"]["deff"] = bad  # type: ignore[index]
        with pytest.raises(LineError, match="deff"):
            to_window(parse_line(json.dumps(line)), plan)


# --- the gate: a predictable design effect, and false rollbacks on clustered data -------------


def test_the_candidates_current_design_effect_never_sets_its_own_look() -> None:
    base = Rate(800.0, 1000.0, deff=3.0)
    assert design_effect_of(KpiState(), base) == 3.0  # first look: the baseline's
    assert design_effect_of(KpiState(candidate_deff=5.0), base) == 5.0  # its previous one
    assert design_effect_of(KpiState(), Rate(800.0, 1000.0, deff=0.4)) == 1.0  # floor
    assert design_effect_of(KpiState(), Rate(800.0, 1000.0)) == 1.0  # none known: binomial
    # a window whose candidate claims deff 100 is judged with the baseline's: same evidence
    plan = compile_plan(Policy(name="p", kpis=(Kpi(name="recall", margin=0.01),)))
    reports = []
    for cand_deff in (None, 100.0):
        obs = Observation(base, Rate(70.0, 100.0, deff=cand_deff))
        _, decision = judge(plan, RolloutState(), Window(1, 5.0, {"recall": obs}))
        reports.append(decision.kpis["recall"].ci)
    assert reports[0] == reports[1]


def _clustered_rollout(rng: np.random.Generator, with_deff: bool) -> Decision:
    """An identical candidate at one stage: 60 users per arm who recur every window with their
    own propensity (Beta, sd 0.2), 12 windows judged until a decision."""
    stage = Stage(traffic=100, soak=1800.0, interval=300.0)
    kpis = (Kpi(name="recall", margin=0.02),)
    plan = compile_plan(Policy(name="p", kpis=kpis, stages=(stage,), holdback=40, max_holds=6))
    propensity = rng.beta(3.0, 1.0, (2, 60))
    activity = rng.lognormal(1.5, 1.0, (2, 60))
    y_sum, n_sum = np.zeros((2, 60)), np.zeros((2, 60))
    state, decision = RolloutState(), Decision.HOLD
    for t in range(12):
        n = rng.poisson(activity).astype(float)
        y = rng.binomial(n.astype(int), propensity).astype(float)
        y_sum, n_sum = y_sum + y, n_sum + n
        arms = []
        for a in (0, 1):
            pairs = list(zip(y_sum[a].tolist(), n_sum[a].tolist(), strict=True))
            deff = design_effect(_moments(pairs)) if with_deff else None
            arms.append(Rate(float(y[a].sum()), float(n[a].sum()), deff))
        window = Window(t + 1, 100.0, {"recall": Observation(arms[0], arms[1])})
        state, decided = judge(plan, state, window)
        decision = decided.decision
        if decision is not Decision.HOLD:
            break
    return decision


def test_an_identical_candidate_with_repeat_users_is_rolled_back_at_most_at_alpha() -> None:
    rollouts = 150
    rolled = {
        with_deff: sum(
            _clustered_rollout(np.random.default_rng([17, r]), with_deff) is Decision.ROLLBACK
            for r in range(rollouts)
        )
        / rollouts
        for with_deff in (False, True)
    }
    assert rolled[False] > 0.25  # binomial variance on correlated users: far above alpha
    assert rolled[True] <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / rollouts)

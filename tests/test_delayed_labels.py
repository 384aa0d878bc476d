"""Delayed labels end to end: the real router, /feedback and the prediction log with labels
later than a window, rebuilt by `kpigate windows` and judged by `kpigate replay` (a real pipe)."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from kpigate.traffic import LabelDelay, TrafficOptions, replay
from tests.serve_fixtures import FixedModel, RouterServer, metric_value

WINDOW = 1.0
HORIZON = 5.0

POLICY = {
    "name": "aa-delayed",
    "max_holds": 12,
    "on_max_holds": "suspend",
    "stages": [
        {"traffic": 50, "soak": "12s", "interval": f"{WINDOW}s"},
        {"traffic": 100, "soak": "12s", "interval": f"{WINDOW}s"},
    ],
    "labels": {"horizon": f"{HORIZON}s", "unlabeled": "negative"},
    "kpis": [
        {"name": "recall", "margin": 0.05, "min_samples": 20},
        {"name": "precision", "margin": 0.05, "min_samples": 20},
        {"name": "chargeback_rate", "direction": "lower", "margin": 0.25,
         "margin_type": "relative", "fail_beyond_margin": True, "min_samples": 20},
        {"name": "error_rate", "direction": "lower", "margin": 0.05, "min_samples": 20},
    ],
}  # fmt: skip


def _score(frame: pd.DataFrame) -> np.ndarray[Any, Any]:
    # The same model on both arms (A/A): a score that tracks the amount, so decisions vary.
    return np.clip(frame["amount"].to_numpy(dtype=float) / 400.0, 0.0, 1.0)


def test_lognormal_delays_have_the_chosen_median_and_never_means_never() -> None:
    rng = random.Random(1)
    samples = sorted(LabelDelay("lognormal", 10.0, 0.8).sample(rng) or 0.0 for _ in range(4001))
    assert 9.0 < samples[2000] < 11.0  # the median
    assert samples[-40] > 30.0  # a long right tail
    assert LabelDelay("never", 10.0).sample(rng) is None
    assert LabelDelay("fixed", 3.0).sample(rng) == 3.0
    with pytest.raises(ValueError, match="unknown delay"):
        LabelDelay("gamma", 1.0).sample(rng)


def _run_aa(
    start_router: Callable[..., RouterServer], tmp_path: Path, mode: str, weight: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    models = {"champion": FixedModel("1", score=_score), "candidate": FixedModel("2", score=_score)}
    router = start_router(
        models,
        initial_weight=weight,
        initial_mode=mode,
        label_horizon_s=HORIZON,
        maturity_interval_s=0.2,
    )
    start = time.time()
    opts = TrafficOptions(
        url=router.url,
        count=1500,
        rate=250.0,
        concurrency=8,
        fraud_delay_s=1.5 * WINDOW,  # fraud about 1.5 windows late, with a long tail
        fraud_delay_kind="lognormal",
        delay_sigma=0.4,
        maturity_s=3.0 * WINDOW,  # legitimate labels 3 windows late
        legit_delay_kind="fixed",
        seed=11,
        fraud_share=0.2,
        progress=False,
    )
    summary = asyncio.run(replay(opts))
    assert summary.ok == 1500 and summary.feedback["joined"] > 1000
    assert summary.feedback["late"] < 30  # the lognormal tail beyond the horizon
    end = time.time()
    time.sleep(HORIZON + 1.5)  # every cohort matures, and the router counts it
    with router.client() as client:
        metrics = client.get("/metrics").text
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    as_of = end + HORIZON + 1.0
    windows = subprocess.run(
        [sys.executable, "-m", "kpigate.cli", "windows", "--policy", str(policy),
         "--model-name", "fraud", "--baseline-version", "1", "--candidate-version", "2",
         "--stages", f"50@{start}", "--to", str(as_of), "--as-of", str(as_of),
         "--db-url", router.config.db_url],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    decisions = subprocess.run(
        [sys.executable, "-m", "kpigate.cli", "replay", "--policy", str(policy), "-"],
        input=windows.stdout, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    records = [json.loads(line) for line in windows.stdout.splitlines()]
    return records, [json.loads(line) for line in decisions.stdout.splitlines()], metrics


def test_an_identical_candidate_with_labels_later_than_a_window_is_not_rolled_back(
    start_router: Callable[..., RouterServer], tmp_path: Path
) -> None:
    records, decisions, metrics = _run_aa(start_router, tmp_path, "canary", 50.0)
    cohorts = [r for r in records if "cohort" in r]
    assert len(cohorts) >= 5, "too few matured cohorts to judge"
    assert [r["cohort"]["window"] for r in cohorts] == list(range(1, len(cohorts) + 1))
    judged = [r for r in cohorts if r["kpis"]["recall"]["candidate"]]
    assert sum(r["kpis"]["recall"]["candidate"]["trials"] for r in judged) > 100
    assert all("recall" not in r["kpis"] for r in records if "cohort" not in r)
    assert [d["decision"] for d in decisions if d["decision"] == "rollback"] == []
    # The router counted each logged prediction once at maturity.
    served = sum(
        (r["kpis"]["error_rate"][arm] or {"trials": 0})["trials"]
        for r in records
        for arm in ("baseline", "candidate")
    )
    matured = metric_value(metrics, "kpigate_matured_predictions_total", segment="all")
    assert matured == served == 1500


def test_shadow_mode_with_delayed_labels_judges_the_shadow_copies_on_matured_cohorts(
    start_router: Callable[..., RouterServer], tmp_path: Path
) -> None:
    records, decisions, metrics = _run_aa(start_router, tmp_path, "shadow", 100.0)
    cohorts = [r for r in records if "cohort" in r]
    assert len(cohorts) >= 5
    # Every request was scored by both arms, so the cohorts hold (nearly) the same predictions:
    # a shadow copy is logged a little after its answer and may fall into the next window.
    totals = {
        arm: sum((r["kpis"]["recall"][arm] or {"trials": 0})["trials"] for r in cohorts)
        for arm in ("baseline", "candidate")
    }
    assert totals["baseline"] > 100
    assert abs(totals["candidate"] - totals["baseline"]) <= 0.02 * totals["baseline"]
    assert [d["decision"] for d in decisions if d["decision"] == "rollback"] == []
    shadow = metric_value(
        metrics, "kpigate_matured_predictions_total", segment="all", shadow="true"
    )
    assert shadow == 1500

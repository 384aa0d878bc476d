"""Regenerate kpigate/examples/fraud-rollout.jsonl: two recorded rollouts of the case study.

The windows are simulated in closed loop with the gate (a window is drawn at the stage the
gate has reached), so the file reads like what the pipeline would have recorded. The policy has
a `labels` section, so a record's label KPIs (recall, precision, fpr, auc, chargeback_rate, the
gap) count the oldest matured cohort, chosen by kpigate/sources/cohorts.py as every source does,
and its immediate KPIs (latency, errors, approvals) its own serving window:
  good  the LightGBM candidate: recall +3.2pp, AUC +0.007, slightly more false positives,
        a latency spike in two windows of the 50% stage (the paper's single freeze event)
  bad   a candidate with recall -5pp

Run from the repository root: python scripts/make_example.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from kpigate.engine import Decision, RolloutState, compile_plan, judge
from kpigate.policy import load_policy
from kpigate.replay import parse_line, to_window
from kpigate.sources.cohorts import ServedWindow, next_cohort

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "kpigate" / "examples" / "policy.yaml"
OUT = ROOT / "kpigate" / "examples" / "fraud-rollout.jsonl"

TRANSACTIONS_PER_WINDOW = 120_000  # 10 minutes at 200 transactions/s
START = 1_772_355_600.0  # 2026-03-01 09:00 UTC, when the first window starts serving
FRAUD_RATE = 0.015
HIGH_VALUE_SHARE = 0.15
SCORE_BOUNDS = [*np.arange(-2.0, 5.01, 0.5).round(2).tolist(), math.inf]
LATENCY_BOUNDS = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 125, 150, 200, 300, 500, math.inf]

BASELINE = {
    "recall": 0.876,
    "fpr_low": 0.0011,
    "fpr_high": 0.0018,
    "auc_shift": 2.383,
    "latency_median": 45.0,
    "errors": 0.001,
}
CANDIDATES = {
    "good": {
        **BASELINE,
        "recall": 0.908,
        "fpr_low": 0.0013,
        "fpr_high": 0.0024,
        "auc_shift": 2.492,
        "latency_median": 42.0,
    },
    "bad": {**BASELINE, "recall": 0.826},
}


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _cumulative(bounds: list[float], counts: np.ndarray) -> dict[str, int]:
    running = np.cumsum(counts)
    return {
        ("+Inf" if math.isinf(b) else f"{b:g}"): int(c)
        for b, c in zip(bounds, running, strict=True)
    }


def _histogram(rng: np.random.Generator, n: int, bounds: list[float], cdf: Any) -> dict[str, int]:
    edges = [cdf(b) if not math.isinf(b) else 1.0 for b in bounds]
    probs = np.diff([0.0, *edges])
    return _cumulative(bounds, rng.multinomial(n, probs / probs.sum()))


def _arm(rng: np.random.Generator, n: int, model: dict[str, float], spike: bool) -> dict[str, Any]:
    positives = int(rng.binomial(n, FRAUD_RATE))
    negatives = n - positives
    high_neg = int(rng.binomial(negatives, HIGH_VALUE_SHARE))
    low_neg = negatives - high_neg
    tp = int(rng.binomial(positives, model["recall"]))
    fp_high = int(rng.binomial(high_neg, model["fpr_high"]))
    fp_low = int(rng.binomial(low_neg, model["fpr_low"]))
    fp = fp_high + fp_low
    fn = positives - tp
    approved = n - tp - fp
    median = model["latency_median"] * (1.6 if spike else 1.0)
    shift = model["auc_shift"]
    return {
        "recall": {"successes": tp, "trials": positives},
        "precision": {"successes": tp, "trials": tp + fp},
        "fpr": {"successes": fp, "trials": negatives},
        "auc": {
            "positives": _histogram(rng, positives, SCORE_BOUNDS, lambda b: _normal_cdf(b - shift)),
            "negatives": _histogram(rng, negatives, SCORE_BOUNDS, _normal_cdf),
        },
        "latency_p95": {
            "buckets": _histogram(
                rng, n, LATENCY_BOUNDS, lambda b: _normal_cdf(math.log(b / median) / 0.35)
            )
        },
        "error_rate": {"successes": int(rng.binomial(n, model["errors"])), "trials": n},
        "approval_rate": {"successes": approved, "trials": n},
        "chargeback_rate": {"successes": fn, "trials": approved},
        "fpr_gap_amount": {
            "a": {"successes": fp_high, "trials": high_neg},
            "b": {"successes": fp_low, "trials": low_neg},
        },
    }


def simulate(name: str, seed: int, max_windows: int = 60) -> list[dict[str, Any]]:
    policy = load_policy(POLICY)
    assert policy.labels is not None, "the example policy judges label KPIs on cohorts"
    plan = compile_plan(policy)
    rng = np.random.default_rng(seed)
    stages = [s.traffic for s in policy.stages]
    label_kpis = {key for kpi in policy.kpis if kpi.needs_labels for key in kpi.hypotheses()}
    stage_index, look_in_stage = 0, 0
    state = RolloutState()
    lines = []
    served: list[ServedWindow] = []
    arms: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}  # window -> (candidate, baseline)
    judged: set[int] = set()
    end = START
    for index in range(1, max_windows + 1):
        stage = stages[stage_index]
        weight = policy.candidate_weight(policy.stages[stage_index])
        n_candidate = round(TRANSACTIONS_PER_WINDOW * weight / 100)
        look_in_stage += 1
        spike = name == "good" and stage == 50 and look_in_stage in (2, 3)
        arms[index] = (
            _arm(rng, n_candidate, CANDIDATES[name], spike),
            _arm(rng, TRANSACTIONS_PER_WINDOW - n_candidate, BASELINE, False),
        )
        start, end = end, end + policy.stages[stage_index].interval
        served.append(ServedWindow(index, stage, start, end))
        record: dict[str, Any] = {
            "rollout": name,
            "window": index,
            "stage": stage,
            "served_from": start,
            "served_to": end,
        }
        cand, base = arms[index]
        kpis = {k: {"baseline": base[k], "candidate": cand[k]} for k in cand if k not in label_kpis}
        cohort = next_cohort(served, judged, policy.labels.horizon, now=end)
        if cohort is not None and cohort.due:
            judged.add(cohort.window.index)
            record["cohort"] = cohort.cohort_json()
            old_cand, old_base = arms[cohort.window.index]
            kpis.update(
                {k: {"baseline": old_base[k], "candidate": old_cand[k]} for k in label_kpis}
            )
        elif cohort is not None:
            record["pending"] = cohort.pending_json()
        record["kpis"] = kpis
        lines.append(record)
        state, decision = judge(plan, state, to_window(parse_line(json.dumps(record)), plan))
        if decision.final:
            break
        if decision.decision is Decision.PROMOTE:
            stage_index, look_in_stage = stage_index + 1, 0
    return lines


def main() -> None:
    records = simulate("good", seed=7) + simulate("bad", seed=8)
    OUT.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
    print(f"wrote {len(records)} windows to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""Offline fraud KPIs at an operating threshold, overall and per segment value."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.stats import rankdata

from kpigate.fraud.schema import LABEL, SEGMENTS


def auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """ROC AUC by the rank-sum identity (ties count half); NaN when one class is missing."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def confusion(labels: npt.ArrayLike, flagged: npt.ArrayLike) -> tuple[int, int, int, int]:
    """(tp, fp, tn, fn), where 'flagged' means the model called it fraud."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(flagged).astype(bool)
    return (
        int(np.sum(p & y)),
        int(np.sum(p & ~y)),
        int(np.sum(~p & ~y)),
        int(np.sum(~p & y)),
    )


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def classification_metrics(
    labels: npt.ArrayLike, scores: npt.ArrayLike, threshold: float
) -> dict[str, float]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    tp, fp, tn, fn = confusion(y, s >= threshold)
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "fpr": _ratio(fp, fp + tn),
        "accuracy": _ratio(tp + tn, len(y)),
        "auc": auc(y, s),
        "approval_rate": _ratio(fn + tn, len(y)),
        # Fraud among approved transactions: what turns into chargebacks.
        "chargeback_rate": _ratio(fn, fn + tn),
    }


def _codes(column: pd.Series) -> tuple[npt.NDArray[np.int64], list[str]]:
    # Categorical codes when we have them: comparing strings over 200k rows costs seconds.
    if isinstance(column.dtype, pd.CategoricalDtype):
        return column.cat.codes.to_numpy(dtype=np.int64), [str(c) for c in column.cat.categories]
    codes, uniques = pd.factorize(column.astype(str), sort=True)
    return codes.astype(np.int64), [str(u) for u in uniques]


def offline_metrics(
    frame: pd.DataFrame, scores: npt.ArrayLike, threshold: float
) -> dict[str, float]:
    """Overall KPIs plus recall_<segment>_<value> and fpr_<segment>_<value> for every segment
    value present (the gates compare arms per segment, e.g. recall_region_eu)."""
    s = np.asarray(scores, dtype=np.float64)
    y = frame[LABEL].to_numpy()
    out = classification_metrics(y, s, threshold)
    out["n"] = float(len(y))
    out["fraud_rate"] = float(y.mean()) if len(y) else float("nan")
    flagged = s >= threshold
    for segment in SEGMENTS:
        codes, names = _codes(frame[segment])
        for code, value in enumerate(names):
            mask = codes == code
            if not mask.any():
                continue
            tp, fp, tn, fn = confusion(y[mask], flagged[mask])
            out[f"recall_{segment}_{value}"] = _ratio(tp, tp + fn)
            out[f"fpr_{segment}_{value}"] = _ratio(fp, fp + tn)
    return out

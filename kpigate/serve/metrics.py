"""The router's Prometheus metrics; names, labels and meaning are documented in docs/metrics.md.

Every label has a bounded set of values (arm, model version, decision, outcome, segment). The
label children are cached because `.labels()` costs more than the increment on the hot path.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kpigate.serve.predlog import SEGMENT_SLOTS

# Fine enough near 0 (fraud scores crowd there) that ROC AUC from cumulative buckets is close to
# the exact one; see docs/metrics.md for the formula.
SCORE_BUCKETS = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08,
    0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7,
    0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 1.0,
)  # fmt: skip
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
# Labels arrive from seconds (a replay) to weeks (chargebacks) after the prediction.
LAG_BUCKETS = (
    1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400,
    2 * 86400, 4 * 86400, 7 * 86400, 14 * 86400, 30 * 86400, 60 * 86400,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
COMMIT_BUCKETS = (
    0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
    0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
COMMIT_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
DROP_REASONS = ("dead_letter", "queue_full")
FEEDBACK_RESULTS = ("joined", "unknown", "duplicate", "invalid", "late", "before_prediction")


def _flag(value: bool) -> str:
    return "true" if value else "false"


class RouterMetrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        segments: tuple[str, ...] = SEGMENT_SLOTS,
    ) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.set_segments(segments)
        r = self.registry
        self.latency = Histogram(
            "kpigate_request_latency_seconds",
            "Time from receiving a /predict request to its answer, per answering arm and version.",
            ["arm", "model_version"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.model_errors = Counter(
            "kpigate_model_errors_total",
            "Scoring failures per arm and version; kind is exception, timeout or stopped.",
            ["arm", "model_version", "kind"], registry=r,
        )  # fmt: skip
        self.fallbacks = Counter(
            "kpigate_fallbacks_total",
            "Candidate-routed requests answered by the baseline after a candidate error.",
            ["model_version"], registry=r,
        )  # fmt: skip
        self.invalid = Counter(
            "kpigate_invalid_requests_total",
            "Requests refused with a 4xx status, per endpoint.",
            ["endpoint"], registry=r,
        )  # fmt: skip
        self.decisions = Counter(
            "kpigate_decisions_total",
            "Decisions made, per arm, version, decision (approve|decline) and shadow (true|false).",
            ["arm", "model_version", "decision", "shadow"], registry=r,
        )  # fmt: skip
        self.outcomes = Counter(
            "kpigate_outcomes_total",
            "Confusion counts of labeled predictions: outcome tp|fp|tn|fn per arm, version, "
            "shadow and segment (all, region=.., payment_method=.., amount_band=..).",
            ["arm", "model_version", "shadow", "segment", "outcome"], registry=r,
        )  # fmt: skip
        self.labeled_score = Histogram(
            "kpigate_labeled_score",
            "Scores of labeled predictions per true class (label 0|1), for ROC AUC from buckets.",
            ["arm", "model_version", "shadow", "label"], buckets=SCORE_BUCKETS, registry=r,
        )  # fmt: skip
        self.label_lag = Histogram(
            "kpigate_label_lag_seconds",
            "Seconds from a served prediction to its joined label, per label.",
            ["label"], buckets=LAG_BUCKETS, registry=r,
        )  # fmt: skip
        self.feedback = Counter(
            "kpigate_feedback_labels_total",
            "Labels received on /feedback per result: joined|unknown|duplicate|invalid|late|"
            "before_prediction.",
            ["result"], registry=r,
        )  # fmt: skip
        self.shadow_compared = Counter(
            "kpigate_shadow_comparisons_total",
            "Requests scored by both arms in shadow mode.",
            ["baseline_version", "candidate_version"], registry=r,
        )  # fmt: skip
        self.shadow_disagreed = Counter(
            "kpigate_shadow_disagreements_total",
            "Shadow comparisons where the two arms' decisions differ.",
            ["baseline_version", "candidate_version"], registry=r,
        )  # fmt: skip
        self.weight = Gauge(
            "kpigate_candidate_weight_percent",
            "The candidate's share of entities in percent (0 when detached).", registry=r,
        )  # fmt: skip
        self.mode = Gauge("kpigate_mode", "1 for the current routing mode.", ["mode"], registry=r)
        self.model_info = Gauge(
            "kpigate_model_info", "1 for each loaded arm and its version.",
            ["arm", "model_version"], registry=r,
        )  # fmt: skip
        self.batch_rows = Histogram(
            "kpigate_batch_rows", "Rows per micro-batched predict call.",
            ["arm"], buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.log_written = Counter(
            "kpigate_predlog_rows_written_total", "Prediction log rows written.", registry=r
        )
        self.log_dropped = Counter(
            "kpigate_predlog_rows_dropped_total",
            "Rows the log lost, per reason: dead_letter (the database refused the row's content; "
            "its request was answered 500) or queue_full (a shadow copy, the queue full). "
            "Should stay 0.",
            ["reason"], registry=r,
        )  # fmt: skip
        for reason in DROP_REASONS:
            self.log_dropped.labels(reason)
        self.log_unavailable = Counter(
            "kpigate_predlog_unavailable_total",
            "Predictions answered 503 because the log could not commit them in time.",
            registry=r,
        )  # fmt: skip
        self.log_pending = Gauge(
            "kpigate_predlog_pending_rows", "Rows queued, not yet committed.", registry=r
        )
        # Counted once per prediction when its label horizon has passed (maturity.py), so
        # increase() over a window is one cohort's matured counts; label is 1|0|none.
        self.matured = Counter(
            "kpigate_matured_predictions_total",
            "Predictions counted at maturity (label horizon passed) per arm, version, shadow, "
            "segment, decision and label (1|0|none: no label within the horizon).",
            ["arm", "model_version", "shadow", "segment", "decision", "label"], registry=r,
        )  # fmt: skip
        self.matured_score = Histogram(
            "kpigate_matured_score",
            "Scores of matured predictions per label (1|0|none), for ROC AUC of a cohort.",
            ["arm", "model_version", "shadow", "label"], buckets=SCORE_BUCKETS, registry=r,
        )  # fmt: skip
        self.label_horizon = Gauge(
            "kpigate_label_horizon_seconds",
            "The router's label horizon: a prediction matures this long after it was served.",
            registry=r,
        )  # fmt: skip
        self.commit_wait = Histogram(
            "kpigate_predlog_commit_seconds",
            "Time a served prediction waited for its log commit before its answer left.",
            buckets=COMMIT_BUCKETS, registry=r,
        )  # fmt: skip
        self.commit_rows = Histogram(
            "kpigate_predlog_commit_rows",
            "Rows per prediction log commit (group commit: all rows queued during the last one).",
            buckets=COMMIT_ROW_BUCKETS, registry=r,
        )  # fmt: skip
        self.state_version = Gauge(
            "kpigate_routing_state_version",
            "Version of the shared routing state this replica has applied.", registry=r,
        )  # fmt: skip
        for result in FEEDBACK_RESULTS:
            self.feedback.labels(result)
        self._cache: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = metric.labels(*labels)
        return found

    def committed(self, rows: int) -> None:
        self.log_written.inc(rows)
        if rows:
            self.commit_rows.observe(rows)

    def observe_served(self, arm: str, version: str, seconds: float) -> None:
        self.child(self.latency, arm, version).observe(seconds)

    def count_decision(self, arm: str, version: str, decision: str, shadow: bool) -> None:
        self.child(self.decisions, arm, version, decision, _flag(shadow)).inc()

    def set_segments(self, names: tuple[str, ...]) -> None:
        """The configured segments (kpigate/serve/schema.py), in the log's slot order: a row's
        slot values are counted as `name=value`."""
        self._segment_slots = tuple(zip(names, SEGMENT_SLOTS, strict=False))

    def _segments_of(self, row: dict[str, Any]) -> list[str]:
        return ["all", *(f"{name}={row[slot]}" for name, slot in self._segment_slots)]

    def count_outcome(self, row: dict[str, Any], label: int, lag_s: float | None) -> None:
        """Account one newly joined prediction row (called exactly once per row)."""
        predicted = row["decision"] == "decline"
        outcome = ("tp" if label else "fp") if predicted else ("fn" if label else "tn")
        base = (row["arm"], row["model_version"], _flag(bool(row["shadow"])))
        for segment in self._segments_of(row):
            self.child(self.outcomes, *base, segment, outcome).inc()
        self.child(self.labeled_score, *base, str(label)).observe(row["score"])
        if lag_s is not None:
            self.child(self.label_lag, str(label)).observe(max(lag_s, 0.0))

    def count_matured(self, row: dict[str, Any], label: int | None) -> None:
        """Account one prediction claimed at maturity (called exactly once per row)."""
        value = "none" if label is None else str(label)
        base = (row["arm"], row["model_version"], _flag(bool(row["shadow"])))
        for segment in self._segments_of(row):
            self.child(self.matured, *base, segment, row["decision"], value).inc()
        self.child(self.matured_score, *base, value).observe(row["score"])

    def set_routing(self, weight: float, mode: str, modes: tuple[str, ...]) -> None:
        self.weight.set(weight)
        for m in modes:
            self.mode.labels(m).set(1 if m == mode else 0)

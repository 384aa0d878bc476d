"""PromQL for the dashboard: KPIs per arm from the router's raw counters under the dashboard's
variables (job, namespace, model_version), and the ROC AUC from the labelled-score histograms."""

from __future__ import annotations

AUC_WINDOW = "10m"
# The scrape target (job, namespace) and, for series that carry it, the model version.
TARGET = 'job=~"$job",namespace=~"$namespace"'
SEL = TARGET + ',model_version=~"$model_version"'
# Score buckets the AUC panel uses: a subset of kpigate.serve.metrics.SCORE_BUCKETS (any subset
# of cumulative buckets is a coarser histogram), spelled as the router exports `le`.
AUC_BOUNDS = ("0.01", "0.05", "0.1", "0.2", "0.3", "0.5", "0.7", "0.9", "0.97", "0.99", "+Inf")


def rate_ratio(metric: str, num: str, den: str, window: str = "5m") -> str:
    """sum(rate(num)) / sum(rate(den)) per arm, version and shadow, under the selector."""
    by = "arm, model_version, shadow"

    def total(match: str) -> str:
        return f"sum by ({by}) (rate({metric}{{{SEL},{match}}}[{window}]))"

    return f"{total(num)} / {total(den)}"


def outcome_ratio(num: str, den: str) -> str:
    """A ratio of confusion counts (overall segment): recall is outcome_ratio("tp", "tp|fn")."""
    return rate_ratio(
        "kpigate_outcomes_total",
        f'segment="all",outcome=~"{num}"',
        f'segment="all",outcome=~"{den}"',
    )


def auc_expr(window: str | None = AUC_WINDOW, bounds: tuple[str, ...] = AUC_BOUNDS) -> str:
    """ROC AUC per arm from the labelled-score histograms: with P and N the cumulative counts
    of positives and negatives at each bound, AUC = sum_i (P_i - P_i-1)(N_i + N_i-1) / 2PN,
    ties within a bucket counted half, as kpigate/engine/evidence.py auc_from_histograms.
    `window` None reads the counters as they stand (tests); else their increase over it."""

    def count(label: str, le: str) -> str:
        series = f'kpigate_labeled_score_bucket{{{SEL},label="{label}",le="{le}"}}'
        inner = f"increase({series}[{window}])" if window else series
        return f"sum by (arm, model_version, shadow) ({inner})"

    terms = []
    for i, le in enumerate(bounds):
        if i == 0:
            terms.append(f"{count('1', le)} * {count('0', le)}")
        else:
            low = bounds[i - 1]
            terms.append(
                f"({count('1', le)} - {count('1', low)}) * ({count('0', le)} + {count('0', low)})"
            )
    top = bounds[-1]
    return f"({' + '.join(terms)}) / (2 * {count('1', top)} * {count('0', top)})"


def error_ratio() -> str:
    """Failures over attempts; `or 0 * ...` gives an arm that never fails an explicit 0 and
    one that always fails a 1, as the recording rule does."""
    by = "sum by (arm, model_version)"
    errors = f"{by} (rate(kpigate_model_errors_total{{{SEL}}}[5m]))"
    made = f"{by} (rate(kpigate_decisions_total{{{SEL}}}[5m]))"
    return f"({errors} or 0 * {made}) / (({made} or 0 * {errors}) + ({errors} or 0 * {made}))"

"""The rollout policy: defaults, and errors that name the file, the field and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpigate.policy import (
    Action,
    Method,
    PolicyError,
    Scope,
    default_policy,
    load_policy,
    parse_duration,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "kpigate" / "examples" / "policy.yaml"

MINIMAL = """
kpis:
  - name: recall
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def test_minimal_policy_gets_the_documented_defaults(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, MINIMAL))
    assert [s.traffic for s in policy.stages] == [5, 25, 50, 100]
    assert policy.method is Method.SEQUENTIAL
    assert policy.alpha == 0.05
    assert policy.holdback == 5
    kpi = policy.kpis[0]
    assert (kpi.margin, kpi.action, kpi.scope) == (0.01, Action.ROLLBACK, Scope.ROLLOUT)
    assert policy.stages[0].looks == 6  # 30 minutes soak at a 5 minute interval


def test_the_bundled_case_study_policy_loads() -> None:
    policy = load_policy(EXAMPLE)
    categories = {k.category.value for k in policy.kpis}
    assert categories == {"performance", "operational", "business", "ethical"}
    assert {k.type.value for k in policy.kpis} == {"rate", "quantile", "auc", "gap"}


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        ("kpis:\n  - name: recall\n    marign: 0.01\n", "kpis[0] (recall).marign", "unknown field"),
        ("kpis:\n  - name: recall\n    margin: -0.01\n", "kpis[0] (recall).margin", "greater than"),
        ("alpha: 1.5\n" + MINIMAL, "alpha", "less than 1"),
        ("alpha: 0\n" + MINIMAL, "alpha", "greater than 0"),
        (
            "stages: [{traffic: 25}, {traffic: 5}, {traffic: 100}]\n" + MINIMAL,
            "(top level)",
            "stages must increase: 25% is followed by 5%",
        ),
        ("stages: [{traffic: 5}, {traffic: 50}]\n" + MINIMAL, "(top level)", "must be 100%"),
        (
            "stages: [{traffic: 5, soak: 5m, interval: 10m}, {traffic: 100}]\n" + MINIMAL,
            "stages[0]",
            "interval (600s) is longer than the soak (300s)",
        ),
        (
            "stages: [{traffic: 5, soak: soon}, {traffic: 100}]\n" + MINIMAL,
            "stages[0].soak",
            "not a duration",
        ),
        (
            "kpis:\n  - name: latency\n    type: quantile\n",
            "kpis[0] (latency)",
            "needs `quantile`",
        ),
        (
            "kpis:\n  - name: latency\n    type: quantile\n    quantile: 0.95\n    scope: window\n",
            "kpis[0] (latency)",
            "scope `window` cannot roll back",
        ),
        ("kpis:\n  - name: recall\n    margin: 0\n", "kpis[0] (recall)", "give `detect`"),
        ("kpis: []\n", "kpis", "at least 1"),
        ("kpis:\n  - name: a\n  - name: a\n", "(top level)", "unique: a"),
        ("method: bayes\n" + MINIMAL, "method", "'sequential' or 'sigma'"),
    ],
)
def test_bad_policy_names_file_field_and_problem(
    tmp_path: Path, text: str, field: str, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {field}: "), message
    assert problem in message


def test_malformed_yaml_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "kpis:\n  - name: recall\n   margin: [\n")
    with pytest.raises(PolicyError, match=rf"{path}: not valid YAML at line \d+, column \d+"):
        load_policy(path)


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy(tmp_path / "absent.yaml")
    with pytest.raises(PolicyError, match="a policy is a mapping of fields, got list"):
        load_policy(write(tmp_path, "- 1\n- 2\n"))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90.0), ("90s", 90.0), ("10m", 600.0), ("1.5h", 5400.0), ("250ms", 0.25)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_replay_default_policy() -> None:
    policy = default_policy(["recall", "precision"], alpha=0.1, margin=0.02)
    assert policy.alpha == 0.1
    assert all(k.margin == 0.02 and k.action is Action.ROLLBACK for k in policy.kpis)
    assert all(k.direction.value == "higher" and k.type.value == "rate" for k in policy.kpis)


def test_label_metrics_are_the_catalogue_readings_from_labels() -> None:
    from kpigate.policy import LABEL_METRICS
    from kpigate.sources.catalogue import CONFUSION_RATES

    assert set(CONFUSION_RATES) | {"auc"} == LABEL_METRICS


def test_labels_horizon_that_no_stage_can_wait_for_is_an_error() -> None:
    import pytest

    from kpigate.policy import PolicyError, policy_from_dict

    data = {
        "stages": [{"traffic": 5, "soak": "10m", "interval": "5m"}, {"traffic": 100}],
        "max_holds": 2,
        "labels": {"horizon": "30m"},
        "kpis": [{"name": "recall"}],
    }
    with pytest.raises(PolicyError, match=r"stage 5%: its first cohort matures 2100s"):
        policy_from_dict(data)
    data["labels"] = {"horizon": "15m"}
    policy = policy_from_dict(data)
    assert policy.labels is not None and policy.labels.unlabeled == "negative"
    assert [k.needs_labels for k in policy.kpis] == [True]


def test_non_finite_durations_are_refused() -> None:
    import pytest

    from kpigate.policy import PolicyError, policy_from_dict

    for bad in (float("inf"), float("nan"), 1.0e400):
        with pytest.raises(PolicyError, match="finite"):
            policy_from_dict({"max_staleness": bad, "kpis": [{"name": "recall"}]})


def test_a_bad_kpi_is_reported_once_not_also_as_an_empty_list() -> None:
    """Pydantic adds "Tuple should have at least 1 item" when the only KPI failed: that line
    misleads (the file has a KPI) and is left out; a really empty list still says so."""
    from kpigate.policy import PolicyError, policy_from_dict

    with pytest.raises(PolicyError) as bad_item:
        policy_from_dict({"kpis": [{"name": "recall", "margin": "abc"}]}, "p.yaml")
    assert str(bad_item.value).splitlines() == [
        "p.yaml: kpis[0] (recall).margin: Input should be a valid number, "
        "unable to parse string as a number"
    ]
    with pytest.raises(PolicyError, match=r"p.yaml: kpis: .*at least 1 item"):
        policy_from_dict({"kpis": []}, "p.yaml")

"""A/A calibration windows: the baseline's halves before the rollout feed the between-window
variance and nothing else (docs/engine.md, "Calibration from the baseline's own history")."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from kpigate.engine import (
    Cause,
    Decision,
    Histogram,
    Observation,
    Rate,
    RolloutState,
    ScoreHistograms,
    SegmentRates,
    Window,
    compile_plan,
)
from kpigate.engine.classify import between_window_variance
from kpigate.engine.evidence import compare
from kpigate.engine.gate import judge
from kpigate.engine.plan import Spread, pooled_tau2
from kpigate.evidence_record import RecordError, parse_record
from kpigate.policy import Calibration, Kpi
from kpigate.replay import Replayer, decision_record, parse_line
from tests.engine_helpers import policy, rate_window


def _calibration(index: int, half_a: tuple[float, float], half_b: tuple[float, float]) -> Window:
    obs = Observation(baseline=Rate(*half_a), candidate=Rate(*half_b))
    return Window(index, 5.0, {"recall": obs}, calibration=True)


def _noisy_calibration(rng: np.random.Generator, k: int, n: int, sd: float) -> list[Window]:
    out = []
    for i in range(k):
        p_a, p_b = 0.876 + rng.normal(0, sd), 0.876 + rng.normal(0, sd)
        a, b = (float(rng.binomial(n, p_a)), float(n)), (float(rng.binomial(n, p_b)), float(n))
        out.append(_calibration(i - k, a, b))
    return out


def _by_hand(windows: list[Window]) -> float:
    """DerSimonian-Laird from the halves' differences, computed here independently of Spread:
    each window's variance from the halves of the calibration windows before it (the first:
    its own baseline half), as a rollout window's comes from the rollout's earlier windows."""
    u, w = [], []
    s_ref = n_ref = 0.0
    for window in windows:
        obs = window.kpis["recall"]
        assert isinstance(obs.baseline, Rate) and isinstance(obs.candidate, Rate)
        ref = obs.baseline if n_ref == 0 else Rate(s_ref, n_ref)
        p = (ref.successes + 1) / (ref.trials + 2)
        v = p * (1 - p) * (1 / obs.candidate.trials + 1 / obs.baseline.trials)
        u.append(
            obs.candidate.successes / obs.candidate.trials
            - obs.baseline.successes / obs.baseline.trials
        )
        w.append(1 / v)
        s_ref += obs.baseline.successes + obs.candidate.successes
        n_ref += obs.baseline.trials + obs.candidate.trials
    uu, ww = np.array(u), np.array(w)
    mean = (ww * uu).sum() / ww.sum()
    q = (ww * (uu - mean) ** 2).sum()
    c = ww.sum() - (ww**2).sum() / ww.sum()
    df = len(u) - 1
    return max(0.0, (q - df) / c) * (1 + 2 / df)


def test_a_calibration_window_is_no_look_and_never_triggers() -> None:
    """Halves 10 points apart (a rollout window like that rolls back at once) decide nothing:
    every calibration decision is a HOLD with cause calibration at look 0, no evidence is
    summed, and the first rollout window is look 1 of the stage."""
    plan = compile_plan(policy(Kpi(name="recall", margin=0.01)))
    state = RolloutState()
    for i in range(-24, 0):
        state, decision = judge(plan, state, _calibration(i, (9000, 10000), (8000, 10000)))
        assert decision.decision is Decision.HOLD
        assert decision.cause is Cause.CALIBRATION
        assert decision.calibration and decision.look == 0 and decision.holds == 0
        assert not decision.final and decision.kpis == {}
        assert decision.as_dict()["calibration"] is True
    kpi = state.kpis["recall"]
    assert kpi.info == 0.0 and kpi.weighted == 0.0 and kpi.looks == 0
    assert kpi.candidate is None and kpi.baseline is None
    assert state.windows == 0 and state.look == 0 and state.calibration_windows == 24
    assert kpi.calibration.windows == 24

    state, decision = judge(plan, state, rate_window(1, 5.0, (450, 500), (8550, 9500)))
    assert not decision.calibration and decision.look == 1
    assert decision.cause is Cause.SOAKING
    assert decision.kpis["recall"].calibration_windows == 24
    assert decision.kpis["recall"].as_dict()["calibration_windows"] == 24
    # The baseline and candidate shown are the rollout's, not the halves'.
    assert decision.kpis["recall"].samples == (500, 9500)


def test_tau2_rests_on_calibration_alone_at_the_first_look() -> None:
    rng = np.random.default_rng(3)
    calibration = _noisy_calibration(rng, 24, 5000, 0.02)
    plan = compile_plan(policy(Kpi(name="recall", margin=0.01)))
    state = RolloutState()
    for window in calibration:
        state, _ = judge(plan, state, window)
    tau2 = between_window_variance(state.kpis["recall"])
    assert tau2 == pytest.approx(_by_hand(calibration), rel=1e-9)
    # 2 sd^2 = 0.0008 of arm noise; 24 windows estimate it roughly (and the inflation 1 + 2/23)
    assert 0.0003 < tau2 < 0.002

    first = rate_window(1, 5.0, (438, 500), (8322, 9500))
    with_cal, _ = judge(plan, state, first)
    without, _ = judge(plan, RolloutState(), first)
    obs = first.kpis["recall"]
    assert obs.candidate is not None and obs.baseline is not None
    v = compare(obs.candidate, obs.baseline).variance
    assert without.kpis["recall"].info == pytest.approx(1 / v)  # no rollout spread yet
    assert with_cal.kpis["recall"].info == pytest.approx(1 / (v + tau2))


def test_a_real_difference_in_the_rollout_does_not_inflate_tau2() -> None:
    """Two groups, each around its own mean: shifting every rollout difference by a constant
    (a real effect) leaves the pooled tau^2 as it was, where one group around one mean (the
    calibration's 0 and the rollout's -0.05 together) would take the effect for noise."""
    rng = np.random.default_rng(1)
    calibration, rollout, shifted, one_group = Spread(), Spread(), Spread(), Spread()
    v = 0.0001
    for _ in range(20):
        d = rng.normal(0.0, math.sqrt(v))
        calibration = calibration.add(d, v)
        one_group = one_group.add(d, v)
    for _ in range(6):
        d = rng.normal(0.0, math.sqrt(v))
        rollout = rollout.add(d, v)
        shifted = shifted.add(d - 0.05, v)
        one_group = one_group.add(d - 0.05, v)
    pooled = pooled_tau2((calibration, rollout))
    assert pooled_tau2((calibration, shifted)) == pytest.approx(pooled, abs=1e-12)
    assert pooled_tau2((one_group,)) > 100 * max(pooled, 1e-6)
    # Q, df and C add up over the groups
    q, df, c = calibration.q + rollout.q, calibration.df + rollout.df, calibration.c + rollout.c
    assert df == 19 + 5
    assert pooled == pytest.approx(max(0.0, (q - df) / c) * (1 + 2 / df))


def test_through_the_gate_a_real_drop_keeps_tau2_at_the_calibrations() -> None:
    """The rollout's windows enter tau^2 around their own mean: a candidate 5pp worse in every
    window does not widen the variance it is judged with."""
    rng = np.random.default_rng(4)
    plan = compile_plan(policy(Kpi(name="recall", margin=0.01, action="hold")))
    state = RolloutState()
    for window in _noisy_calibration(rng, 24, 5000, 0.0):
        state, _ = judge(plan, state, window)
    same, worse = state, state
    for t in range(1, 5):
        x_c, x_b = rng.binomial(500, 0.876), rng.binomial(9500, 0.876)
        same, _ = judge(plan, same, rate_window(t, 5.0, (x_c, 500), (x_b, 9500)))
        worse, _ = judge(plan, worse, rate_window(t, 5.0, (x_c - 25, 500), (x_b, 9500)))
    assert between_window_variance(worse.kpis["recall"]) == pytest.approx(
        between_window_variance(same.kpis["recall"]), abs=1e-12
    )


def test_late_stale_and_switched_off_calibration_is_ignored() -> None:
    plan = compile_plan(policy(Kpi(name="recall", margin=0.01)))
    noisy = _calibration(-1, (9000, 10000), (8000, 10000))
    state, _ = judge(plan, RolloutState(), rate_window(1, 5.0, (450, 500), (8550, 9500)))
    after, decision = judge(plan, state, noisy)
    assert decision.calibration and "after the rollout's first window" in decision.reasons[0]
    assert after.kpis["recall"] == state.kpis["recall"]
    assert after.look == state.look == 1

    stale, decision = judge(plan, RolloutState(), replace(noisy, stale=True))
    assert "stale" in decision.reasons[0] and "recall" not in stale.kpis

    off = compile_plan(policy(Kpi(name="recall", margin=0.01), calibration=Calibration(windows=0)))
    ignored, decision = judge(off, RolloutState(), noisy)
    assert "calibration is off" in decision.reasons[0] and "recall" not in ignored.kpis


def test_window_scope_kpis_keep_the_model_variance() -> None:
    plan = compile_plan(policy(Kpi(name="recall", margin=0.01, action="hold", scope="window")))
    state = RolloutState()
    for window in _noisy_calibration(np.random.default_rng(2), 24, 5000, 0.03):
        state, _ = judge(plan, state, window)
    assert "recall" not in state.kpis or state.kpis["recall"].calibration.windows == 0


def _line(window: int, recall: dict[str, object], **extra: object) -> str:
    return json.dumps({"window": window, "stage": 5, "kpis": {"recall": recall}, **extra})


def test_a_calibration_record_round_trips_and_is_validated() -> None:
    text = _line(
        -3,
        {
            "baseline": {"successes": 4380, "trials": 5000},
            "candidate": {"successes": 4391, "trials": 5000, "deff": 1.2},
        },
        served_from=1764590100,
        served_to=1764590400,
        calibration=True,
    )
    record = parse_record(text)
    assert record.calibration and record.window == -3
    assert json.loads(record.to_json_line()) == json.loads(text)
    assert parse_record(record.to_json_line()).to_json_line() == record.to_json_line()
    window = record.to_window({"recall": compile_plan(policy()).kpi_types["recall"]})
    assert window.calibration and window.index == -3
    # An old record has no field and stays a rollout window, written back without it.
    old = parse_record(_line(1, {"baseline": None, "candidate": None}))
    assert not old.calibration and "calibration" not in old.to_json_line()
    assert "calibration" in parse_record(text).model_json_schema()["properties"]
    for bad, message in (
        (_line(2, {}, calibration=True), "negative index"),
        (_line(-1, {}), "for calibration windows only"),
        (_line(-1, {}, calibration=True, pending={"window": 1, "matures_at": 5}), 'no "cohort"'),
        (_line(-1, {}, calibration="yes"), "calibration"),
    ):
        with pytest.raises(RecordError, match=message):
            parse_record(bad)


def test_replay_takes_calibration_records_first_then_judges_the_rollout() -> None:
    rng = np.random.default_rng(6)
    lines = []
    for i in range(-12, 0):
        a, b = rng.binomial(5000, 0.876), rng.binomial(5000, 0.876)
        lines.append(
            _line(
                i,
                {
                    "baseline": {"successes": int(a), "trials": 5000},
                    "candidate": {"successes": int(b), "trials": 5000},
                },
                calibration=True,
                rollout="r1",
            )
        )
    for t in (1, 2):
        recall = {
            "baseline": {"successes": 8322, "trials": 9500},
            "candidate": {"successes": 438, "trials": 500},
        }
        lines.append(_line(t, recall, rollout="r1"))
    replayer = Replayer(policy(Kpi(name="recall", margin=0.01)))
    out = [decision_record("r1", replayer.feed(parse_line(text))) for text in lines]
    assert all(
        o["calibration"] and o["cause"] == "calibration" and o["look"] == 0 for o in out[:12]
    )
    assert [o.get("calibration", False) for o in out[12:]] == [False, False]
    assert [o["look"] for o in out[12:]] == [1, 2]
    assert out[-1]["kpis"]["recall"]["calibration_windows"] == 12
    # Window order still holds across the two kinds: a calibration record after window 2 is
    # out of order.
    with pytest.raises(ValueError, match="increasing order"):
        replayer.feed(parse_line(_line(-1, {"baseline": None}, calibration=True, rollout="r1")))


def test_status_says_how_many_calibration_windows_the_variance_rests_on(tmp_path: Path) -> None:
    from kpigate.status import read_status, render_text

    rng = np.random.default_rng(8)
    lines = []
    for i in range(-6, 0):
        a, b = rng.binomial(5000, 0.876), rng.binomial(5000, 0.876)
        recall = {
            "baseline": {"successes": int(a), "trials": 5000},
            "candidate": {"successes": int(b), "trials": 5000},
        }
        lines.append(_line(i, recall, calibration=True, rollout="r1"))
    recall = {
        "baseline": {"successes": 8322, "trials": 9500},
        "candidate": {"successes": 438, "trials": 500},
    }
    lines.append(_line(1, recall, rollout="r1"))
    evidence = tmp_path / "evidence.jsonl"
    evidence.write_text("\n".join(lines) + "\n")
    status = read_status(policy(Kpi(name="recall", margin=0.01)), str(evidence))
    assert status.decision.window == 1 and not status.decision.calibration
    text = render_text(status)
    assert "A/A calibration windows before the rollout: recall 6" in text
    assert "look 1 of the stage" in text


@pytest.mark.parametrize(
    ("calibration", "message"),
    [
        ("{windows: -1}", "calibration.windows: Input should be greater than or equal to 0"),
        ("{windows: 1001}", "calibration.windows: Input should be less than or equal to 1000"),
        ("{windows: many}", "calibration.windows: Input should be a valid integer"),
        ("{window: 3}", "calibration.window: unknown field"),
    ],
)
def test_a_bad_calibration_setting_exits_2_naming_the_field(
    tmp_path: Path, calibration: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from kpigate.cli import main

    path = tmp_path / "policy.yaml"
    path.write_text(f"calibration: {calibration}\nkpis:\n  - name: recall\n")
    windows = tmp_path / "w.jsonl"
    windows.write_text("")
    assert main(["replay", "--policy", str(path), str(windows)]) == 2
    assert message in capsys.readouterr().err


def test_the_default_is_24_windows_and_zero_is_off() -> None:
    assert Calibration().windows == 24
    assert policy().calibration.windows == 24
    assert policy(calibration=Calibration(windows=0)).calibration.windows == 0


def test_without_a_policy_the_rollouts_first_window_may_name_more_kpis() -> None:
    """The default policy comes from the KPIs named: calibration records leave out error_rate
    (the halves have no errors), so the first rollout window adds it to the plan."""
    calibration = {
        "recall": {
            "baseline": {"successes": 4380, "trials": 5000},
            "candidate": {"successes": 4391, "trials": 5000},
        }
    }
    rollout = {
        **calibration,
        "error_rate": {
            "baseline": {"successes": 0, "trials": 9500},
            "candidate": {"successes": 1, "trials": 500},
        },
    }
    replayer = Replayer(None)
    for i in (-2, -1):
        text = json.dumps({"window": i, "stage": 5, "kpis": calibration, "calibration": True})
        replayer.feed(parse_line(text))
    decision = replayer.feed(parse_line(json.dumps({"window": 1, "stage": 5, "kpis": rollout})))
    assert set(decision.kpis) == {"recall", "error_rate"}
    assert decision.kpis["recall"].calibration_windows == 2
    assert decision.kpis["error_rate"].calibration_windows == 0


def _histogram(rng: np.random.Generator, n: int, shares: list[float]) -> Histogram:
    bounds = (10.0, 25.0, 50.0, 100.0, 250.0, math.inf)
    counts = np.cumsum(rng.multinomial(n, shares))
    return Histogram(bounds, tuple(float(c) for c in counts))


def test_quantile_auc_and_gap_kpis_are_calibrated_too() -> None:
    rng = np.random.default_rng(12)
    kpis = (
        Kpi(name="latency_p95", type="quantile", quantile=0.95, direction="lower", margin=5.0),
        Kpi(name="auc", type="auc", margin=0.01),
        Kpi(name="gap", type="gap", direction="lower", margin=0.02),
    )
    plan = compile_plan(policy(*kpis))
    shares = [0.3, 0.3, 0.25, 0.1, 0.04, 0.01]
    state = RolloutState()
    for i in range(-10, 0):

        def scores() -> ScoreHistograms:
            return ScoreHistograms(
                _histogram(rng, 300, [0.05, 0.1, 0.15, 0.2, 0.2, 0.3]),
                _histogram(rng, 3000, [0.3, 0.3, 0.2, 0.1, 0.05, 0.05]),
            )

        def segments() -> SegmentRates:
            return SegmentRates(
                Rate(float(rng.binomial(2000, 0.88)), 2000.0),
                Rate(float(rng.binomial(2000, 0.87)), 2000.0),
            )

        data = {
            "latency_p95": Observation(
                _histogram(rng, 5000, shares), _histogram(rng, 5000, shares)
            ),
            "auc": Observation(scores(), scores()),
            "gap": Observation(segments(), segments()),
        }
        state, decision = judge(plan, state, Window(i, 5.0, data, calibration=True))
        assert decision.calibration and decision.kpis == {}
    for key in ("latency_p95", "auc", "gap", "gap[reversed]"):
        kpi = state.kpis[key]
        assert kpi.calibration.windows == 10, key
        assert kpi.info == 0.0 and kpi.looks == 0
        assert math.isfinite(between_window_variance(kpi)) and between_window_variance(kpi) >= 0

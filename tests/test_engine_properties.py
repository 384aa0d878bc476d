"""Properties of the gate that must hold for any data (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kpigate.engine import Decision, Observation, Rate, RolloutState, Window, compile_plan, judge
from kpigate.policy import Direction, Kpi
from tests.engine_helpers import policy


@st.composite
def arms(draw: st.DrawFn) -> tuple[int, int, int, int]:
    n_c = draw(st.integers(1, 5000))
    n_b = draw(st.integers(1, 20000))
    return draw(st.integers(0, n_c)), n_c, draw(st.integers(0, n_b)), n_b


@st.composite
def rollouts(draw: st.DrawFn) -> list[tuple[float, tuple[int, int, int, int]]]:
    looks = draw(st.integers(1, 14))
    stages = sorted(
        draw(st.lists(st.sampled_from([5.0, 25.0, 50.0, 100.0]), min_size=looks, max_size=looks))
    )
    return [(stage, draw(arms())) for stage in stages]


def decide(kpi: Kpi, data: list[tuple[float, tuple[int, int, int, int]]]) -> Decision:
    plan = compile_plan(policy(kpi, max_holds=50))
    state = RolloutState()
    decision = None
    for index, (stage, (x_c, n_c, x_b, n_b)) in enumerate(data, start=1):
        obs = Observation(baseline=Rate(x_b, n_b), candidate=Rate(x_c, n_c))
        state, decision = judge(plan, state, Window(index, stage, {kpi.name: obs}))
    assert decision is not None
    return decision.decision


@settings(max_examples=300, deadline=None)
@given(rollouts(), st.integers(1, 5000), st.sampled_from([Direction.HIGHER, Direction.LOWER]))
def test_more_evidence_of_harm_never_turns_rollback_into_promote(data, extra, direction) -> None:  # type: ignore[no-untyped-def]
    kpi = Kpi(name="k", direction=direction, min_samples=1)
    before = decide(kpi, data)
    stage, (x_c, n_c, x_b, n_b) = data[-1]
    # Harm for a higher-is-better KPI is fewer candidate successes, for lower-is-better more.
    worse_x = max(0, x_c - extra) if direction is Direction.HIGHER else min(n_c, x_c + extra)
    after = decide(kpi, [*data[:-1], (stage, (worse_x, n_c, x_b, n_b))])
    if before is Decision.ROLLBACK:
        assert after is Decision.ROLLBACK
    if after is Decision.PROMOTE:
        assert before is Decision.PROMOTE


@settings(max_examples=200, deadline=None)
@given(rollouts(), st.integers(0, 13))
def test_a_window_without_data_never_promotes_or_rolls_back(data, gap) -> None:  # type: ignore[no-untyped-def]
    kpi = Kpi(name="k", min_samples=1)
    plan = compile_plan(policy(kpi, max_holds=50))
    state = RolloutState()
    for index, (stage, (x_c, n_c, x_b, n_b)) in enumerate(data, start=1):
        if index == min(gap + 1, len(data)):
            window = Window(index, stage, {})
        else:
            obs = Observation(baseline=Rate(x_b, n_b), candidate=Rate(x_c, n_c))
            window = Window(index, stage, {"k": obs})
        before_end = state.ended
        state, decision = judge(plan, state, window)
        if not window.kpis and before_end is None:
            assert decision.decision is Decision.HOLD

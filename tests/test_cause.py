"""A rollback's cause from a decision: harm, lack of evidence (timeout) or an operator."""

from __future__ import annotations

from kpigate.cause import HARM, HOLDING, OPERATOR, PROMOTED, TIMEOUT, cause_of
from kpigate.engine import Decision
from kpigate.policy import policy_from_dict
from kpigate.replay import Replayer, parse_line

POLICY = {
    "name": "cause-test", "max_holds": 1, "on_max_holds": "rollback",
    "stages": [{"traffic": 50, "soak": "1s", "interval": "1s"},
               {"traffic": 100, "soak": "1s", "interval": "1s"}],
    "kpis": [{"name": "recall", "margin": 0.01, "min_samples": 1000}],
}  # fmt: skip


def _window(index: int, candidate: tuple[int, int]) -> str:
    recall = {"baseline": {"successes": 900, "trials": 1000},
              "candidate": {"successes": candidate[0], "trials": candidate[1]}}  # fmt: skip
    return f'{{"window": {index}, "stage": 50, "kpis": {{"recall": {recall}}}}}'.replace("'", '"')


def test_the_engines_own_reasons_give_each_cause() -> None:
    replayer = Replayer(policy_from_dict(POLICY))
    # too few candidate labels for the burn-in: holds, then max_holds runs out
    decisions = [replayer.feed(parse_line(_window(i, (9, 10)))) for i in (1, 2)]
    assert [cause_of(d.decision.value, d.reasons, d.cause.value) for d in decisions] == [
        HOLDING,
        TIMEOUT,
    ]
    assert decisions[-1].decision is Decision.ROLLBACK
    harmed = Replayer(policy_from_dict({**POLICY, "kpis": [{"name": "recall", "margin": 0.01,
                                                           "min_samples": 10}]}))  # fmt: skip
    decision = harmed.feed(parse_line(_window(1, (500, 1000))))
    assert decision.decision is Decision.ROLLBACK
    assert cause_of(decision.decision.value, decision.reasons, decision.cause.value) == HARM


def test_operator_and_promotion_and_an_explicit_cause() -> None:
    assert cause_of("rollback", ["aborted by alice: bad feeling"]) == OPERATOR
    assert cause_of("rollback", ["an operator declined the last stage"]) == OPERATOR
    assert cause_of("promote", ["no gating KPI shows harm"]) == PROMOTED
    # the engine's cause wins over the wording of the reasons
    assert cause_of("rollback", ["no decision after 6 holds past the soak (max_holds)"],
                    cause="harm") == HARM  # fmt: skip
    assert cause_of("hold", ["whatever"], cause="timeout") == HOLDING

"""Build audit trails from the bundled recorded rollouts, as the runner would write them."""

from __future__ import annotations

import json
from pathlib import Path

from kpigate.audit import AuditTrail, action_event, decision_event, policy_hash
from kpigate.policy import load_policy
from kpigate.replay import Replayer, parse_line

EXAMPLES = Path(__file__).resolve().parent.parent / "kpigate" / "examples"
POLICY = EXAMPLES / "policy.yaml"
WINDOWS = EXAMPLES / "fraud-rollout.jsonl"
ACTOR = "kpigate-runner@test"


def replayed_trail(path: Path, rollouts: tuple[str, ...] = ("good", "bad")) -> AuditTrail:
    """Every window of the chosen recorded rollouts judged and appended, with deploy actions
    at each stage change and a promote or rollback action at the end."""
    policy = load_policy(POLICY)
    digest = policy_hash(POLICY)
    replayer = Replayer(policy)
    trail = AuditTrail(path)
    last_stage: dict[str, float] = {}
    for text in WINDOWS.read_text().splitlines():
        raw = parse_line(text)
        if raw.rollout not in rollouts:
            continue
        common = {"actor": ACTOR, "model_name": "fraud", "candidate_version": "2"}
        if last_stage.get(raw.rollout) != raw.stage:
            last_stage[raw.rollout] = raw.stage
            trail.append(
                action_event(raw.rollout, "deploy", stage=raw.stage, baseline_version="1", **common)
            )
        decision = replayer.feed(raw)
        event = decision_event(
            raw.rollout, decision, policy, digest, "fraud", "1", "2", ACTOR, window=json.loads(text)
        )
        trail.append(event)
        if decision.final:
            trail.append(
                action_event(raw.rollout, decision.decision.value, stage=raw.stage, **common)
            )
    return trail

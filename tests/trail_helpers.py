"""Build audit trails from the bundled recorded rollouts, as the runner would write them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kpigate.audit import AuditTrail, action_event, decision_event, policy_hash
from kpigate.policy import load_policy
from kpigate.replay import Replayer, parse_line

EXAMPLES = Path(__file__).resolve().parent.parent / "kpigate" / "examples"
POLICY = EXAMPLES / "policy.yaml"
WINDOWS = EXAMPLES / "fraud-rollout.jsonl"
ACTOR = "kpigate-runner@test"


def windows_of(rollout: str) -> list[dict[str, Any]]:
    """The recorded evidence windows of one rollout, as the evidence store holds them."""
    lines = WINDOWS.read_text().splitlines()
    return [w for w in map(json.loads, lines) if w["rollout"] == rollout]


def replayed_trail(
    path: Path, rollouts: tuple[str, ...] = ("good", "bad"), **trail_options: Any
) -> AuditTrail:
    """Every window of the chosen recorded rollouts judged and appended, with deploy actions
    at each stage change and a promote or rollback action at the end.

    `trail_options`: AuditTrail's key and anchor (the key defaults to KPIGATE_AUDIT_KEY)."""
    policy = load_policy(POLICY)
    digest = policy_hash(POLICY)
    replayer = Replayer(policy)
    trail = AuditTrail(path, **trail_options)
    last_stage: dict[str, float] = {}
    for text in WINDOWS.read_text().splitlines():
        raw = parse_line(text)
        if raw.rollout not in rollouts:
            continue
        common: dict[str, Any] = {"actor": ACTOR, "model_name": "fraud", "candidate_version": "2"}
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

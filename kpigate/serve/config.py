"""Router settings in one place, so the CLI, the tests and the benchmark build the same app."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

MODES = ("canary", "shadow")
ARMS = ("baseline", "candidate")
TOKEN_ENV = "KPIGATE_ADMIN_TOKEN"
TOKEN_FILE_ENV = "KPIGATE_ADMIN_TOKEN_FILE"
# The fraud demo's entity key and segments (kpigate/fraud/schema.py), the defaults; segment
# syntax in kpigate/serve/schema.py: parse_segment.
ENTITY_KEY = "card_id"
SEGMENTS = ("region", "payment_method", "amount_band=amount:50,500:low,mid,high")


@dataclass(frozen=True)
class ServeConfig:
    model_name: str = "fraud"
    tracking_uri: str | None = None
    baseline_alias: str = "champion"
    candidate_alias: str = "candidate"
    # The request field traffic is split on (not a model input), the segments KPIs are sliced
    # by, and vocabularies of model inputs fed as integer codes (they override the model's own).
    entity_key: str = ENTITY_KEY
    segments: tuple[str, ...] = SEGMENTS
    vocabularies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # SQLAlchemy URL of the prediction log and the persisted router state.
    db_url: str = "sqlite:///kpigate-predictions.db"
    # Lets several routers (or test runs) share one database without sharing tables.
    table_prefix: str = "kpigate_"
    # Weight and mode used only when the database holds no saved state yet.
    initial_weight: float = 0.0
    initial_mode: str = "canary"
    # A candidate slower than this falls back to the baseline for that request.
    candidate_timeout_s: float = 0.25
    max_batch: int = 256
    # Batches of at most this many rows of a model with a native booster are scored on the event
    # loop, no thread hop (kpigate/serve/scoring.py); 0 sends every batch to the worker thread.
    inline_rows: int = 4
    # Labels for predictions older than this are refused as "late": their windows are closed.
    label_window_s: float = 7 * 24 * 3600.0
    # The label horizon (seconds): a prediction matures this long after it was served and is
    # then counted once in the matured metrics; /feedback refuses later labels as late. None:
    # no maturity counting, and label_window_s is the late cutoff.
    label_horizon_s: float | None = None
    maturity_interval_s: float = 1.0
    # Changing the salt reshuffles which entities land in the candidate's share.
    hash_salt: str = ""
    # Group commit: one transaction takes at most this many queued rows; beyond
    # log_max_pending_rows queued rows, /predict answers 503 instead of queueing more.
    log_max_batch_rows: int = 2000
    log_max_pending_rows: int = 50_000
    # SQLite: a turn of the event loop that queued at most this many rows, with the writer
    # idle and no other prediction in flight, commits them on the loop itself
    # (kpigate/serve/predlog.py); 0: always the writer thread. 1 (a lone request): under load
    # the writer thread, committing in parallel with the loop, did as well or better.
    log_inline_rows: int = 1
    # Database timeouts: connecting, and any statement (a prediction waits this long for its
    # commit before a 503; /feedback and /readyz likewise).
    db_connect_timeout_s: float = 3.0
    db_statement_timeout_s: float = 5.0
    # Shared routing state: this replica's name in the heartbeat table (default host:pid), how
    # often it polls the state's version, when a silent replica stops counting as live, and how
    # long an admin change waits for every live replica to apply it.
    replica_id: str = ""
    state_poll_interval_s: float = 0.2
    replica_live_after_s: float = 3.0
    state_apply_timeout_s: float = 3.0
    # Request limits (413 / 400 / 408 with a message naming the limit).
    max_body_bytes: int = 1024 * 1024
    max_instances: int = 1000
    max_json_depth: int = 32
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0


def late_label_cutoff_s(config: ServeConfig) -> float:
    """Labels for predictions older than this are late: the horizon when one is set."""
    return config.label_window_s if config.label_horizon_s is None else config.label_horizon_s


def read_admin_token(environ: dict[str, str] | None = None) -> str | None:
    """The admin token from KPIGATE_ADMIN_TOKEN, else from the file KPIGATE_ADMIN_TOKEN_FILE names.

    Read on every admin request so that a rotated mounted secret takes effect without a restart.
    """
    env = os.environ if environ is None else environ
    token = env.get(TOKEN_ENV)
    if token:
        return token.strip()
    path = env.get(TOKEN_FILE_ENV)
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text or None

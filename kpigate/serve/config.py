"""Router settings in one place, so the CLI, the tests and the benchmark build the same app."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MODES = ("canary", "shadow")
ARMS = ("baseline", "candidate")
TOKEN_ENV = "KPIGATE_ADMIN_TOKEN"
TOKEN_FILE_ENV = "KPIGATE_ADMIN_TOKEN_FILE"


@dataclass(frozen=True)
class ServeConfig:
    model_name: str = "fraud"
    tracking_uri: str | None = None
    baseline_alias: str = "champion"
    candidate_alias: str = "candidate"
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
    # Labels for predictions older than this are refused as "late": their windows are closed.
    label_window_s: float = 7 * 24 * 3600.0
    # The label horizon (seconds): a prediction matures this long after it was served and is
    # then counted once in the matured metrics; /feedback refuses later labels as late. None:
    # no maturity counting, and label_window_s is the late cutoff.
    label_horizon_s: float | None = None
    maturity_interval_s: float = 1.0
    # Changing the salt reshuffles which entities land in the candidate's share.
    hash_salt: str = ""
    # Rows are written when this many are buffered or every flush_interval_s, whichever is first.
    log_batch_rows: int = 500
    log_flush_interval_s: float = 0.25
    # Buffered rows beyond this are dropped (and counted) rather than exhausting memory when the
    # database is down for a long time.
    log_max_buffer_rows: int = 1_000_000


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

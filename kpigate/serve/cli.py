"""Serve the champion and candidate models from the MLflow registry behind one router.

The router splits traffic by weight with sticky hashing of card_id, logs every prediction to SQL,
joins delayed labels on /feedback, and exposes /metrics. Weight and mode are set through the
admin API (token in KPIGATE_ADMIN_TOKEN or the file named by KPIGATE_ADMIN_TOKEN_FILE).

examples:
  kpigate serve --tracking-uri sqlite:///mlruns.db --model-name fraud
  kpigate serve --db-url postgresql+psycopg://postgres@127.0.0.1/kpigate --weight 5
"""

from __future__ import annotations

import argparse
import logging
import sys

from kpigate.serve.config import MODES, ServeConfig


def _duration(text: str) -> float:
    from kpigate.policy import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ServeConfig()
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    add("--port", type=int, default=8080, help="port (default: %(default)s)")
    add("--model-name", default=d.model_name, help="registered model (default: %(default)s)")
    add("--tracking-uri", default=None, help="MLflow tracking/registry URI (default: MLflow's)")
    add("--baseline-alias", default=d.baseline_alias, help="default: %(default)s")
    add("--candidate-alias", default=d.candidate_alias, help="default: %(default)s")
    add("--db-url", default=d.db_url, help="SQLAlchemy URL of the prediction log (%(default)s)")
    add("--table-prefix", default=d.table_prefix, help="table name prefix (%(default)s)")
    add(
        "--weight",
        type=float,
        default=d.initial_weight,
        help="candidate weight in percent when no saved state exists (default: %(default)s)",
    )
    add("--mode", choices=MODES, default=d.initial_mode, help="initial mode (default: %(default)s)")
    add(
        "--candidate-timeout-ms",
        type=float,
        default=d.candidate_timeout_s * 1000,
        help="candidate answers slower than this fall back to the baseline (%(default)s)",
    )
    add("--max-batch", type=int, default=d.max_batch, help="rows per predict call (%(default)s)")
    add(
        "--label-window-hours",
        type=float,
        default=d.label_window_s / 3600,
        help="labels for older predictions are refused as late (default: %(default)s)",
    )
    add(
        "--label-horizon",
        type=_duration,
        default=None,
        help="label horizon (e.g. 30d, 2m): predictions are counted as matured this long after "
        "they were served (kpigate_matured_predictions_total) and later labels are refused as "
        "late; match the policy's labels.horizon (default: off)",
    )
    add("--hash-salt", default=d.hash_salt, help="reshuffles which cards see the candidate")
    add("--access-log", action="store_true", help="log every request (costs throughput)")
    add("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(
        model_name=args.model_name,
        tracking_uri=args.tracking_uri,
        baseline_alias=args.baseline_alias,
        candidate_alias=args.candidate_alias,
        db_url=args.db_url,
        table_prefix=args.table_prefix,
        initial_weight=args.weight,
        initial_mode=args.mode,
        candidate_timeout_s=args.candidate_timeout_ms / 1000.0,
        max_batch=args.max_batch,
        label_window_s=args.label_window_hours * 3600.0,
        hash_salt=args.hash_salt,
        label_horizon_s=args.label_horizon,
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from kpigate.serve.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if not 0 <= args.weight <= 100:
        print(f"--weight must be a percentage in [0, 100], got {args.weight}", file=sys.stderr)
        return 2
    app = create_app(config_from_args(args))
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit as exc:
        # uvicorn exits 3 after logging a failed startup, e.g. a champion that cannot load.
        print(
            f"kpigate serve: the router did not start (exit {exc.code}); the error is logged "
            "above. Check --tracking-uri, --model-name and the champion alias.",
            file=sys.stderr,
        )
        return 1
    return 0 if server.started else 1

"""Serve the champion and candidate models from the MLflow registry behind one router.

Any registered version with an input signature is served; requests are validated against it.
The router splits traffic by weight with sticky hashing of the entity key (card_id), logs
every prediction to SQL, joins delayed labels on /feedback, and exposes /metrics. Weight and
mode are set through the admin API (token in KPIGATE_ADMIN_TOKEN or the file named by
KPIGATE_ADMIN_TOKEN_FILE).

Secrets come from the environment or files, not argv (which every local user can read):
  KPIGATE_DB_URL / KPIGATE_DB_URL_FILE            the database URL, with its password
  KPIGATE_ADMIN_TOKEN / KPIGATE_ADMIN_TOKEN_FILE  the admin API's bearer token
Several replicas share routing state and labels through one PostgreSQL database; SQLite serves
a single replica. Each answer is committed to the prediction log before it is sent.

examples:
  kpigate serve --tracking-uri sqlite:///mlruns.db --model-name fraud
  KPIGATE_DB_URL_FILE=/run/secrets/db-url kpigate serve --weight 5
  kpigate serve --model-name churn --entity-key customer_id --segment plan \
      --segment tenure_band=tenure_months:12,36:new,settled,loyal
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from kpigate.secrets import SecretError, read_secret
from kpigate.serve.config import MODES, ServeConfig

DB_URL_ENV = "KPIGATE_DB_URL"


def duration_arg(text: str) -> float:
    """argparse type for a policy-style duration (30s, 10m, 1d), as a clear usage error."""
    from kpigate.policy import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _segment(text: str) -> str:
    from kpigate.serve.schema import SchemaError, parse_segment

    try:
        parse_segment(text)
    except SchemaError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _vocabulary(text: str) -> tuple[str, tuple[str, ...]]:
    name, sep, values = text.partition("=")
    vocabulary = tuple(v.strip() for v in values.split(","))
    if not sep or not name.strip() or not all(vocabulary):
        raise argparse.ArgumentTypeError(f"{text!r}: use FIELD=VALUE,VALUE,...")
    return name.strip(), vocabulary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ServeConfig()
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    add("--port", type=int, default=8080, help="port (default: %(default)s)")
    add("--model-name", default=d.model_name, help="registered model (default: %(default)s)")
    add("--tracking-uri", default=None, help="MLflow tracking/registry URI (default: MLflow's)")
    add("--baseline-alias", default=d.baseline_alias, help="default: %(default)s")
    add("--candidate-alias", default=d.candidate_alias, help="default: %(default)s")
    add(
        "--entity-key",
        default=d.entity_key,
        help="request field traffic is split on, sticky per value; not a model input "
        "(default: %(default)s)",
    )
    add(
        "--segment",
        action="append",
        type=_segment,
        default=None,
        metavar="SPEC",
        help="a segment KPIs are sliced by, up to 3, in the prediction log's segment slots: "
        "NAME (an input field's value) or NAME=FIELD:EDGE,EDGE[:LABEL,LABEL,LABEL] (bands of a "
        f"numeric field); repeat for each (default: {' '.join(d.segments)})",
    )
    add("--no-segments", action="store_true", help="slice KPIs by no segment")
    add(
        "--vocabulary",
        action="append",
        type=_vocabulary,
        default=[],
        metavar="FIELD=V1,V2,...",
        help="the strings a model input accepts, fed to the model as their index unless the "
        "input is a string; overrides the model's metadata (kpigate_vocabularies)",
    )
    add(
        "--db-url",
        default=None,
        help=f"SQLAlchemy URL of the prediction log and routing state; prefer {DB_URL_ENV} or "
        f"{DB_URL_ENV}_FILE, since argv is visible to every local user (default: {d.db_url})",
    )
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
        "--inline-rows",
        type=int,
        default=d.inline_rows,
        help="batches up to this size of an XGBoost/LightGBM model are scored on the event "
        "loop, no thread hop; 0: always in the worker thread (default: %(default)s)",
    )
    add(
        "--log-inline-rows",
        type=int,
        default=d.log_inline_rows,
        help="SQLite log: up to this many rows queued in one turn of the event loop, with the "
        "writer thread idle and no other prediction in flight, are committed on the loop "
        "itself, no thread hop (still before the answer); 0: always the writer thread "
        "(default: %(default)s)",
    )
    add(
        "--label-window-hours",
        type=float,
        default=d.label_window_s / 3600,
        help="labels for older predictions are refused as late (default: %(default)s)",
    )
    add(
        "--label-horizon",
        type=duration_arg,
        default=None,
        help="label horizon (e.g. 30d, 2m): predictions are counted as matured this long after "
        "they were served (kpigate_matured_predictions_total) and later labels are refused as "
        "late; match the policy's labels.horizon (default: off)",
    )
    add("--hash-salt", default=d.hash_salt, help="reshuffles which cards see the candidate")
    add("--replica-id", default="", help="this replica's name in the heartbeats (host:pid)")
    add(
        "--db-connect-timeout",
        type=float,
        default=d.db_connect_timeout_s,
        help="seconds to connect to the database (default: %(default)s)",
    )
    add(
        "--db-statement-timeout",
        type=float,
        default=d.db_statement_timeout_s,
        help="seconds for any statement, incl. a prediction's commit (default: %(default)s)",
    )
    add(
        "--max-body-bytes",
        type=int,
        default=d.max_body_bytes,
        help="larger request bodies get 413 (default: %(default)s)",
    )
    add(
        "--max-instances",
        type=int,
        default=d.max_instances,
        help="instances per /predict, labels per /feedback (default: %(default)s)",
    )
    add(
        "--max-json-depth",
        type=int,
        default=d.max_json_depth,
        help="deeper JSON nesting gets 400 (default: %(default)s)",
    )
    add(
        "--header-timeout",
        type=float,
        default=d.header_timeout_s,
        help="seconds for a request's headers to arrive (default: %(default)s)",
    )
    add(
        "--body-timeout",
        type=float,
        default=d.body_timeout_s,
        help="seconds for a request's body to arrive; 408 after (default: %(default)s)",
    )
    add("--access-log", action="store_true", help="log every request (costs throughput)")
    add("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """Raises SecretError when KPIGATE_DB_URL_FILE names a file that cannot be read."""
    db_url = args.db_url or read_secret(DB_URL_ENV) or ServeConfig().db_url
    return ServeConfig(
        model_name=args.model_name,
        tracking_uri=args.tracking_uri,
        baseline_alias=args.baseline_alias,
        candidate_alias=args.candidate_alias,
        entity_key=args.entity_key,
        segments=() if args.no_segments else tuple(args.segment or ServeConfig().segments),
        vocabularies=dict(args.vocabulary),
        db_url=db_url,
        table_prefix=args.table_prefix,
        initial_weight=args.weight,
        initial_mode=args.mode,
        candidate_timeout_s=args.candidate_timeout_ms / 1000.0,
        max_batch=args.max_batch,
        inline_rows=args.inline_rows,
        log_inline_rows=args.log_inline_rows,
        label_window_s=args.label_window_hours * 3600.0,
        hash_salt=args.hash_salt,
        label_horizon_s=args.label_horizon,
        replica_id=args.replica_id,
        db_connect_timeout_s=args.db_connect_timeout,
        db_statement_timeout_s=args.db_statement_timeout,
        max_body_bytes=args.max_body_bytes,
        max_instances=args.max_instances,
        max_json_depth=args.max_json_depth,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
    )


def uvicorn_config(app: Any, config: ServeConfig, host: str, port: int, **options: Any) -> Any:
    """The uvicorn settings every router process uses (CLI, tests, benchmarks)."""
    import uvicorn

    from kpigate.serve.limits import header_timeout_protocol

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        http=header_timeout_protocol(config.header_timeout_s),
        **options,
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from kpigate.serve.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if not 0 <= args.weight <= 100:
        print(f"--weight must be a percentage in [0, 100], got {args.weight}", file=sys.stderr)
        return 2
    try:
        serve_config = config_from_args(args)
    except SecretError as exc:
        print(f"kpigate serve: {exc}", file=sys.stderr)
        return 2
    app = create_app(serve_config)
    config = uvicorn_config(
        app,
        serve_config,
        args.host,
        args.port,
        log_level=args.log_level,
        access_log=args.access_log,
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

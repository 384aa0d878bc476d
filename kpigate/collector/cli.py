"""Collect KServe or Seldon Core v1 payload logs into the prediction log, join labels, export
the router's outcome counters.

Point the payload logger at this collector (KServe: spec.predictor.logger {mode: all, url};
Seldon Core v1: the model node's graph.logger {mode: all, url}); each request and its response,
in either order, become logged predictions of the arm their event attributes match. Labels are
POSTed to /feedback as to the router, with the request id the logger carries (KServe: the
request's Ce-Id header; Seldon: its Seldon-Puid), `<id>:<i>` for instance i of a batch. GET
/metrics serves the router's metric names, so `--source router --router-url` (or Prometheus)
reads the rollout's KPIs from here.

The database URL is a secret: KPIGATE_DB_URL or KPIGATE_DB_URL_FILE (a file holding it), never
argv (every local user can read it); --db-url takes only a sqlite: URL.

examples:
  KPIGATE_DB_URL_FILE=/run/secrets/db-url kpigate collect --backend kserve \\
      --baseline-version 2 --candidate-version 3 --label-horizon 30d
  kpigate collect --backend seldon --db-url sqlite:///predictions.db \\
      --baseline-version 2 --candidate-version 3 \\
      --baseline-match endpoint=baseline --candidate-match endpoint=candidate
  kpigate collect --backend kserve --baseline-version 2 --candidate-version 3 \\
      --baseline-match source^=fraud-predictor- --candidate-match source^=fraud-v3-predictor-
"""

from __future__ import annotations

import argparse
import logging
import sys

from kpigate.collector.config import BACKENDS, ArmRule, CollectorConfig, parse_match
from kpigate.secrets import SecretError, read_secret, secret_help
from kpigate.serve.cli import DB_URL_ENV, duration_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = CollectorConfig()
    add = parser.add_argument
    add("--backend", choices=sorted(BACKENDS), required=True, help="whose payload logger sends")
    add("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    add("--port", type=int, default=8090, help="port (default: %(default)s)")
    for arm in ("baseline", "candidate"):
        add(f"--{arm}-version", required=True, help=f"the {arm}'s model version (registry)")
        add(
            f"--{arm}-match",
            default=None,
            help=f"event attributes of the {arm}'s events, ATTR=VALUE or ATTR^=PREFIX, comma "
            "separated (default: kserve endpoint=default|canary, seldon "
            "endpoint=baseline|candidate: the predictor names)",
        )
        add(
            f"--{arm}-threshold",
            type=float,
            default=0.5,
            help=f"the {arm}'s decision threshold: score >= it is a decline (%(default)s)",
        )
    add(
        "--candidate-shadow",
        action="store_true",
        help="the candidate's events are shadow copies (a Seldon predictor with shadow: true): "
        "logged as shadow rows under the served request's ids, which its labels name",
    )
    add("--db-url", default=None, help=secret_help(DB_URL_ENV, "a sqlite: URL of the log"))
    add("--table-prefix", default=d.table_prefix, help="table name prefix (%(default)s)")
    add("--score-output", default=None, help="V2 output tensor with the scores (the first)")
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
        help="label horizon (e.g. 30d): count predictions as matured this long after they were "
        "served (kpigate_matured_*); match the policy's labels.horizon (default: off)",
    )
    add("--max-parked-labels", type=int, default=d.max_parked_labels,
        help="labels held for predictions not logged yet, at most; more are dropped and "
             "counted in kpigate_collector_labels_dropped_total (%(default)s)")  # fmt: skip
    add("--pair-retention", type=duration_arg, default=d.pair_retention_s,
        help="keep a landed pair (to spot a redelivered half) or a lone half this long, then "
             "prune it (seconds or e.g. 1h; default %(default)gs)")  # fmt: skip
    add("--max-body-bytes", type=int, default=d.max_body_bytes, help="413 above (%(default)s)")
    add("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def config_from_args(args: argparse.Namespace) -> CollectorConfig:
    """Raises ValueError (a bad match or URL) or SecretError."""
    if args.db_url and not args.db_url.startswith("sqlite"):
        raise ValueError(
            f"--db-url takes only a sqlite: URL; pass others in {DB_URL_ENV} or "
            f"{DB_URL_ENV}_FILE (argv is visible to every local user)"
        )
    if args.max_parked_labels < 0 or args.pair_retention <= 0:
        raise ValueError("--max-parked-labels must be >= 0 and --pair-retention > 0")
    backend = BACKENDS[args.backend]
    arms = []
    for arm in ("baseline", "candidate"):
        match = getattr(args, f"{arm}_match") or backend.DEFAULT_MATCH[arm]
        equals, prefixes = parse_match(match, backend.ARM_ATTRIBUTES)
        threshold = getattr(args, f"{arm}_threshold")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"--{arm}-threshold must be in [0, 1], got {threshold}")
        version = getattr(args, f"{arm}_version")
        shadow = arm == "candidate" and args.candidate_shadow
        arms.append(ArmRule(arm, version, equals, prefixes, threshold, shadow))
    db_url = args.db_url or read_secret(DB_URL_ENV) or CollectorConfig().db_url
    return CollectorConfig(
        backend=args.backend,
        arms=tuple(arms),
        db_url=db_url,
        table_prefix=args.table_prefix,
        score_output=args.score_output,
        label_window_s=args.label_window_hours * 3600.0,
        label_horizon_s=args.label_horizon,
        max_body_bytes=args.max_body_bytes,
        max_parked_labels=args.max_parked_labels,
        pair_retention_s=args.pair_retention,
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from kpigate.collector.app import create_app
    from kpigate.serve.limits import header_timeout_protocol

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except (ValueError, SecretError) as exc:
        print(f"kpigate collect: {exc}", file=sys.stderr)
        return 2
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host=args.host,
            port=args.port,
            lifespan="on",
            http=header_timeout_protocol(config.header_timeout_s),
            log_level=args.log_level,
        )
    )
    server.run()
    return 0 if server.started else 1

"""`kpigate relay`: receive MLflow registry webhooks and start rollouts.

The webhook secret comes from KPIGATE_WEBHOOK_SECRET or the file named by
KPIGATE_WEBHOOK_SECRET_FILE (re-read per request, so a rotated mounted secret applies at once).
--register-with TRACKING_URI also creates the webhook in MLflow, pointing at --public-url.

Triggers:
  local        run `kpigate rollout` here with the --rollout-arg options (the embedded default)
  argo         submit the progressive-delivery WorkflowTemplate (ARGO_SERVER, ARGO_TOKEN,
               ARGO_NAMESPACE or the --argo-* options)
  argo-events  forward to an Argo Events webhook EventSource (--events-url), with the bearer
               token of its authSecret from KPIGATE_EVENTS_TOKEN or KPIGATE_EVENTS_TOKEN_FILE

MLflow refuses http and private-IP webhook targets unless its server runs with
MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https and MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kpigate.relay.app import WEBHOOK_PATH, RelaySettings, create_relay
from kpigate.relay.triggers.base import Trigger
from kpigate.secrets import SecretError, secret_help

SECRET_ENV = "KPIGATE_WEBHOOK_SECRET"
SECRET_FILE_ENV = "KPIGATE_WEBHOOK_SECRET_FILE"
EVENTS = ("model_version_alias.created", "model_version_tag.set")
TOKEN_FILE_ENV = "KPIGATE_EVENTS_TOKEN_FILE"


def secret_reader() -> Callable[[], str] | None:
    if os.environ.get(SECRET_ENV):
        value = os.environ[SECRET_ENV]
        return lambda: value
    path = os.environ.get(SECRET_FILE_ENV)
    if path:
        return lambda: Path(path).read_text().strip()
    return None


def register_webhook(tracking_uri: str, url: str, secret: str, name: str = "kpigate-relay") -> str:
    """Create (or replace) the MLflow webhook that calls the relay; returns its id."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    for hook in client.list_webhooks():
        if hook.name == name:
            client.delete_webhook(hook.webhook_id)
    events: list[Any] = list(EVENTS)
    hook = client.create_webhook(name=name, url=url, events=events, secret=secret)
    return str(hook.webhook_id)


def make_trigger(args: argparse.Namespace) -> Trigger:
    if args.trigger == "argo":
        from kpigate.relay.triggers.argo import ArgoTrigger
        from kpigate.secrets import read_secret

        host = args.argo_server or os.environ.get("ARGO_SERVER", "")
        return ArgoTrigger(
            host,
            read_secret("KPIGATE_ARGO_TOKEN", args.argo_token) or os.environ.get("ARGO_TOKEN"),
            args.argo_namespace or os.environ.get("ARGO_NAMESPACE", "argo"),
        )
    if args.trigger == "argo-events":
        from kpigate.relay.triggers.events import TOKEN_ENV, ArgoEventsTrigger

        token = os.environ.get(TOKEN_ENV, "")
        if not token and os.environ.get(TOKEN_FILE_ENV):
            token = Path(os.environ[TOKEN_FILE_ENV]).read_text().strip()
        return ArgoEventsTrigger(args.events_url, token)
    from kpigate.relay.triggers.local import LocalTrigger

    return LocalTrigger(shlex.split(args.rollout_args), args.state_dir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--trigger", choices=["local", "argo", "argo-events"], default="local")
    parser.add_argument("--alias", default="candidate", help="the alias that starts a rollout")
    parser.add_argument("--models", default="", help="comma-separated models to accept (all)")
    parser.add_argument("--tolerance", type=float, default=300.0, help="timestamp tolerance, s")
    parser.add_argument("--rollout-args", default="", help="local: options for kpigate rollout")
    parser.add_argument("--state-dir", default=".kpigate", help="local: logs and locks")
    parser.add_argument("--argo-server", default="")
    parser.add_argument(
        "--argo-token", default="", help=secret_help("KPIGATE_ARGO_TOKEN", "argo: bearer token")
    )
    parser.add_argument("--argo-namespace", default="")
    parser.add_argument("--events-url", default="", help="argo-events: the EventSource URL")
    parser.add_argument("--register-with", default="", help="MLflow tracking URI to register in")
    parser.add_argument("--public-url", default="", help="the relay's URL as MLflow sees it")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    read_secret = secret_reader()
    if read_secret is None:
        print(
            f"kpigate relay: no webhook secret: set {SECRET_ENV} or {SECRET_FILE_ENV}",
            file=sys.stderr,
        )
        return 2
    if args.trigger == "argo-events" and not args.events_url:
        print("kpigate relay: --trigger argo-events needs --events-url", file=sys.stderr)
        return 2
    settings = RelaySettings(
        secret=read_secret(),
        trigger_alias=args.alias,
        models=frozenset(m for m in args.models.split(",") if m),
        tolerance_s=args.tolerance,
    )
    try:
        trigger = make_trigger(args)
    except SecretError as exc:
        print(f"kpigate relay: {exc}", file=sys.stderr)
        return 2
    app = create_relay(settings, trigger, secret=read_secret)
    if args.register_with:
        url = args.public_url or f"http://{args.host}:{args.port}{WEBHOOK_PATH}"
        hook = register_webhook(args.register_with, url, read_secret())
        print(f"registered MLflow webhook {hook} -> {url}")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0

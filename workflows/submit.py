"""Start a rollout: submit the progressive-delivery WorkflowTemplate to an Argo server.

Creates a Workflow that references the template (workflowTemplateRef) with the model name and
version as arguments, through Hera's WorkflowsService. Host and namespace come from the flags
or from ARGO_SERVER and ARGO_NAMESPACE (as for the argo CLI). The bearer token comes from
KPIGATE_ARGO_TOKEN, or the file named by KPIGATE_ARGO_TOKEN_FILE (a mounted secret), or
ARGO_TOKEN; --token still works but shows the token to every user of the machine in `ps`.

examples:
  kpigate submit --model-version 7
  kpigate submit --model-name fraud --model-version 7 -p backend=istio -p manual-approval=true
  KPIGATE_ARGO_TOKEN_FILE=/var/run/secrets/argo/token kpigate submit --model-version 7
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

from kpigate.secrets import SecretError, read_secret, secret_help
from kpigate.workflows.progressive_delivery import ARGUMENTS, TEMPLATE_NAME

TOKEN_ENV = "KPIGATE_ARGO_TOKEN"  # or KPIGATE_ARGO_TOKEN_FILE

_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class SubmitError(RuntimeError):
    """The rollout could not be submitted; the message says what to fix."""


def workflow_for(
    model_name: str,
    model_version: str,
    parameters: Mapping[str, str] | None = None,
    template: str = TEMPLATE_NAME,
) -> Any:
    """A Workflow (Hera model) that runs `template` with these arguments."""
    from hera.workflows import models as m

    values = {"model-name": model_name, "model-version": model_version, **(parameters or {})}
    unknown = sorted(set(values) - set(ARGUMENTS))
    if template == TEMPLATE_NAME and unknown:
        raise SubmitError(
            f"unknown workflow argument(s) {', '.join(unknown)}; known: {', '.join(ARGUMENTS)}"
        )
    labels = {"app.kubernetes.io/part-of": "kpigate"}
    for key, value in (("kpigate.io/model", model_name), ("kpigate.io/version", model_version)):
        if _LABEL_VALUE.match(value):  # labels are for filtering; odd names just go without
            labels[key] = value
    return m.Workflow(
        metadata=m.ObjectMeta(generate_name=f"{template}-", labels=labels),
        spec=m.WorkflowSpec(
            workflow_template_ref=m.WorkflowTemplateRef(name=template),
            arguments=m.Arguments(
                parameters=[m.Parameter(name=k, value=v) for k, v in values.items()]
            ),
        ),
    )


def submit(
    workflow: Any, host: str, token: str | None, namespace: str, verify_ssl: bool = True
) -> tuple[str, str]:
    """Create the workflow; returns its name and its link in the Argo UI."""
    from hera.exceptions import HeraException
    from hera.workflows import WorkflowsService
    from hera.workflows import models as m

    if not host.startswith(("http://", "https://")):
        raise SubmitError(
            f"Argo server {host!r} needs a scheme: pass --host https://... or set ARGO_SERVER"
        )
    service = WorkflowsService(host=host, token=token, namespace=namespace, verify_ssl=verify_ssl)
    try:
        created = service.create_workflow(m.WorkflowCreateRequest(workflow=workflow))
    except HeraException as exc:
        raise SubmitError(f"the Argo server at {host} refused the workflow: {exc}") from None
    except OSError as exc:  # requests' ConnectionError is an OSError
        raise SubmitError(f"cannot reach the Argo server at {host}: {exc}") from None
    name = str(created.metadata.name)
    return name, service.get_workflow_link(name)


def _parameter(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--model-name", default=ARGUMENTS["model-name"][0], help="default: %(default)s")
    add("--model-version", required=True, help="the MLflow model version to roll out")
    add(
        "-p",
        "--parameter",
        action="append",
        type=_parameter,
        default=[],
        metavar="NAME=VALUE",
        help="any other workflow argument, e.g. backend=istio (repeatable)",
    )
    add("--template", default=TEMPLATE_NAME, help="WorkflowTemplate name (%(default)s)")
    add("--host", default=os.environ.get("ARGO_SERVER"), help="Argo server URL ($ARGO_SERVER)")
    add("--token", default=None, help=secret_help(TOKEN_ENV, "bearer token") + "; or $ARGO_TOKEN")
    add(
        "--namespace",
        default=os.environ.get("ARGO_NAMESPACE", "argo"),
        help="namespace ($ARGO_NAMESPACE, else argo)",
    )
    add("--insecure", action="store_true", help="do not verify the server's TLS certificate")


def run(args: argparse.Namespace) -> int:
    if not args.host:
        print("no Argo server: pass --host or set ARGO_SERVER", file=sys.stderr)
        return 2
    try:
        token = read_secret(TOKEN_ENV, args.token) or os.environ.get("ARGO_TOKEN") or None
    except SecretError as exc:
        print(f"kpigate submit: {exc}", file=sys.stderr)
        return 2
    try:
        workflow = workflow_for(
            args.model_name, args.model_version, dict(args.parameter), args.template
        )
        name, link = submit(workflow, args.host, token, args.namespace, not args.insecure)
    except SubmitError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"submitted {args.namespace}/{name}: {link}")
    return 0

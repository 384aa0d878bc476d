"""The `kpigate` command: one subcommand per module, each exposing add_arguments() and run()."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# name -> (module[:attribute], one-line help). Each module (or attribute) defines
#   add_arguments(parser: argparse.ArgumentParser) -> None
#   run(args: argparse.Namespace) -> int
# and the module's docstring becomes the subcommand's description. Modules import lazily so
# `kpigate replay` does not pay for MLflow or the router.
COMMANDS: dict[str, tuple[str, str]] = {
    "replay": ("kpigate.replay", "replay KPI windows (JSON Lines) through the decision gate"),
    "windows": (
        "kpigate.windows",
        "rebuild a rollout's windows from the prediction log (backtest)",
    ),
    "demo": ("kpigate.demo", "run the fraud case study end to end on the embedded default"),
    "serve": ("kpigate.serve.cli", "serve champion and candidate behind the canary/shadow router"),
    "collect": (
        "kpigate.collector.cli",
        "collect KServe / Seldon payload logs and labels into the prediction log",
    ),
    "traffic": ("kpigate.traffic", "replay generated transactions and delayed labels at a router"),
    "render-workflow": ("kpigate.workflows.render", "render the Argo workflow from a policy"),
    "submit": ("kpigate.workflows.submit", "start a rollout on Argo Workflows"),
    "rollout": ("kpigate.runner", "run a rollout locally: the workflow's steps, in order"),
    "relay": ("kpigate.relay.cli", "receive MLflow registry webhooks and start rollouts"),
    "render-dashboard": ("kpigate.observability.dashboard", "render the Grafana dashboard JSON"),
    "audit": ("kpigate.audit_cli", "verify or show a rollout's hash-chained audit trail"),
    "report": ("kpigate.report", "render a rollout's audit trail as a self-contained HTML report"),
    "status": ("kpigate.status", "each KPI's estimate, interval, verdict and what it waits for"),
    "pause": ("kpigate.control:pause", "pause a local rollout at its next look"),
    "resume": ("kpigate.control:resume", "resume a paused local rollout"),
    "abort": ("kpigate.control:abort", "roll a local rollout back now"),
    "promote": ("kpigate.control:promote", "pass a local rollout's stage (--full: to champion)"),
    "plan": ("kpigate.plan_cli", "forecast how long each stage takes to decide, before a rollout"),
}

EPILOG = """\
examples:
  kpigate replay windows.jsonl                 judge recorded windows with the default policy
  kpigate replay --policy policy.yaml w.jsonl  judge them with your policy
  kpigate demo                                 the case study on local components
  kpigate serve --model-name fraud             the router (champion vs candidate)
  kpigate collect --backend kserve --baseline-version 2 --candidate-version 3
                                               KServe/Seldon payload logs -> label KPIs
  kpigate rollout --policy p.yaml --model-name fraud   a rollout on this machine
  kpigate render-workflow                      the Argo WorkflowTemplate into manifests/

Run `kpigate COMMAND --help` for a command's options.
"""


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """All subcommands are listed; only the selected one's module is imported."""
    parser = argparse.ArgumentParser(
        prog="kpigate",
        description="Progressive delivery for ML models, gated by quality KPIs: a new model "
        "version moves through 5 -> 25 -> 50 -> 100% of traffic and is promoted, held or "
        "rolled back on anytime-valid evidence.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if name != selected:
            sub.add_parser(name, help=help_text)
            continue
        # "package.module:attribute" names one object of a module that serves several commands
        path, _, attribute = module_name.partition(":")
        module = importlib.import_module(path)
        if attribute:
            module = getattr(module, attribute)
        sub_parser = sub.add_parser(
            name,
            help=help_text,
            description=(module.__doc__ or help_text).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected if selected in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None or not hasattr(args, "_module"):
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `kpigate audit show ... | head`: the reader left; that is not an error. Point stdout
        # at /dev/null so the interpreter's final flush does not raise again (Python's docs,
        # "Note on SIGPIPE" in the signal module).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

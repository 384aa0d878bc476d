"""Backtest: the windows the gate would have seen, rebuilt from the router's prediction log.

Given the stage timeline of a past (or hypothetical) rollout, the policy's evaluation interval
cuts each stage into windows; each window gets the immediate KPIs of its own traffic and, with
a policy `labels` section, the label KPIs of the oldest cohort matured by the window's end,
exactly as soak-and-collect builds them (kpigate/sources/records.py). Only what was known at
--as-of is used: windows that ended by then, labels that had arrived by then. Output: JSON
Lines in the `kpigate replay` format, so

  kpigate windows ... | kpigate replay --policy P -

gives the decisions. The table read is documented in docs/prediction-log.md. The database URL
comes from KPIGATE_DB_URL or the file named by KPIGATE_DB_URL_FILE (a password never goes in
argv); --db-url takes a local SQLite URL only.

examples:
  kpigate windows --policy policy.yaml --model-name fraud --baseline-version 1 \\
      --candidate-version 2 --stages 5@2026-11-30T10:00,25@2026-11-30T11:00 \\
      --to 2026-11-30T12:00 --as-of 2026-11-30T12:30 --db-url sqlite:///kpigate-predictions.db
  kpigate windows ... --evidence .kpigate/fraud-2.jsonl    the recorded windows' intervals
Exit status: 0 on success, 2 on bad input (policy, timeline, times, URL), 1 when the database
cannot be read.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from kpigate.evidence_record import RecordError, WindowRecord, parse_record
from kpigate.policy import Policy, PolicyError, load_policy
from kpigate.sources.base import Collected, SourceError
from kpigate.sources.cohorts import ServedWindow, served_windows
from kpigate.sources.predlog import DB_URL_ENV, PredlogReader, PredlogSource, db_url_from_env
from kpigate.sources.records import build_record, calibration_records


class BadInput(ValueError):
    """Input the backtest cannot use; the message says which and why."""


def parse_time(text: str, what: str) -> float:
    """Unix seconds from ISO 8601 (UTC unless it names a zone) or a number of seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadInput(
            f"{what}: {text!r} is not a time; write ISO 8601 (2026-11-30T10:00, UTC unless a "
            "zone is given) or Unix seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_stages(text: str) -> list[tuple[float, float]]:
    """`5@2026-11-30T10:00,25@...` -> [(traffic, start)], checked to increase in both."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        traffic, at, start = part.partition("@")
        if not at:
            raise BadInput(f"--stages: {part!r} should be TRAFFIC@TIME, e.g. 5@2026-11-30T10:00")
        try:
            percent = float(traffic)
        except ValueError:
            raise BadInput(f"--stages: {traffic!r} is not a traffic percentage") from None
        out.append((percent, parse_time(start, f"--stages {part}")))
    if not out:
        raise BadInput("--stages is empty")
    for (t0, s0), (t1, s1) in itertools.pairwise(out):
        if t1 <= t0 or s1 <= s0:
            raise BadInput("--stages must increase in both traffic and start time")
    return out


def timeline_windows(
    policy: Policy, stages: Sequence[tuple[float, float]], end: float
) -> list[ServedWindow]:
    """Each stage cut into windows of its interval; a stage's last window ends with the stage."""
    windows: list[ServedWindow] = []
    for i, (traffic, start) in enumerate(stages):
        spec = policy.stage_for(traffic)
        if spec is None:
            known = ", ".join(f"{s.traffic:g}" for s in policy.stages)
            raise BadInput(f"--stages: {traffic:g}% is not a stage of the policy ({known})")
        stop = stages[i + 1][1] if i + 1 < len(stages) else end
        at = start
        while at < stop:
            to = min(at + spec.interval, stop)
            windows.append(ServedWindow(len(windows) + 1, traffic, at, to))
            at = to
    return windows


def evidence_windows(path: str) -> tuple[list[ServedWindow], str]:
    """The served intervals of recorded windows, and their rollout id."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise BadInput(f"--evidence {path}: {exc.strerror}") from None
    try:
        records = [parse_record(line) for line in lines if line.strip()]
    except RecordError as exc:
        raise BadInput(f"--evidence {path}: {exc}") from None
    windows = served_windows(records)
    if not windows:
        raise BadInput(f"--evidence {path}: no window records with served_from and served_to")
    rollout = next((r.rollout_id for r in records if r.rollout), "")
    return windows, rollout


def backtest(
    policy: Policy,
    source: PredlogSource,
    windows: Sequence[ServedWindow],
    rollout: str,
    as_of: float,
) -> Iterator[WindowRecord]:
    """The records of every window that had ended by `as_of`, in order; before the rollout's
    first window (index 1), its A/A calibration records, as soak-and-collect writes them."""
    history: list[WindowRecord] = []
    if windows and windows[0].index == 1 and windows[0].served_to <= as_of:
        yield from calibration_records(policy, source, rollout, windows[0].served_from)
    for window in windows:
        if window.served_to > as_of:
            break
        base = {
            "rollout": rollout,
            "window": window.index,
            "stage": window.stage,
            "time": datetime.fromtimestamp(window.served_to, UTC).isoformat(timespec="seconds"),
            "served_from": window.served_from,
            "served_to": window.served_to,
        }
        counts = source.window(window.served_from, window.served_to)
        record = build_record(policy, source, Collected(counts), history, base)
        history.append(record)
        yield record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--policy", required=True, help="rollout policy YAML (its stages, intervals and labels)")
    add("--model-name", required=True, help="registered model; names the rollout")
    add("--baseline-version", required=True, help="the baseline's model_version in the log")
    add("--candidate-version", required=True, help="the candidate's model_version in the log")
    add("--stages", help="stage timeline: TRAFFIC@START,... (e.g. 5@2026-11-30T10:00,25@...)")
    add("--to", help="end of the last stage (default: --as-of)")
    add("--evidence", help="take the windows' intervals from recorded evidence instead")
    add("--as-of", help="use only what was known then (default: now)")
    add("--db-url", help=f"a local SQLite URL; other databases through {DB_URL_ENV}")
    add("--table-prefix", default="kpigate_", help="the router's table prefix (%(default)s)")
    add("--rollout", help="rollout id in the output (default: MODEL-CANDIDATE_VERSION)")
    add("--output", "-o", help="write the windows here instead of stdout")


def _database_url(args: argparse.Namespace) -> str:
    if args.db_url:
        if not str(args.db_url).startswith("sqlite"):
            raise BadInput(
                f"--db-url takes a local SQLite URL (sqlite:///file.db); give other databases "
                f"in {DB_URL_ENV} or the file named by {DB_URL_ENV}_FILE, so no password is in argv"
            )
        return str(args.db_url)
    try:
        url = db_url_from_env()
    except SourceError as exc:
        raise BadInput(str(exc)) from None
    if not url:
        raise BadInput(f"no database: set {DB_URL_ENV} (or {DB_URL_ENV}_FILE), or --db-url")
    return url


def _windows(
    args: argparse.Namespace, policy: Policy, as_of: float
) -> tuple[list[ServedWindow], str]:
    rollout = args.rollout or f"{args.model_name}-{args.candidate_version}"
    if args.evidence:
        if args.stages:
            raise BadInput("give --stages or --evidence, not both")
        windows, recorded = evidence_windows(args.evidence)
        return windows, args.rollout or recorded or rollout
    if not args.stages:
        raise BadInput("give the stage timeline with --stages, or --evidence")
    end = parse_time(args.to, "--to") if args.to else as_of
    return timeline_windows(policy, parse_stages(args.stages), end), rollout


def run(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        print(f"kpigate windows: bad policy:\n{exc}", file=sys.stderr)
        return 2
    try:
        as_of = parse_time(args.as_of, "--as-of") if args.as_of else datetime.now(UTC).timestamp()
        windows, rollout = _windows(args, policy, as_of)
        url = _database_url(args)
    except BadInput as exc:
        print(f"kpigate windows: {exc}", file=sys.stderr)
        return 2
    reader = PredlogReader.from_url(
        url, args.table_prefix, baseline_version=args.baseline_version,
        candidate_version=args.candidate_version,
    )  # fmt: skip
    source = PredlogSource(reader, policy.labels)
    sink: TextIO = open(args.output, "w") if args.output else sys.stdout  # noqa: SIM115
    count = 0
    try:
        for record in backtest(policy, source, windows, rollout, as_of):
            sink.write(json.dumps(record.as_json()) + "\n")
            count += 1
    except SourceError as exc:
        print(f"kpigate windows: {exc}", file=sys.stderr)
        return 1
    finally:
        if sink is not sys.stdout:
            sink.close()
        reader.engine.dispose()
    if count == 0:
        print("kpigate windows: no window had ended by --as-of", file=sys.stderr)
    return 0

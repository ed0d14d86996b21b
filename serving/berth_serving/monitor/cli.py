"""`berth monitor baseline` and `berth monitor run` (the MonitoringSchedule CronJob's pod).

Exit status 0 when the job ran (violations or not), 1 for data that cannot be read or checked,
2 for options that cannot work (as click's usage errors), 3 when object storage failed. The
run's summary goes to the Kubernetes termination message as one line of JSON:
{"time", "recordsRead", "violations", "violatedFeatures", "reportUri"}.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from typing import NoReturn

import click

EXIT_DATA = 1
EXIT_USAGE = 2
EXIT_STORAGE = 3

_engine_options = [
    click.option(
        "--memory-limit",
        default="512MB",
        help="DuckDB's memory_limit (it spills to the scratch directory beyond it); leave the pod room for Python.",
    ),
    click.option(
        "--threads", type=click.IntRange(min=0), default=0, help="DuckDB threads; 0 = the container's CPUs."
    ),
]


def _with_engine(function: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(_engine_options):
        function = option(function)
    return function


@click.group("monitor")
def monitor() -> None:
    """Baseline statistics and drift checks over captured data."""


def _fail(message: str, code: int) -> NoReturn:
    from berth_serving.termination import one_line, write_termination_message

    line = one_line(message)
    write_termination_message(line)
    click.echo(f"berth monitor: {line}", err=True)
    sys.exit(code)


def _errors(error: Exception) -> NoReturn:
    from berth_serving.monitor.constraints import ConstraintsError
    from berth_serving.monitor.dataset import DatasetError
    from berth_serving.storage import StorageError

    if isinstance(error, StorageError):
        _fail(str(error), EXIT_STORAGE)
    if isinstance(error, DatasetError | ConstraintsError):
        _fail(str(error), EXIT_DATA)
    raise error


@monitor.command("baseline", context_settings={"show_default": True})
@click.option(
    "--dataset",
    "dataset_uri",
    required=True,
    help="CSV or JSON Lines: a file or a prefix (s3://, file://, a path).",
)
@click.option(
    "--output", "output_uri", required=True, help="Prefix for statistics.json and constraints.json."
)
@click.option(
    "--header/--no-header", default=None, help="Whether CSV files start with a header [default: detect]."
)
@_with_engine
def baseline_command(
    dataset_uri: str, output_uri: str, header: bool | None, memory_limit: str, threads: int
) -> None:
    """Write the dataset's statistics.json and suggested constraints.json."""
    from berth_serving.monitor.jobs import Engine, baseline
    from berth_serving.storage import parse_uri

    try:
        stats = baseline(dataset_uri, output_uri, header, Engine(memory_limit, threads))
    except Exception as error:
        _errors(error)
    click.echo(
        f"berth monitor baseline: {stats['dataset']['item_count']} rows, {stats['dataset']['feature_count']} "
        f"features -> {parse_uri(output_uri).child('constraints.json').uri}",
        err=True,
    )


def _time(value: str | None, option: str) -> datetime | None:
    from berth_serving.monitor.captures import parse_time

    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint=option) from None


@monitor.command("run", context_settings={"show_default": True})
@click.option("--captures", "captures_uri", required=True, help="DEST/ENDPOINT/ or DEST/ENDPOINT/VARIANT/.")
@click.option("--statistics", "statistics_uri", required=True, help="The baseline's statistics.json.")
@click.option("--constraints", "constraints_uri", required=True, help="The baseline's constraints.json.")
@click.option("--output", "output_uri", required=True, help="Prefix: OUTPUT/<window end>/ gets the report.")
@click.option("--since", default=None, metavar="TIME", help="Window start (ISO 8601), inclusive.")
@click.option(
    "--until", default=None, metavar="TIME", help="Window end (ISO 8601), exclusive [default: now]."
)
@click.option(
    "--window-hours",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="The window is the N hours before --until (or now) [default: 1 without --since].",
)
@_with_engine
def run_command(
    captures_uri: str,
    statistics_uri: str,
    constraints_uri: str,
    output_uri: str,
    since: str | None,
    until: str | None,
    window_hours: float | None,
    memory_limit: str,
    threads: int,
) -> None:
    """Check a window of captured data against the baseline: statistics.json and constraint_violations.json."""
    from berth_serving.monitor.jobs import Engine, run
    from berth_serving.termination import write_termination_message

    end = _time(until, "--until") or datetime.now(UTC).replace(microsecond=0)
    start = _time(since, "--since")
    if start is not None and window_hours is not None:
        raise click.UsageError("give --since or --window-hours, not both")
    if start is None:
        start = end - timedelta(hours=window_hours or 1)
    if start >= end:
        raise click.UsageError("--since must be before --until")
    try:
        summary = run(
            captures_uri,
            statistics_uri,
            constraints_uri,
            output_uri,
            start,
            end,
            Engine(memory_limit, threads),
        )
    except Exception as error:
        _errors(error)
    write_termination_message(json.dumps(summary, separators=(",", ":")))
    click.echo(
        f"berth monitor run: {summary['recordsRead']} records, {summary['violations']} violations -> "
        f"{summary['reportUri']}",
        err=True,
    )

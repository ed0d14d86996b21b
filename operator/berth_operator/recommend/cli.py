"""`berth recommend`: load-test a model on candidate instance types and write the EndpointConfig to use.

Each instance type is emulated on this machine (the runtime pinned to the type's cores, its memory
limit checked against the peak RSS) and the report says so; with `--cluster` each runs as a
Deployment with the type's real resources in a namespace of the current cluster, driven by load
Jobs (cluster_run.py), and everything created is deleted at the end.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import click
import yaml

from ..settings import SettingsError, load_settings
from .emulate import MeasureError, measure
from .report import html_report, manifests, table
from .search import (
    Candidate,
    Load,
    Outcome,
    PatternError,
    Step,
    TrafficPattern,
    candidates,
    next_phase,
    parse_traffic_pattern,
    recommend,
    stepped,
)


def _pattern(job_type: str, path: str | None) -> TrafficPattern | None:
    if job_type == "Default":
        if path is not None:
            raise click.UsageError("--traffic-pattern is for --job-type Advanced")
        return None
    if path is None:
        raise click.UsageError("--job-type Advanced needs --traffic-pattern FILE")
    try:
        return parse_traffic_pattern(yaml.safe_load(Path(path).read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise click.UsageError(f"--traffic-pattern {path}: {exc}") from exc
    except PatternError as exc:
        raise click.UsageError(f"--traffic-pattern {path}: {exc}") from exc


def _payload(value: str | None) -> tuple[bytes, str]:
    if value is None:
        raise click.UsageError("--payload is required: a request body the model accepts, @FILE or JSON")
    data = Path(value[1:]).read_bytes() if value.startswith("@") else value.encode()
    if value.startswith("@") and value.endswith(".csv"):
        return data, "text/csv"
    if value.startswith("@") and value.endswith(".npy"):
        return data, "application/x-npy"
    return data, "application/json"


@click.command("recommend")
@click.option("--model", "model_uri", required=True, help="The model to measure (a path or file:// URI).")
@click.option("--p99-ms", type=click.FloatRange(min=0, min_open=True), required=True, help="Latency target.")
@click.option(
    "--rps", type=click.FloatRange(min=0, min_open=True), required=True, help="Requests/s to serve."
)
@click.option(
    "--instance-types",
    default="",
    help="Comma-separated candidates from the catalog (default: every CPU type).",
)
@click.option("--payload", help="A request body: @FILE (.json, .csv or .npy) or inline JSON.")
@click.option("--batch-sizes", default="1,32", show_default=True, help="maxBatchSize values to try.")
@click.option(
    "--settings", "settings_path", type=click.Path(dir_okay=False), help="Operator settings (the catalog)."
)
@click.option("--step-seconds", type=click.FloatRange(min=0.5), default=5.0, show_default=True)
@click.option(
    "--job-type",
    type=click.Choice(["Default", "Advanced"]),
    default="Default",
    show_default=True,
    help="Default: a stepped load per candidate. Advanced: your --traffic-pattern.",
)
@click.option(
    "--traffic-pattern",
    type=click.Path(dir_okay=False, exists=True),
    help="Advanced: YAML of phases [{initialNumberOfUsers, spawnRate, durationInSeconds}] and "
    "stoppingConditions {maxInvocations, modelLatencyThresholds: [{percentile, valueInMilliseconds}]}.",
)
@click.option("--max-minutes", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
@click.option("--cluster", is_flag=True, help="Measure on the current cluster (kubeconfig) instead of here.")
@click.option("--namespace", "-n", default="default", show_default=True, help="--cluster: where to run.")
@click.option(
    "--loadgen-image",
    default="ghcr.io/berth-dev/berth-operator:0.1.0",
    show_default=True,
    help="--cluster: image of the load Jobs (has berth with the recommend extra).",
)
@click.option("--ready-timeout", type=click.FloatRange(min=1), default=600.0, show_default=True)
@click.option(
    "--name", default="recommended", show_default=True, help="Name of the Model and EndpointConfig written."
)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False), help="Write the manifests here (default: stdout)."
)
@click.option(
    "--html", "html_path", type=click.Path(dir_okay=False), help="Write the curves as an HTML page."
)
def recommend_command(
    model_uri: str,
    p99_ms: float,
    rps: float,
    instance_types: str,
    payload: str | None,
    batch_sizes: str,
    settings_path: str | None,
    step_seconds: float,
    job_type: str,
    traffic_pattern: str | None,
    max_minutes: float,
    cluster: bool,
    namespace: str,
    loadgen_image: str,
    ready_timeout: float,
    name: str,
    output: str | None,
    html_path: str | None,
) -> None:
    """Measure MODEL on each candidate and write the Model and EndpointConfig that meet the targets."""
    try:
        settings = load_settings(settings_path)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    catalog = settings.instance_types
    names = [n.strip() for n in instance_types.split(",") if n.strip()] or [
        n for n, t in sorted(catalog.items()) if t.accelerator is None
    ]
    unknown = [n for n in names if n not in catalog]
    if unknown:
        raise click.UsageError(f"unknown instance types {unknown} (known: {', '.join(sorted(catalog))})")
    gpu = [n for n in names if catalog[n].accelerator is not None]
    if gpu and not cluster:
        raise click.UsageError(
            f"{gpu}: GPU types cannot be emulated on this machine (measure them with --cluster)"
        )
    try:
        sizes = sorted({int(b) for b in batch_sizes.split(",") if b.strip()})
    except ValueError:
        raise click.UsageError(f"--batch-sizes: not integers: {batch_sizes!r}") from None
    if not sizes or min(sizes) < 1:
        raise click.UsageError("--batch-sizes: give one or more sizes of at least 1")
    pattern = _pattern(job_type, traffic_pattern)
    body, content_type = _payload(payload)
    if cluster:
        model = model_uri
        if model.startswith("file://") or "://" not in model:
            raise click.UsageError(
                "--cluster: the model must be where pods can fetch it (s3://, http(s)://, pvc://)"
            )
    else:
        model = model_uri.removeprefix("file://")
        if not Path(model).exists():
            raise click.UsageError(f"--model: {model} not found (a local .onnx file or model directory)")
    todo = candidates(catalog, names, sizes)
    deadline = time.monotonic() + max_minutes * 60
    echo = sys.stderr

    def progress(candidate: Candidate, step: Step) -> None:
        echo.write(
            f"  {candidate.label}: concurrency {step.concurrency:>3}  {step.rps:>9,.0f} rps"
            f"  p99 {step.p99_ms:8.2f} ms  errors {step.failures}\n"
        )
        echo.flush()

    def loads_for(outcomes: list[Outcome]) -> Callable[[list[Step]], Load | None] | None:
        """The next candidate's load levels, or None when the time budget is spent."""
        left = deadline - time.monotonic()
        if left <= step_seconds:
            return None
        # Default: every candidate gets an equal share of what remains, in whole steps.
        share = max(1, math.floor(left / max(1, len(todo) - len(outcomes)) / (step_seconds * 1.4)))

        def next_load(steps: list[Step]) -> Load | None:
            if pattern is not None:
                return next_phase(steps, pattern)
            return None if len(steps) >= share else stepped(steps, p99_ms, step_seconds)

        return next_load

    if cluster:
        from .cluster_main import measure_all_on_cluster

        outcomes = measure_all_on_cluster(
            settings, namespace, todo, model, body, content_type, loads_for, loadgen_image, ready_timeout,
            p99_ms, rps, progress,
        )  # fmt: skip
    else:
        outcomes = []
        with tempfile.TemporaryDirectory(prefix="berth-recommend-") as scratch:
            for candidate in todo:
                next_load = loads_for(outcomes)
                if next_load is None:
                    echo.write(f"time budget spent: {candidate.label} not measured\n")
                    continue
                echo.write(f"{candidate.label} (emulated on this machine)\n")
                try:
                    steps, rss, cores, notes = measure(
                        model, candidate, body, content_type, next_load, Path(scratch), progress
                    )
                except MeasureError as exc:
                    raise click.ClickException(f"{candidate.label}: {exc}") from exc
                outcomes.append(
                    Outcome(candidate, tuple(steps), p99_ms, rps, cores, rss, tuple(["emulated", *notes]))
                )
    click.echo(table(outcomes), err=True)
    if html_path:
        Path(html_path).write_text(html_report(outcomes, f"berth recommend: {Path(model).name}"))
    chosen = recommend(outcomes)
    if chosen is None:
        raise click.ClickException(f"no candidate keeps p99 within {p99_ms:g} ms: nothing to recommend")
    echo.write(f"recommended: {chosen.candidate.label}, {chosen.replicas} replica(s) for {rps:g} rps\n")
    uri = model if cluster else Path(model).resolve().as_uri()
    text = manifests(chosen, name, uri, f"{name}-config")
    if output:
        Path(output).write_text(text)
    else:
        click.echo(text, nl=False)

"""`berth render`: print the objects the operator would create, for review and GitOps."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import yaml

from .manifests import ManifestError, load_manifests
from .planner import Manifest, Observed, PlanInput, plan_endpoint
from .planner.monitoring import plan_monitoring
from .settings import Settings, SettingsError, load_settings

# Render output must not depend on when it runs: plan as of a fixed moment.
RENDER_TIME = datetime(1970, 1, 1, tzinfo=UTC)


class RenderError(ValueError):
    """An Endpoint cannot be rendered (missing config or model, unknown instance type...)."""


def render_objects(
    paths: list[str | Path], settings: Settings, notes: list[str] | None = None
) -> list[Manifest]:
    """Every object for every Endpoint and MonitoringSchedule in paths, as on a fresh cluster, sorted.

    Documents of other kinds are skipped; notes, when given, receives a line for each.
    """
    manifests = load_manifests(paths)
    if notes is not None:
        notes += manifests.notes
    objects: list[Manifest] = []
    shared: dict[tuple[str, str, str], Manifest] = {}  # one review identity per namespace and account
    problems: list[str] = []
    for endpoint in sorted(manifests.endpoint_resources(), key=lambda e: (e.namespace, e.name)):
        endpoint = endpoint.model_copy(update={"status": None})
        inp = PlanInput(
            endpoint=endpoint,
            configs=manifests.configs_in(endpoint.namespace),
            models=manifests.models_in(endpoint.namespace),
            settings=settings,
            observed=Observed(now=RENDER_TIME),
        )
        plan = plan_endpoint(inp)
        if plan.status.failure_reason:
            problems.append(f"Endpoint {endpoint.namespace}/{endpoint.name}: {plan.status.failure_reason}")
        objects += plan.objects
        for obj in plan.shared:
            meta = obj["metadata"]
            shared.setdefault((obj["kind"], meta.get("namespace", ""), meta["name"]), obj)
    endpoints = {(e.namespace, e.name): e for e in manifests.endpoint_resources()}
    for schedule in sorted(manifests.monitoring_resources(), key=lambda s: (s.namespace, s.name)):
        watched = endpoints.get((schedule.namespace, schedule.spec.endpoint_name))
        configs = manifests.configs_in(schedule.namespace)
        planned = plan_monitoring(schedule, watched, configs, [], settings, RENDER_TIME)
        if not planned.objects:
            problems.append(
                f"MonitoringSchedule {schedule.namespace}/{schedule.name}: {planned.status.failure_reason}"
            )
        objects += planned.objects
    if problems:
        raise RenderError("\n".join(problems))
    return [shared[key] for key in sorted(shared)] + objects


def format_objects(objects: list[Manifest], output: str) -> str:
    if output == "json":
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "List", "items": objects}
        return json.dumps(body, indent=2) + "\n"
    return "".join("---\n" + yaml.safe_dump(obj, sort_keys=False) for obj in objects)


@click.command("render")
@click.option(
    "-f",
    "--filename",
    "paths",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="Manifest file or directory (repeatable).",
)
@click.option(
    "--settings",
    "settings_path",
    type=click.Path(path_type=Path),
    envvar="BERTH_SETTINGS",
    help="Operator settings file.",
)
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
def render_command(paths: tuple[Path, ...], settings_path: Path | None, output: str) -> None:
    """Print the objects the operator would create for the Endpoints in PATH."""
    try:
        settings = load_settings(settings_path)
        notes: list[str] = []
        objects = render_objects(list(paths), settings, notes)
    except (ManifestError, SettingsError, RenderError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for note in notes:
        click.echo(note, err=True)
    click.echo(format_objects(objects, output), nl=False)

"""`berth operator`: run the kopf operator against the current kubeconfig or in-cluster.

The Helm chart runs `berth operator --settings /etc/berth/settings.yaml --liveness-port 8080 --metrics-port 8081`
(plus `--namespace NS` for namespaced installs).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import click
import kopf

from .handlers import OperatorContext, build_registry, operator_settings
from .monitoring_handlers import register_monitoring_handlers
from .opmetrics import MetricsServer
from .settings import Settings, SettingsError, load_settings
from .transform_handlers import register_transform_handlers

DEFAULT_PEERING = "berth"


@dataclass
class OperatorOptions:
    settings: Settings = field(default_factory=Settings)
    namespaces: Sequence[str] = ()  # empty: every namespace (clusterwide)
    peering_name: str = DEFAULT_PEERING
    standalone: bool = False
    liveness_port: int | None = None
    metrics_port: int | None = None  # the operator's own /metrics (MonitoringSchedule gauges)
    metrics_host: str = "0.0.0.0"
    server_url: str | None = None  # tests: an API server URL to use instead of the kubeconfig
    resync_seconds: float = 300.0


async def run_operator(
    options: OperatorOptions,
    *,
    ready_flag: asyncio.Event | threading.Event | None = None,
    stop_flag: asyncio.Event | threading.Event | None = None,
    context: OperatorContext | None = None,
) -> OperatorContext:
    """Run until stop_flag is set (or forever); returns the context (pass one in to watch it run:
    reconcile counts, API requests)."""
    ctx = context or OperatorContext(
        settings=options.settings, server_url=options.server_url, resync_seconds=options.resync_seconds
    )
    registry = build_registry(ctx)
    register_transform_handlers(registry, ctx)
    register_monitoring_handlers(registry, ctx)
    settings = kopf.OperatorSettings()
    operator_settings(settings, peering_name=options.peering_name, standalone=options.standalone)
    namespaces = list(options.namespaces) or list(options.settings.namespaces)
    liveness = f"http://0.0.0.0:{options.liveness_port}/healthz" if options.liveness_port else None
    metrics = MetricsServer(ctx.monitoring_gauges)
    if options.metrics_port:
        await metrics.start(options.metrics_host, options.metrics_port)
    try:
        await kopf.operator(
            registry=registry,
            settings=settings,
            clusterwide=not namespaces,
            namespaces=namespaces,
            # Not peering_name=: kopf would make peering mandatory; the settings carry the name,
            # and peering is used when the chart installed kopf's peering CRDs, else standalone.
            standalone=options.standalone,
            liveness_endpoint=liveness,
            ready_flag=ready_flag,
            stop_flag=stop_flag,
        )
    finally:
        await metrics.stop()
    return ctx


@click.command("operator")
@click.option(
    "--settings",
    "settings_path",
    envvar="BERTH_SETTINGS",
    type=click.Path(dir_okay=False),
    default=None,
    help="Operator settings YAML (routing, images, instance types). Env: BERTH_SETTINGS.",
)
@click.option(
    "--namespace",
    "namespaces",
    multiple=True,
    help="Watch only this namespace (repeatable). Default: settings.namespaces, else all namespaces.",
)
@click.option(
    "--peering", "peering_name", default=DEFAULT_PEERING, show_default=True, help="kopf peering name."
)
@click.option("--standalone", is_flag=True, help="Run without peering (a single replica).")
@click.option(
    "--liveness-port", type=int, default=8080, show_default=True, help="Port of /healthz (0: none)."
)
@click.option(
    "--metrics-port",
    type=int,
    default=8081,
    show_default=True,
    help="Port of the operator's /metrics (MonitoringSchedule gauges; 0: none).",
)
@click.option(
    "--metrics-host", default="0.0.0.0", show_default=True, help="Address the /metrics port listens on."
)
@click.option("--verbose", is_flag=True, help="Debug logging.")
def operator_command(
    settings_path: str | None,
    namespaces: tuple[str, ...],
    peering_name: str,
    standalone: bool,
    liveness_port: int,
    metrics_port: int,
    metrics_host: str,
    verbose: bool,
) -> None:
    """Run the Berth Kubernetes operator."""
    try:
        settings = load_settings(settings_path)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.PLAIN)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    options = OperatorOptions(
        settings=settings,
        namespaces=namespaces,
        peering_name=peering_name,
        standalone=standalone,
        liveness_port=liveness_port or None,
        metrics_port=metrics_port or None,
        metrics_host=metrics_host,
    )
    asyncio.run(run_operator(options))

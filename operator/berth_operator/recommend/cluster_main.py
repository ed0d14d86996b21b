"""`berth recommend --cluster`: log in as the kubeconfig says, measure every candidate, clean up."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable

import click

from ..settings import Settings
from .cluster import payload_config_map
from .cluster_run import clean_up, create_all, measure_on_cluster
from .emulate import MeasureError
from .search import Candidate, Load, Outcome, Step

NextLoads = Callable[[list[Outcome]], Callable[[list[Step]], Load | None] | None]


def measure_all_on_cluster(
    settings: Settings,
    namespace: str,
    todo: list[Candidate],
    model_uri: str,
    payload: bytes,
    content_type: str,
    loads_for: NextLoads,
    loadgen_image: str,
    ready_timeout: float,
    p99_ms: float,
    rps: float,
    on_step: Callable[[Candidate, Step], None],
) -> list[Outcome]:
    import kopf

    from ..kube import KubeClient

    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings()) or kopf.login_with_service_account(
        settings=kopf.OperatorSettings()
    )
    if info is None:
        raise click.ClickException("--cluster: no kubeconfig or in-cluster credentials found")
    run = secrets.token_hex(4)

    async def main() -> list[Outcome]:
        kube = KubeClient(info)
        outcomes: list[Outcome] = []
        click.echo(
            f"run {run}: objects labelled berth.dev/recommend-run={run} in namespace {namespace}", err=True
        )
        try:
            await create_all(kube, [payload_config_map(run, namespace, payload)])
            for candidate in todo:
                next_load = loads_for(outcomes)
                if next_load is None:
                    click.echo(f"time budget spent: {candidate.label} not measured", err=True)
                    continue
                click.echo(f"{candidate.label} (on the cluster)", err=True)
                steps = await measure_on_cluster(
                    kube, settings, namespace, run, candidate, model_uri, content_type, next_load,
                    loadgen_image, ready_timeout, on_step,
                )  # fmt: skip
                outcomes.append(Outcome(candidate, tuple(steps), p99_ms, rps, candidate.cpus))
            return outcomes
        finally:
            left = await asyncio.shield(clean_up(kube, namespace, run))
            if left:
                click.echo(f"could not delete: {'; '.join(left)}", err=True)
            await kube.close()

    try:
        return asyncio.run(main())
    except MeasureError as exc:
        raise click.ClickException(str(exc)) from exc

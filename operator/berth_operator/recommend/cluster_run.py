"""`berth recommend --cluster`, the I/O: create a candidate's objects, wait for its replica, run
each load level as a Job and read the figures from its pod's termination message, and delete
everything labelled with the run on the way out, whatever ended it (Ctrl-C included).

It acts as whoever the kubeconfig names: it needs create, get, list and delete on Deployments,
Services, ConfigMaps and Jobs, and get and list on Pods, in the namespace it is given.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from ..kube import RESOURCES, ApiError, KubeClient, ResourceKind, kind_of
from ..planner.types import Manifest
from ..settings import Settings
from .cluster import RUN_LABEL, candidate_name, candidate_objects, load_job
from .emulate import MeasureError
from .search import Candidate, Load, Step

CONFIG_MAPS = ResourceKind("v1", "ConfigMap", "configmaps")
DEPLOYMENTS = RESOURCES[("apps/v1", "Deployment")]
SERVICES = RESOURCES[("v1", "Service")]
JOBS = RESOURCES[("batch/v1", "Job")]
PODS = RESOURCES[("v1", "Pod")]
RUN_KINDS = (JOBS, DEPLOYMENTS, SERVICES, CONFIG_MAPS)
POLL_SECONDS = 1.0


def _kind(obj: Manifest) -> ResourceKind:
    return CONFIG_MAPS if obj["kind"] == "ConfigMap" else kind_of(obj)


async def create_all(kube: KubeClient, objects: list[Manifest]) -> None:
    for obj in objects:
        meta = obj["metadata"]
        await kube.request("POST", _kind(obj).path(meta["namespace"]), body=obj)


async def wait_available(kube: KubeClient, namespace: str, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        deployment = await kube.get(DEPLOYMENTS, namespace, name) or {}
        if ((deployment.get("status") or {}).get("availableReplicas") or 0) >= 1:
            return
        if time.monotonic() > deadline:
            pods = await kube.list_objects(PODS, namespace, {"berth.dev/recommend-candidate": name})
            states = [
                f"{p['metadata']['name']}: {(p.get('status') or {}).get('phase')}"
                f" {[c.get('state') for c in (p.get('status') or {}).get('containerStatuses') or []]}"
                for p in pods
            ]
            raise MeasureError(
                f"{name} not available after {timeout:.0f} s ({'; '.join(states) or 'no pods'})"
            )
        await asyncio.sleep(POLL_SECONDS)


def termination_message(pod: Manifest) -> str | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated") or {}
        if terminated.get("message"):
            return str(terminated["message"])
    return None


async def run_job(kube: KubeClient, job: Manifest, timeout: float) -> Step:
    """Create the load Job, wait for it to finish, and read its pod's figures."""
    namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
    await create_all(kube, [job])
    deadline = time.monotonic() + timeout
    try:
        while True:
            current = await kube.get(JOBS, namespace, name) or {}
            status = current.get("status") or {}
            if status.get("succeeded") or status.get("failed"):
                break
            if time.monotonic() > deadline:
                raise MeasureError(f"load Job {name} did not finish within {timeout:.0f} s")
            await asyncio.sleep(POLL_SECONDS)
        pods = await kube.list_objects(PODS, namespace, {"job-name": name})
        messages = [m for p in pods if (m := termination_message(p))]
        if status.get("failed") or not messages:
            raise MeasureError(
                f"load Job {name} failed: {messages[-1] if messages else 'no message from its pod'}"
            )
        try:
            return Step(**json.loads(messages[-1]))
        except (ValueError, TypeError) as exc:
            raise MeasureError(f"load Job {name}: unreadable figures: {messages[-1][:200]}") from exc
    finally:
        await kube.delete(JOBS, namespace, name)


async def clean_up(kube: KubeClient, namespace: str, run: str) -> list[str]:
    """Delete every object of the run; what could not be deleted."""
    left = []
    for kind in RUN_KINDS:
        try:
            for obj in await kube.list_objects(kind, namespace, {RUN_LABEL: run}):
                await kube.delete(kind, namespace, obj["metadata"]["name"])
        except ApiError as exc:
            left.append(f"{kind.kind}: {exc.describe()}")
    return left


async def measure_on_cluster(
    kube: KubeClient,
    settings: Settings,
    namespace: str,
    run: str,
    candidate: Candidate,
    model_uri: str,
    content_type: str,
    next_load: Callable[[list[Step]], Load | None],
    loadgen_image: str,
    ready_timeout: float,
    on_step: Callable[[Candidate, Step], None] | None = None,
) -> list[Step]:
    """The candidate's curve, measured by load Jobs against its own replica. Its Deployment and
    Service are deleted before the next candidate starts, so candidates never share nodes' time."""
    objects = candidate_objects(run, namespace, candidate, model_uri, settings)
    name = candidate_name(run, candidate)
    steps: list[Step] = []
    try:
        await create_all(kube, objects)
        await wait_available(kube, namespace, name, ready_timeout)
        while (load := next_load(steps)) is not None:
            job = load_job(run, namespace, candidate, load, len(steps), content_type, loadgen_image)
            step = await run_job(kube, job, load.seconds + 2 * 60 + ready_timeout)
            steps.append(step)
            if on_step is not None:
                on_step(candidate, step)
    finally:
        for obj in objects:
            await kube.delete(_kind(obj), namespace, obj["metadata"]["name"])
    return steps


def describe(obj: Any) -> str:
    return f"{obj['kind']} {obj['metadata']['namespace']}/{obj['metadata']['name']}"

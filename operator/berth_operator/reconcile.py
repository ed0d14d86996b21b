"""One reconcile of an Endpoint: plan from what the watches delivered, apply, write the status.

kopf-free on purpose: handlers.py builds a Snapshot from kopf's indexes (the Endpoint, its
EndpointConfigs and Models, its children and pods, all already in memory) and calls
`reconcile_endpoint`; a reconcile with nothing new reads nothing from the API server and writes
nothing. The planner decides; this module only reads what the planner asks for and writes.

Writes: every planned child is server-side applied when it differs from the plan (apply.py);
a child that does not exist yet is looked up first, so an object of that name that is not ours
(a user's own HTTPRoute named like the Endpoint) is reported, never taken over. A write the API
server refuses (403, 422, a quota, a full Service range) is planned again into the status:
failureReason and Degraded, and the Endpoint is not InService while a child is missing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
from pydantic import ValidationError

from . import scrape
from .api import Endpoint, EndpointConfig, Model, validation_message
from .apply import applied, digest, needs_apply, status_patch
from .events import EventRecorder
from .kube import RESOURCES, ApiError, KubeClient, berth_kind, describe_error, kind_of
from .planner import labels as planner_labels
from .planner import plan_endpoint
from .planner.asyncinf import redis_configured, streams_to_observe
from .planner.fleetmetrics import fleets_to_scrape, metrics_wanted
from .planner.names import label_value
from .planner.observe import find
from .planner.podfailures import pods_stuck_starting
from .planner.resources import model_names_of
from .planner.status import invalid_endpoint_status
from .planner.types import FleetMetrics, Manifest, ObjectRef, Observed, Plan, PlanInput
from .queues import QueueReader
from .settings import Settings

log = logging.getLogger(__name__)

ENDPOINTS = berth_kind("Endpoint")
PODS = RESOURCES[("v1", "Pod")]
HTTPROUTES = RESOURCES[("gateway.networking.k8s.io/v1", "HTTPRoute")]
SCALEDOBJECTS = RESOURCES[("keda.sh/v1alpha1", "ScaledObject")]
HTTPSCALEDOBJECTS = RESOURCES[("http.keda.sh/v1alpha1", "HTTPScaledObject")]
REFERENCEGRANTS = RESOURCES[("gateway.networking.k8s.io/v1beta1", "ReferenceGrant")]
SHARED_REAPPLY_SECONDS = 600.0
# Both route kinds whatever settings.routing.mode says: after a change of mode the planner
# must see the old kind's objects to delete them.
CHILD_KINDS = [
    RESOURCES[("v1", "ConfigMap")],
    RESOURCES[("apps/v1", "Deployment")],
    RESOURCES[("v1", "Service")],
    RESOURCES[("autoscaling/v2", "HorizontalPodAutoscaler")],
    RESOURCES[("policy/v1", "PodDisruptionBudget")],
    HTTPROUTES,
    RESOURCES[("networking.k8s.io/v1", "Ingress")],
    RESOURCES[("networking.k8s.io/v1", "NetworkPolicy")],
    SCALEDOBJECTS,
    HTTPSCALEDOBJECTS,
]


@dataclass(frozen=True)
class Snapshot:
    """What the watches hold for one Endpoint, as plain dicts."""

    raw: Manifest  # the Endpoint
    configs: Mapping[str, Manifest]  # EndpointConfigs of its namespace by name (those it may need)
    models: Mapping[str, Manifest]  # Models of its namespace by name
    children: list[Manifest]  # objects labelled berth.dev/endpoint=<label>
    pods: list[Manifest]


@dataclass
class Memory:
    """What the operator remembers of one Endpoint between reconciles."""

    # The status last written, and the resourceVersion the Endpoint had when it was: while the
    # watch still delivers that older version, the written status is the newer truth.
    written_status: dict[str, Any] | None = None
    written_over: str | None = None

    def status_of(self, raw: Manifest) -> Any:
        if self.written_status is not None and raw["metadata"].get("resourceVersion") == self.written_over:
            return self.written_status
        self.written_status = self.written_over = None  # the watch has moved past our write
        return raw.get("status")


@dataclass
class Outcome:
    requeue_after: float | None = None  # seconds until the plan wants to look again
    writes: int = 0
    failures: dict[tuple[str, str], str] = field(default_factory=dict)  # refused child writes


@dataclass
class Shell:
    """The I/O a reconcile may do, shared by every Endpoint of one operator run."""

    kube: KubeClient
    settings: Settings
    events: EventRecorder
    scrape_session: aiohttp.ClientSession
    # Shared objects (the serving pods' review identity) applied by this run: (kind, ns, name) ->
    # (digest, when). They are not watched; applied again when their plan changes, and every
    # SHARED_REAPPLY_SECONDS (an unchanged apply writes nothing), so one deleted by hand returns.
    shared_applied: dict[tuple[str, str, str], tuple[str, float]] = field(default_factory=dict)
    # The async queues (Redis); None reads nothing, as for a cluster without async Endpoints.
    queues: QueueReader | None = None


def config_names_of(endpoint: Manifest) -> set[str]:
    """The EndpointConfigs an Endpoint refers to: its spec's, those its status serves or rolls out,
    and async ones that still drain their queues."""
    names = {str((endpoint.get("spec") or {}).get("endpointConfigName") or "")}
    status = endpoint.get("status") or {}
    names.update(str(status.get(key) or "") for key in ("endpointConfigName", "pendingEndpointConfigName"))
    names.add(str((status.get("rollout") or {}).get("targetEndpointConfigName") or ""))
    draining = status.get("drainingEndpointConfigNames")
    names.update(str(name) for name in (draining if isinstance(draining, list) else []))
    return {name for name in names if name}


def _parse_all(cls: type[Model] | type[EndpointConfig], raws: Mapping[str, Manifest]) -> dict[str, Any]:
    parsed = {}
    for name, raw in raws.items():
        try:
            parsed[name] = cls.model_validate(raw)
        except ValidationError as exc:
            # Its own status says why (InvalidSpec); the Endpoint reports it as not found.
            log.debug("ignoring invalid %s %s: %s", cls.KIND, name, validation_message(exc))
    return parsed


async def reconcile_endpoint(shell: Shell, snapshot: Snapshot, memory: Memory) -> Outcome:
    """Plan the Endpoint from the snapshot, apply what differs, write the status if it changed."""
    raw = {"apiVersion": ENDPOINTS.api_version, "kind": "Endpoint", **snapshot.raw}
    if raw["metadata"].get("deletionTimestamp"):
        return Outcome()
    stored_status = memory.status_of(raw)
    now = datetime.now(UTC)
    outcome = Outcome()
    try:
        endpoint = Endpoint.model_validate({**raw, "status": stored_status})
    except ValidationError as exc:
        # Admission refuses this where the CRD is installed; without it, the status says why.
        await _write_status(
            shell,
            raw,
            stored_status,
            invalid_endpoint_status(raw, validation_message(exc), now),
            memory,
            outcome,
        )
        return outcome
    configs = _parse_all(EndpointConfig, snapshot.configs)
    models = _parse_all(
        Model, {n: m for n, m in snapshot.models.items() if n in model_names_of(configs.values())}
    )
    streams = streams_to_observe(endpoint, configs)
    reading = await shell.queues.read(streams, now.timestamp()) if shell.queues and streams else None
    observed = Observed(
        now=now,
        children=snapshot.children,
        pods=snapshot.pods,
        metrics=await _metrics(shell, endpoint, configs, snapshot.pods),
        unavailable_kinds=await _unavailable_kinds(shell),
        pod_events=await _pod_events(shell, endpoint.namespace, snapshot.pods, now),
        queues=reading.queues if reading else {},
        queue_error=reading.error if reading else None,
    )
    inp = PlanInput(
        endpoint=endpoint, configs=configs, models=models, settings=shell.settings, observed=observed
    )
    plan = plan_endpoint(inp)
    outcome.failures = await _apply_shared(shell, plan, outcome)
    outcome.failures |= await _apply_children(shell, plan, snapshot.children, outcome)
    if outcome.failures:  # plan once more knowing what the API server refused, for the status
        failed = replace(observed, write_failures=dict(outcome.failures))
        plan = plan_endpoint(PlanInput(endpoint, configs, models, shell.settings, failed))
    await _write_status(shell, raw, stored_status, plan.status.to_wire(), memory, outcome)
    for event in plan.events:
        await shell.events.record(raw, event.type, event.reason, event.message)
    outcome.requeue_after = plan.requeue_after
    return outcome


async def _metrics(
    shell: Shell, endpoint: Endpoint, configs: Mapping[str, EndpointConfig], pods: list[Manifest]
) -> dict[str, FleetMetrics]:
    """The metrics the planner asked for: the new fleet's while a rollout bakes, the serving
    fleet's while it captures data."""
    baking = metrics_wanted(endpoint.status)
    found: dict[str, FleetMetrics] = {}
    for target in fleets_to_scrape(endpoint.status, configs):
        label = label_value(target)
        fleet = [
            p
            for p in pods
            if (p["metadata"].get("labels") or {}).get(planner_labels.ENDPOINT_CONFIG) == label
        ]
        prometheus = shell.settings.rollback.prometheus_url
        if prometheus and target == baking:  # capture drops are read from the pods themselves
            names = [pod["metadata"]["name"] for pod in fleet]
            metrics = await scrape.query_prometheus(
                shell.scrape_session, prometheus, endpoint.namespace, names
            )
        else:
            metrics = await scrape.scrape_pods(shell.scrape_session, fleet)
        if metrics is not None:
            found[target] = metrics
    return found


async def _unavailable_kinds(shell: Shell) -> frozenset[str]:
    """The optional kinds the settings ask for that the cluster does not serve (no CRD)."""
    wanted = []
    if shell.settings.routing.mode == "gateway":
        wanted += [HTTPROUTES, HTTPSCALEDOBJECTS, REFERENCEGRANTS]  # the last two: serverless variants
    if shell.settings.autoscaling.scaler == "keda" or redis_configured(shell.settings):
        wanted.append(SCALEDOBJECTS)  # async variants always scale with KEDA
    served = await asyncio.gather(*(shell.kube.serves(kind) for kind in wanted))
    return frozenset(kind.kind for kind, ok in zip(wanted, served, strict=True) if not ok)


async def _pod_events(
    shell: Shell, namespace: str, pods: list[Manifest], now: datetime
) -> dict[str, tuple[tuple[str, str], ...]]:
    """Warning events of the pods the planner finds stuck before any container started (rare)."""
    stuck = pods_stuck_starting(pods, now)
    found = await asyncio.gather(
        *(shell.kube.warning_events(namespace, "Pod", name) for name in stuck), return_exceptions=True
    )
    return {
        name: tuple(events) for name, events in zip(stuck, found, strict=True) if isinstance(events, list)
    }


def _ours(obj: Manifest, desired: Manifest) -> bool:
    """An existing object is ours when it carries the Endpoint's label (Berth made it)."""
    want = (desired["metadata"].get("labels") or {}).get(planner_labels.ENDPOINT)
    return (obj.get("metadata", {}).get("labels") or {}).get(planner_labels.ENDPOINT) == want


async def _apply_shared(shell: Shell, plan: Plan, outcome: Outcome) -> dict[tuple[str, str], str]:
    """Apply the shared objects this run has not applied in this form yet, before the children:
    pods of a new Deployment need their ServiceAccount to exist."""
    failures: dict[tuple[str, str], str] = {}
    for desired in plan.shared:
        meta = desired["metadata"]
        key = (desired["kind"], meta.get("namespace", ""), meta["name"])
        stamp, now = digest(desired), time.monotonic()
        last = shell.shared_applied.get(key)
        if last is not None and last[0] == stamp and now - last[1] < SHARED_REAPPLY_SECONDS:
            continue
        try:
            await shell.kube.apply(applied(desired))
        except ApiError as exc:
            failures[(desired["kind"], meta["name"])] = exc.describe()
            continue
        except (TimeoutError, aiohttp.ClientError) as exc:
            failures[(desired["kind"], meta["name"])] = describe_error(exc)
            continue
        shell.shared_applied[key] = (stamp, now)
        outcome.writes += 1
    return failures


async def _apply_children(
    shell: Shell, plan: Plan, children: list[Manifest], outcome: Outcome
) -> dict[tuple[str, str], str]:
    """Apply what differs, delete what must go; what the API server refused, by (kind, name)."""
    kube = shell.kube
    failures: dict[tuple[str, str], str] = {}

    async def write(desired: Manifest) -> None:
        kind, meta = desired["kind"], desired["metadata"]
        observed = find(children, kind, meta["name"])
        if observed is not None and observed.get("metadata", {}).get("deletionTimestamp"):
            return  # being deleted: applied again once it is gone
        if not needs_apply(desired, observed):
            return
        try:
            if observed is None:  # not in the watch: new, not ours, or the watch lags
                existing = await kube.get(kind_of(desired), meta["namespace"], meta["name"])
                if existing is not None and not _ours(existing, desired):
                    failures[(kind, meta["name"])] = (
                        f"{kind} {meta['namespace']}/{meta['name']} exists and is not managed by Berth "
                        f"(it lacks the label {planner_labels.ENDPOINT}): delete or rename it"
                    )
                    return
                if existing is not None and not needs_apply(desired, existing):
                    return
            await kube.apply(applied(desired))
            outcome.writes += 1
        except ApiError as exc:
            if exc.status == 404:
                kube.forget_discovery()  # a CRD may have gone: ask again next time
            failures[(kind, meta["name"])] = exc.describe()
        except (TimeoutError, aiohttp.ClientError) as exc:
            failures[(kind, meta["name"])] = describe_error(exc)

    async def delete(ref: ObjectRef) -> None:
        try:
            if await kube.delete(RESOURCES[(ref.api_version, ref.kind)], ref.namespace, ref.name):
                outcome.writes += 1
        except (ApiError, TimeoutError, aiohttp.ClientError) as exc:
            log.warning(
                "could not delete %s %s/%s: %s", ref.kind, ref.namespace, ref.name, describe_error(exc)
            )

    existing = {(c.get("kind"), c.get("metadata", {}).get("name")) for c in children}
    await asyncio.gather(
        *(write(obj) for obj in plan.objects),
        *(delete(ref) for ref in plan.delete if (ref.kind, ref.name) in existing),
    )
    return failures


async def _write_status(
    shell: Shell,
    raw: Manifest,
    stored: Mapping[str, Any] | None,
    desired: dict[str, Any],
    memory: Memory,
    outcome: Outcome,
) -> None:
    body = status_patch(stored, desired)
    if body is None:
        return
    meta = raw["metadata"]
    await shell.kube.patch_status(ENDPOINTS, meta["namespace"], meta["name"], body)
    memory.written_status, memory.written_over = desired, meta.get("resourceVersion")
    outcome.writes += 1


async def delete_children(kube: KubeClient, namespace: str, name: str) -> int:
    """Delete every object labelled as the Endpoint's child (no garbage collector needed)."""
    selector = {planner_labels.ENDPOINT: planner_labels.endpoint_label(name)}

    async def listed(kind: Any) -> list[Manifest]:
        try:
            return await kube.list_objects(kind, namespace, selector)
        except ApiError as exc:
            if exc.status == 404:  # e.g. no Gateway API CRDs in this cluster
                return []
            raise

    groups = await asyncio.gather(*(listed(kind) for kind in CHILD_KINDS))
    doomed = [obj for group in groups for obj in group]
    await asyncio.gather(*(kube.delete(kind_of(obj), namespace, obj["metadata"]["name"]) for obj in doomed))
    return len(doomed)

"""kopf handlers: thin. kopf's watches fill indexes; handlers wake reconciles; reconcile.py reads the
indexes and writes; the planner decides.

Level-triggered: one daemon per Endpoint runs a reconcile whenever it is woken (the Endpoint,
one of its children or pods, or a referenced EndpointConfig or Model changed) or when the
plan's requeue_after is due (a bake, a termination wait), and otherwise every resync interval.
Children, pods and Jobs are watched with a server-side label selector on Berth's managed-by
label, so the operator never receives the rest of the cluster. Lookups across kinds (which
Endpoints use this Model?) are kopf indexes, not lists. Handlers return None so kopf writes no
progress of its own into our status.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf

from . import api
from .events import EventRecorder
from .kube import ApiError, KubeClient, berth_kind, describe_error
from .opmetrics import MonitoringGauges
from .planner import labels as berth_labels
from .planner.names import label_value
from .queues import QueueReader
from .reconcile import (
    Memory,
    Outcome,
    Shell,
    Snapshot,
    config_names_of,
    delete_children,
    reconcile_endpoint,
)
from .settings import Settings
from .sync_status import sync_config_status, sync_model_status

log = logging.getLogger(__name__)

# (group, version, plural) of Berth's own kinds, from the API types.
MODELS, CONFIGS, ENDPOINTS, TRANSFORMJOBS = (
    (api.GROUP, api.VERSION, cls.PLURAL)
    for cls in (api.Model, api.EndpointConfig, api.Endpoint, api.TransformJob)
)
FINALIZER = "berth.dev/finalizer"
MANAGED = f"{berth_labels.MANAGED_BY}={berth_labels.MANAGED_BY_VALUE}"  # every object Berth makes carries it
ERROR_BACKOFF_MAX = 30.0
WAKE_COALESCE = 0.05
MIN_REQUEUE = 0.1  # a plan due "now" is looked at again soon, not in a hot loop
# Index id -> (group, version, plural) of each kind of Endpoint child.
CHILD_INDEXES = {
    "configmaps_by_endpoint": ("", "v1", "configmaps"),
    "deployments_by_endpoint": ("apps", "v1", "deployments"),
    "services_by_endpoint": ("", "v1", "services"),
    "hpas_by_endpoint": ("autoscaling", "v2", "horizontalpodautoscalers"),
    "pdbs_by_endpoint": ("policy", "v1", "poddisruptionbudgets"),
    "httproutes_by_endpoint": ("gateway.networking.k8s.io", "v1", "httproutes"),
    "ingresses_by_endpoint": ("networking.k8s.io", "v1", "ingresses"),
    "networkpolicies_by_endpoint": ("networking.k8s.io", "v1", "networkpolicies"),
    "scaledobjects_by_endpoint": ("keda.sh", "v1alpha1", "scaledobjects"),
    "httpscaledobjects_by_endpoint": ("http.keda.sh", "v1alpha1", "httpscaledobjects"),
}
PODS = ("", "v1", "pods")
JOBS = ("batch", "v1", "jobs")
Key = tuple[str, str]  # (namespace, name)


def plain(body: Any) -> dict[str, Any]:
    """A kopf Body as an independent plain dict, without managedFields (never read, often large)."""
    raw: dict[str, Any] = copy.deepcopy(dict(body))
    meta = dict(raw.get("metadata") or {})
    meta.pop("managedFields", None)
    meta.setdefault("namespace", "default")
    raw["metadata"] = meta
    return raw


POD_METADATA = ("name", "namespace", "labels", "annotations", "uid", "creationTimestamp", "deletionTimestamp")


def pod_view(body: Any) -> dict[str, Any]:
    """The part of a Pod the planner reads (identity, container ports, status): a pod's spec is
    most of its size, and hundreds of pods are held in memory."""
    meta = body.get("metadata") or {}
    containers = [
        {"name": c.get("name"), "ports": copy.deepcopy(c.get("ports") or [])}
        for c in (body.get("spec") or {}).get("containers") or []
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "namespace": "default",
            **{k: copy.deepcopy(meta[k]) for k in POD_METADATA if k in meta},
        },
        "spec": {"containers": containers},
        "status": copy.deepcopy(dict(body.get("status") or {})),
    }


def first(index: Any, key: Any) -> Any:
    """The one value an index holds under key (an object indexed by its own name), or None."""
    store = index.get(key) if index is not None else None
    return next(iter(store), None) if store else None


class NamespaceObjects(Mapping[str, dict[str, Any]]):
    """One namespace's objects of a kind by name, read from an index keyed by (namespace, name)."""

    def __init__(self, index: Any, namespace: str) -> None:
        self._index, self._namespace = index, namespace

    def __getitem__(self, name: str) -> dict[str, Any]:
        found = first(self._index, (self._namespace, name))
        if found is None:
            raise KeyError(name)
        return found

    def __contains__(self, name: object) -> bool:
        return first(self._index, (self._namespace, name)) is not None

    def __iter__(self) -> Iterator[str]:
        return (name for namespace, name in self._index if namespace == self._namespace)

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass
class OperatorContext:
    """State shared by the handlers of one operator run."""

    settings: Settings
    server_url: str | None = None  # tests: log in to this API server URL, TLS unchecked
    resync_seconds: float = 300.0
    kube: KubeClient | None = None
    shell: Shell | None = None
    wakers: dict[Key, asyncio.Event] = field(default_factory=dict)
    memories: dict[Key, Memory] = field(default_factory=dict)
    deleting: set[Key] = field(default_factory=set)
    # Held during a reconcile; the delete handler takes it so no reconcile creates a child
    # after the children were listed for deletion.
    locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    reconciles: int = 0
    last_outcomes: dict[Key, Outcome] = field(default_factory=dict)
    monitoring_gauges: MonitoringGauges = field(default_factory=MonitoringGauges)

    def waker(self, key: Key) -> asyncio.Event:
        return self.wakers.setdefault(key, asyncio.Event())

    def lock(self, key: Key) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def wake(self, key: Key) -> None:
        if key in self.wakers:
            self.wakers[key].set()

    def forget(self, key: Key) -> None:
        for table in (self.wakers, self.locks, self.memories, self.last_outcomes):
            table.pop(key, None)
        self.deleting.discard(key)

    def require_shell(self) -> Shell:
        if self.shell is None:
            raise RuntimeError("the operator has not logged in to the API server yet")
        return self.shell


def snapshot(namespace: str, name: str, body: Any, indexes: Mapping[str, Any]) -> Snapshot:
    """The Endpoint and everything it refers to, from kopf's live body and indexes."""
    raw = plain(body)
    configs = NamespaceObjects(indexes["configs_by_name"], namespace)
    wanted = {n: configs[n] for n in config_names_of(raw) if n in configs}
    key = (namespace, berth_labels.endpoint_label(name))
    children = [child for index in CHILD_INDEXES for child in (indexes[index].get(key) or ())]
    return Snapshot(
        raw=raw,
        configs=wanted,
        models=NamespaceObjects(indexes["models_by_name"], namespace),
        children=children,
        pods=list(indexes["pods_by_endpoint"].get(key) or ()),
    )


async def _wait_woken(waker: asyncio.Event, stopped: kopf.DaemonStopped, timeout: float) -> None:
    async def stop() -> None:
        await stopped.wait()

    tasks = {asyncio.ensure_future(waker.wait()), asyncio.ensure_future(stop())}
    try:
        await asyncio.wait(tasks, timeout=max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def build_registry(ctx: OperatorContext) -> kopf.OperatorRegistry:
    """All handlers of the Berth operator, bound to one context (tests run several operators)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if ctx.server_url:
            info: kopf.ConnectionInfo | None = kopf.ConnectionInfo(server=ctx.server_url, insecure=True)
        else:
            info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
        if info is not None:
            old, ctx.kube = ctx.kube, KubeClient(info)
            session = ctx.shell.scrape_session if ctx.shell is not None else aiohttp.ClientSession()
            queues = ctx.shell.queues if ctx.shell is not None else QueueReader.from_settings(ctx.settings)
            ctx.shell = Shell(ctx.kube, ctx.settings, EventRecorder(ctx.kube), session, queues=queues)
            if old is not None:
                await old.close()
        return info

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        if ctx.kube is not None:
            await ctx.kube.close()
        if ctx.shell is not None:
            await ctx.shell.scrape_session.close()
            if ctx.shell.queues is not None:
                await ctx.shell.queues.close()

    # ------------------------------------------------------------------ indexes

    @kopf.index(*CONFIGS, registry=registry, id="configs_by_name")
    def configs_by_name(namespace: str | None, name: str, body: Any, **_: Any) -> Any:
        return {(namespace or "default", name): plain(body)}

    @kopf.index(*MODELS, registry=registry, id="models_by_name")
    def models_by_name(namespace: str | None, name: str, body: Any, **_: Any) -> Any:
        return {(namespace or "default", name): plain(body)}

    @kopf.index(*MODELS, registry=registry, id="models_by_label")
    def models_by_label(namespace: str | None, name: str, **_: Any) -> Any:
        return {(namespace or "default", label_value(name)): name}

    @kopf.index(*CONFIGS, registry=registry, id="configs_by_model")
    def configs_by_model(namespace: str | None, name: str, spec: Any, **_: Any) -> Any:
        variants = [*(spec.get("productionVariants") or []), *(spec.get("shadowProductionVariants") or [])]
        return {
            (namespace or "default", str(v.get("modelName"))): name for v in variants if isinstance(v, dict)
        }

    @kopf.index(*ENDPOINTS, registry=registry, id="endpoints_by_config")
    def endpoints_by_config(namespace: str | None, name: str, body: Any, **_: Any) -> Any:
        return {(namespace or "default", config): name for config in config_names_of(dict(body))}

    @kopf.index(*ENDPOINTS, registry=registry, id="endpoints_by_label")
    def endpoints_by_label(namespace: str | None, name: str, **_: Any) -> Any:
        return {(namespace or "default", berth_labels.endpoint_label(name)): name}

    def child_index(namespace: str | None, labels: Any, body: Any, **_: Any) -> Any:
        return {(namespace or "default", labels[berth_labels.ENDPOINT]): plain(body)}

    def pod_index(namespace: str | None, labels: Any, body: Any, **_: Any) -> Any:
        return {(namespace or "default", labels[berth_labels.ENDPOINT]): pod_view(body)}

    owned = {berth_labels.ENDPOINT: kopf.PRESENT}
    for index_id, (group, version, plural) in CHILD_INDEXES.items():
        kopf.index(group, version, plural, labels=owned, registry=registry, id=index_id)(child_index)
    kopf.index(*PODS, labels=owned, registry=registry, id="pods_by_endpoint")(pod_index)
    serving_a_model = {berth_labels.MODEL: kopf.PRESENT}

    @kopf.index(*PODS, labels=serving_a_model, registry=registry, id="pods_by_model")
    def pods_by_model(namespace: str | None, labels: Any, body: Any, **_: Any) -> Any:
        return {(namespace or "default", labels[berth_labels.MODEL]): pod_view(body)}

    # ------------------------------------------------------------------ Endpoint

    @kopf.on.event(*ENDPOINTS, registry=registry)
    def endpoint_changed(*, type: str, namespace: str | None, name: str, **_: Any) -> None:
        key = (namespace or "default", name)
        if type == "DELETED":
            ctx.forget(key)
        else:
            ctx.wake(key)

    @kopf.daemon(*ENDPOINTS, registry=registry, cancellation_timeout=5.0)
    async def endpoint_daemon(
        *, stopped: kopf.DaemonStopped, namespace: str | None, name: str, body: Any, **kwargs: Any
    ) -> None:
        key = (namespace or "default", name)
        waker = ctx.waker(key)
        backoff = 0.5
        while not stopped:
            waker.clear()
            requeue: float | None
            try:
                async with ctx.lock(key):
                    if key in ctx.deleting:
                        return
                    memory = ctx.memories.setdefault(key, Memory())
                    found = snapshot(key[0], name, body, kwargs)
                    outcome = await reconcile_endpoint(ctx.require_shell(), found, memory)
                ctx.reconciles += 1
                ctx.last_outcomes[key] = outcome
                requeue = outcome.requeue_after
                if outcome.failures:
                    refused = "; ".join(f"{k} {n}: {why}" for (k, n), why in sorted(outcome.failures.items()))
                    log.warning("Endpoint %s/%s: writes refused, again in %.1fs: %s", *key, backoff, refused)
                    requeue, backoff = backoff, min(backoff * 2, ERROR_BACKOFF_MAX)
                else:
                    backoff = 0.5
            except asyncio.CancelledError:
                raise
            except (ApiError, TimeoutError, aiohttp.ClientError) as exc:
                log.warning(
                    "reconcile of Endpoint %s/%s failed, retrying in %.1fs: %s",
                    *key,
                    backoff,
                    describe_error(exc),
                )
                requeue, backoff = backoff, min(backoff * 2, ERROR_BACKOFF_MAX)
            except Exception:
                log.exception(
                    "reconcile of Endpoint %s/%s failed unexpectedly, retrying in %.1fs", *key, backoff
                )
                requeue, backoff = backoff, min(backoff * 2, ERROR_BACKOFF_MAX)
            timeout = (
                ctx.resync_seconds if requeue is None else min(max(requeue, MIN_REQUEUE), ctx.resync_seconds)
            )
            await _wait_woken(waker, stopped, timeout)
            if waker.is_set() and not stopped:
                # Our own writes come back as a burst of events: one reconcile answers them all.
                await asyncio.sleep(WAKE_COALESCE)

    @kopf.on.delete(*ENDPOINTS, registry=registry)
    async def endpoint_deleted(*, namespace: str | None, name: str, status: Any, **_: Any) -> None:
        key = (namespace or "default", name)
        ctx.deleting.add(key)
        kube = ctx.require_shell().kube
        async with ctx.lock(key):
            if (status or {}).get("phase") != "Deleting":
                try:
                    await kube.patch_status(berth_kind("Endpoint"), key[0], name, {"phase": "Deleting"})
                except ApiError as exc:
                    if exc.status != 404:
                        raise
            count = await delete_children(kube, key[0], name)
        log.info("Endpoint %s/%s deleted with %d children", *key, count)

    # ------------------------------------------------------------------ children

    def child_changed(*, namespace: str | None, labels: Any, **kwargs: Any) -> None:
        namespace = namespace or "default"
        endpoint = first(kwargs["endpoints_by_label"], (namespace, labels[berth_labels.ENDPOINT]))
        if endpoint is not None:
            ctx.wake((namespace, endpoint))

    # Children (drift, deletion by hand, the Deployment controller's status) and pods (readiness,
    # failures) wake the Endpoint that owns them. Kinds absent from the cluster are skipped by kopf.
    for group, version, plural in [*CHILD_INDEXES.values(), PODS]:
        kopf.on.event(group, version, plural, labels=owned, registry=registry, id=f"{plural}-changed")(
            child_changed
        )

    # ------------------------------------------------------------------ Model / EndpointConfig

    def wake_users_of_config(namespace: str, config: str, indexes: Mapping[str, Any]) -> None:
        for endpoint in indexes["endpoints_by_config"].get((namespace, config)) or ():
            ctx.wake((namespace, endpoint))

    async def sync_config(namespace: str, raw: dict[str, Any], indexes: Mapping[str, Any]) -> None:
        models = NamespaceObjects(indexes["models_by_name"], namespace)
        variants = (raw.get("spec") or {}).get("productionVariants") or []
        shadows = (raw.get("spec") or {}).get("shadowProductionVariants") or []
        names = {str(v.get("modelName")) for v in [*variants, *shadows] if isinstance(v, dict)}
        await sync_config_status(
            ctx.require_shell().kube, raw, {n for n in names if n in models}, datetime.now(UTC)
        )

    async def sync_model(namespace: str, raw: dict[str, Any], indexes: Mapping[str, Any]) -> None:
        pods = indexes["pods_by_model"].get((namespace, label_value(raw["metadata"]["name"]))) or ()
        await sync_model_status(ctx.require_shell().kube, raw, datetime.now(UTC), list(pods))

    @kopf.on.event(*MODELS, registry=registry)
    async def model_changed(*, type: str, body: Any, namespace: str | None, name: str, **kwargs: Any) -> None:
        namespace = namespace or "default"
        if type != "DELETED":
            await sync_model(namespace, plain(body), kwargs)
        for config in kwargs["configs_by_model"].get((namespace, name)) or ():
            raw = first(kwargs["configs_by_name"], (namespace, config))
            if raw is not None:
                await sync_config(namespace, raw, kwargs)
            wake_users_of_config(namespace, config, kwargs)

    @kopf.on.event(*PODS, labels=serving_a_model, registry=registry, id="model_pod_changed")
    async def model_pod_changed(*, namespace: str | None, labels: Any, **kwargs: Any) -> None:
        """A server that refused (or stopped refusing) its pipeline's wiring: the Model says so."""
        namespace = namespace or "default"
        for name in kwargs["models_by_label"].get((namespace, labels[berth_labels.MODEL])) or ():
            raw = first(kwargs["models_by_name"], (namespace, name))
            if raw is not None:
                await sync_model(namespace, raw, kwargs)

    @kopf.on.event(*CONFIGS, registry=registry)
    async def config_changed(
        *, type: str, body: Any, namespace: str | None, name: str, **kwargs: Any
    ) -> None:
        namespace = namespace or "default"
        if type != "DELETED":
            await sync_config(namespace, plain(body), kwargs)
        wake_users_of_config(namespace, name, kwargs)

    return registry


def operator_settings(settings: kopf.OperatorSettings, *, peering_name: str, standalone: bool) -> None:
    """kopf's own settings: our finalizer, progress in annotations only, few events of its own,
    and server-side label selectors so only Berth's children, pods and Jobs are watched."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="berth.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="berth.dev", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.peering.name = peering_name
    settings.peering.standalone = standalone
    # Replicas need distinct priorities: kopf pauses every peer when two share the highest one.
    settings.peering.priority = random.randint(1, 2**31 - 1)
    settings.peering.mandatory = False
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    for resource in [*CHILD_INDEXES.values(), PODS, JOBS]:
        settings.watching.label_selectors[resource] = MANAGED

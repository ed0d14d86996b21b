"""kopf handlers: thin. They wake reconciles; `reconcile` reads and writes; the planner decides.

Level-triggered: one daemon per Endpoint runs a reconcile whenever it is woken (the Endpoint,
one of its children or Pods, or a referenced EndpointConfig or Model changed) or when the
plan's requeue_after is due (a bake, a termination wait), and otherwise every resync interval.
Handlers return None so kopf writes no progress of its own into our status.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf
from pydantic import ValidationError

from . import reconcile
from .api import validation_message
from .kube import ApiError, KubeClient
from .planner import labels as planner_labels
from .planner import plan_endpoint
from .reconcile import ENDPOINTS, References
from .settings import Settings

log = logging.getLogger(__name__)

GROUP, VERSION = "berth.dev", "v1alpha1"
FINALIZER = "berth.dev/finalizer"
ERROR_BACKOFF_MAX = 30.0
WAKE_COALESCE = 0.05
MIN_REQUEUE = 0.1  # a plan due "now" is looked at again soon, not in a hot loop
WATCHED_CHILDREN = [
    ("apps", "v1", "deployments"),
    ("", "v1", "pods"),
    ("", "v1", "services"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("gateway.networking.k8s.io", "v1", "httproutes"),
    ("networking.k8s.io", "v1", "ingresses"),
]


@dataclass
class OperatorContext:
    """State shared by the handlers of one operator run."""

    settings: Settings
    server_url: str | None = None  # tests: log in to this API server URL, TLS unchecked
    resync_seconds: float = 300.0
    kube: KubeClient | None = None
    references: References = field(default_factory=References)
    wakers: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    deleting: set[tuple[str, str]] = field(default_factory=set)
    # Held during a reconcile; the delete handler takes it so no reconcile creates a child
    # after the children were listed for deletion.
    locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    scrape_session: aiohttp.ClientSession | None = None
    reconciles: int = 0

    def client(self) -> KubeClient:
        if self.kube is None:
            raise kopf.TemporaryError("not logged in yet", delay=1)
        return self.kube

    def waker(self, namespace: str, name: str) -> asyncio.Event:
        return self.wakers.setdefault((namespace, name), asyncio.Event())

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self.locks.setdefault((namespace, name), asyncio.Lock())

    def wake(self, namespace: str, name: str) -> None:
        self.waker(namespace, name).set()

    def wake_by_label(self, namespace: str, label: str) -> None:
        name = self.references.endpoint_by_label.get((namespace, label), label)
        if (namespace, name) in self.wakers:
            self.wakers[(namespace, name)].set()

    def session(self) -> aiohttp.ClientSession:
        if self.scrape_session is None or self.scrape_session.closed:
            self.scrape_session = aiohttp.ClientSession()
        return self.scrape_session


async def reconcile_endpoint(ctx: OperatorContext, namespace: str, name: str) -> float | None:
    """Read, plan, apply. Returns seconds until the plan wants to look again (None: only on change)."""
    kube = ctx.client()
    raw = await kube.get(ENDPOINTS, namespace, name)
    if raw is None or raw["metadata"].get("deletionTimestamp") or (namespace, name) in ctx.deleting:
        return None
    raw.setdefault("apiVersion", f"{GROUP}/{VERSION}")
    raw.setdefault("kind", "Endpoint")
    ctx.references.endpoint_by_label[(namespace, planner_labels.endpoint_label(name))] = name
    try:
        state = await reconcile.read_endpoint_state(kube, raw)
    except ValidationError as exc:
        # Admission normally refuses this; without the CRD's validation say why in the status.
        failed = {**(raw.get("status") or {}), "phase": "Failed", "failureReason": validation_message(exc)}
        body = reconcile.status_patch(raw.get("status"), failed)
        if body:
            await kube.patch_status(ENDPOINTS, namespace, name, body)
        return None
    ctx.references.endpoint_configs[(namespace, name)] = reconcile.config_names_of(state.endpoint)
    ctx.references.endpoint_models[(namespace, name)] = state.referenced_models
    metrics = await reconcile.fleet_metrics(ctx.session(), ctx.settings, state)
    plan = plan_endpoint(reconcile.planner_input(state, ctx.settings, metrics))
    if (namespace, name) in ctx.deleting:
        return None
    result = await reconcile.apply_plan(kube, plan, state)
    ctx.reconciles += 1
    if result.errors:
        raise kopf.TemporaryError("; ".join(result.errors), delay=1)
    requeue: float | None = plan.requeue_after
    return requeue


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
            if old is not None:
                await old.close()
        return info

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        if ctx.kube is not None:
            await ctx.kube.close()
        if ctx.scrape_session is not None:
            await ctx.scrape_session.close()

    # ------------------------------------------------------------------ Endpoint

    @kopf.on.event(GROUP, VERSION, "endpoints", registry=registry)
    def endpoint_changed(*, type: str, namespace: str | None, name: str, **_: Any) -> None:
        namespace = namespace or "default"
        if type == "DELETED":
            ctx.wakers.pop((namespace, name), None)
            ctx.locks.pop((namespace, name), None)
            ctx.deleting.discard((namespace, name))
            ctx.references.forget_endpoint((namespace, name))
        else:
            ctx.wake(namespace, name)

    @kopf.daemon(GROUP, VERSION, "endpoints", registry=registry, cancellation_timeout=5.0)
    async def endpoint_daemon(
        *, stopped: kopf.DaemonStopped, namespace: str | None, name: str, **_: Any
    ) -> None:
        namespace = namespace or "default"
        waker = ctx.waker(namespace, name)
        backoff = 0.5
        while not stopped:
            waker.clear()
            try:
                async with ctx.lock(namespace, name):
                    requeue = await reconcile_endpoint(ctx, namespace, name)
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "reconcile of Endpoint %s/%s failed, retrying in %.1fs: %s", namespace, name, backoff, exc
                )
                requeue, backoff = backoff, min(backoff * 2, ERROR_BACKOFF_MAX)
            timeout = (
                ctx.resync_seconds if requeue is None else min(max(requeue, MIN_REQUEUE), ctx.resync_seconds)
            )
            await _wait_woken(waker, stopped, timeout)
            if waker.is_set() and not stopped:
                # Our own writes come back as a burst of events: one reconcile answers them all.
                await asyncio.sleep(WAKE_COALESCE)

    @kopf.on.delete(GROUP, VERSION, "endpoints", registry=registry)
    async def endpoint_deleted(*, namespace: str | None, name: str, status: Any, **_: Any) -> None:
        namespace = namespace or "default"
        ctx.deleting.add((namespace, name))
        kube = ctx.client()
        async with ctx.lock(namespace, name):
            if (status or {}).get("phase") != "Deleting":
                try:
                    await kube.patch_status(ENDPOINTS, namespace, name, {"phase": "Deleting"})
                except ApiError as exc:
                    if exc.status != 404:
                        raise
            count = await reconcile.delete_children(kube, namespace, name)
        log.info("Endpoint %s/%s deleted with %d children", namespace, name, count)

    # ------------------------------------------------------------------ children

    def child_changed(*, namespace: str | None, labels: Any, **_: Any) -> None:
        ctx.wake_by_label(namespace or "default", labels[planner_labels.ENDPOINT])

    # Children (drift, deletion by hand, the Deployment controller's status) and pods (readiness,
    # failures) wake the Endpoint that owns them. Kinds absent from the cluster are skipped by kopf.
    owned = {planner_labels.ENDPOINT: kopf.PRESENT}
    for group, version, plural in WATCHED_CHILDREN:
        kopf.on.event(group, version, plural, labels=owned, registry=registry, id=f"{plural}-changed")(
            child_changed
        )

    # ------------------------------------------------------------------ Model / EndpointConfig

    @kopf.on.event(GROUP, VERSION, "models", registry=registry)
    async def model_changed(*, type: str, body: Any, namespace: str | None, name: str, **_: Any) -> None:
        namespace = namespace or "default"
        kube = ctx.client()
        now = datetime.now(UTC)
        if type != "DELETED":
            await reconcile.sync_model_status(kube, _plain(body), now)
        for config in ctx.references.configs_using_model(namespace, name):
            raw = await kube.get(reconcile.CONFIGS, namespace, config)
            if raw is not None:
                await reconcile.sync_config_status(kube, ctx.references, raw, now)
        for endpoint in ctx.references.endpoints_using_model(namespace, name):
            ctx.wake(namespace, endpoint)

    @kopf.on.event(GROUP, VERSION, "endpointconfigs", registry=registry)
    async def config_changed(*, type: str, body: Any, namespace: str | None, name: str, **_: Any) -> None:
        namespace = namespace or "default"
        if type == "DELETED":
            ctx.references.config_models.pop((namespace, name), None)
        else:
            await reconcile.sync_config_status(ctx.client(), ctx.references, _plain(body), datetime.now(UTC))
        for endpoint in ctx.references.endpoints_using_config(namespace, name):
            ctx.wake(namespace, endpoint)

    return registry


def _plain(body: Any) -> dict[str, Any]:
    """kopf's Body as a plain dict with the namespace filled in."""
    raw: dict[str, Any] = dict(body)
    raw["metadata"] = {"namespace": "default", **dict(body.get("metadata", {}))}
    return raw


def operator_settings(settings: kopf.OperatorSettings, *, peering_name: str, standalone: bool) -> None:
    """kopf's own settings: our finalizer, progress in annotations only, few events of its own."""
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

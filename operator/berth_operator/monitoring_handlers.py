"""kopf handlers of MonitoringSchedules: thin. A change of a schedule, of its executions' pods, or
of the Endpoint or EndpointConfig it watches runs one reconcile (reconcile_monitoring.py) from
kopf's indexes. The CronJob carries an ownerReference: the garbage collector removes it with
the schedule, so no finalizer."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import kopf

from .api import GROUP, VERSION, MonitoringSchedule
from .handlers import CONFIGS, ENDPOINTS, PODS, NamespaceObjects, first, plain, pod_view
from .kube import describe_error
from .planner.monitoring import MONITORING_SCHEDULE, monitoring_selector
from .reconcile_monitoring import MonitoringSnapshot, reconcile_monitoring

if TYPE_CHECKING:
    from .handlers import OperatorContext

log = logging.getLogger(__name__)
SCHEDULES = (GROUP, VERSION, MonitoringSchedule.PLURAL)


def register_monitoring_handlers(registry: kopf.OperatorRegistry, ctx: OperatorContext) -> None:
    """The MonitoringSchedule handlers, on the registry of one operator run (see runner.py)."""
    owned = {MONITORING_SCHEDULE: kopf.PRESENT}

    @kopf.index(*SCHEDULES, registry=registry, id="schedules_by_label")
    def schedules_by_label(namespace: str | None, name: str, body: Any, **_: Any) -> Any:
        return {(namespace or "default", monitoring_selector(name)[MONITORING_SCHEDULE]): plain(body)}

    @kopf.index(*SCHEDULES, registry=registry, id="schedules_by_endpoint")
    def schedules_by_endpoint(namespace: str | None, name: str, spec: Any, **_: Any) -> Any:
        return {(namespace or "default", str(spec.get("endpointName"))): name}

    @kopf.index(*ENDPOINTS, registry=registry, id="monitored_endpoints")
    def monitored_endpoints(namespace: str | None, name: str, body: Any, **_: Any) -> Any:
        return {(namespace or "default", name): plain(body)}

    @kopf.index(*PODS, labels=owned, registry=registry, id="monitoring_pods")
    def monitoring_pods(namespace: str | None, labels: Any, body: Any, **_: Any) -> Any:
        return {(namespace or "default", labels[MONITORING_SCHEDULE]): pod_view(body)}

    async def reconcile(namespace: str, label: str, indexes: Any) -> None:
        raw = first(indexes["schedules_by_label"], (namespace, label))
        if raw is None:
            return
        shell = ctx.require_shell()
        endpoint_name = str((raw.get("spec") or {}).get("endpointName") or "")
        found = MonitoringSnapshot(
            raw=raw,
            endpoint=first(indexes["monitored_endpoints"], (namespace, endpoint_name)),
            configs=NamespaceObjects(indexes["configs_by_name"], namespace),
            pods=list(indexes["monitoring_pods"].get((namespace, label)) or ()),
        )
        try:
            await reconcile_monitoring(shell.kube, shell.events, ctx.settings, found, ctx.monitoring_gauges)
        except Exception as exc:  # the next event retries; say why
            log.warning(
                "reconcile of MonitoringSchedule %s/%s failed: %s",
                namespace,
                raw["metadata"]["name"],
                describe_error(exc),
            )
            raise

    async def reconcile_watchers(namespace: str, endpoint_name: str, indexes: Any) -> None:
        for schedule in indexes["schedules_by_endpoint"].get((namespace, endpoint_name)) or ():
            await reconcile(namespace, monitoring_selector(schedule)[MONITORING_SCHEDULE], indexes)

    @kopf.on.event(*SCHEDULES, registry=registry)
    async def schedule_changed(*, type: str, namespace: str | None, name: str, **kwargs: Any) -> None:
        if type == "DELETED":
            ctx.monitoring_gauges.forget(namespace or "default", name)
        else:
            await reconcile(namespace or "default", monitoring_selector(name)[MONITORING_SCHEDULE], kwargs)

    @kopf.on.event(*PODS, labels=owned, registry=registry, id="monitoring_pod_changed")
    async def pod_changed(*, namespace: str | None, labels: Any, **kwargs: Any) -> None:
        await reconcile(namespace or "default", labels[MONITORING_SCHEDULE], kwargs)

    @kopf.on.event(*ENDPOINTS, registry=registry, id="monitored_endpoint_changed")
    async def endpoint_changed(*, namespace: str | None, name: str, **kwargs: Any) -> None:
        await reconcile_watchers(namespace or "default", name, kwargs)

    @kopf.on.event(*CONFIGS, registry=registry, id="monitored_config_changed")
    async def config_changed(*, namespace: str | None, name: str, **kwargs: Any) -> None:
        namespace = namespace or "default"
        for endpoint in kwargs["endpoints_by_config"].get((namespace, name)) or ():
            await reconcile_watchers(namespace, endpoint, kwargs)

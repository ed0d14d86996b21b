"""One reconcile of a MonitoringSchedule: plan from what the watches delivered, apply the CronJob,
write the status, and tell people when drift starts. kopf-free, like reconcile.py.

Level-triggered and idempotent: the CronJob is server-side applied (an unchanged one is a no-op
on the server), the status is patched only where it changed, and the Event is posted on the
Drift condition's transition to True, not on every reconcile.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError

from .api import Endpoint, EndpointConfig, MonitoringSchedule, validation_message
from .apply import status_patch
from .events import EventRecorder
from .kube import KubeClient, berth_kind
from .opmetrics import MonitoringGauges
from .planner.monitoring import plan_monitoring, watched_config_name
from .planner.types import Manifest
from .settings import Settings

log = logging.getLogger(__name__)

SCHEDULES = berth_kind("MonitoringSchedule")


@dataclass(frozen=True)
class MonitoringSnapshot:
    raw: Manifest  # the MonitoringSchedule
    endpoint: Manifest | None
    configs: Mapping[str, Manifest]  # the namespace's EndpointConfigs by name
    pods: list[Manifest]  # its executions' pods


def _parsed(
    cls: type[Endpoint] | type[EndpointConfig], raw: Manifest | None
) -> Endpoint | EndpointConfig | None:
    if raw is None:
        return None
    try:
        return cls.model_validate({"apiVersion": SCHEDULES.api_version, "kind": cls.KIND, **raw})
    except ValidationError as error:
        log.debug("%s %s is invalid: %s", cls.KIND, raw["metadata"].get("name"), validation_message(error))
        return None


async def reconcile_monitoring(
    kube: KubeClient,
    events: EventRecorder,
    settings: Settings,
    snapshot: MonitoringSnapshot,
    gauges: MonitoringGauges | None = None,
) -> int:
    """Returns the number of writes made."""
    raw = {"apiVersion": SCHEDULES.api_version, "kind": "MonitoringSchedule", **snapshot.raw}
    if raw["metadata"].get("deletionTimestamp"):
        if gauges is not None:
            gauges.forget(raw["metadata"].get("namespace") or "default", raw["metadata"]["name"])
        return 0
    try:
        schedule = MonitoringSchedule.model_validate(raw)
    except ValidationError as error:
        # Admission refuses this in a cluster with the CRD; without it the event says why.
        await events.record(raw, "Warning", "InvalidSpec", validation_message(error))
        return 0
    endpoint = _parsed(Endpoint, snapshot.endpoint)
    assert endpoint is None or isinstance(endpoint, Endpoint)
    configs: dict[str, EndpointConfig] = {}
    if endpoint is not None:  # only the config the planner reads is parsed
        name = watched_config_name(endpoint)
        config = _parsed(EndpointConfig, snapshot.configs.get(name))
        if isinstance(config, EndpointConfig):
            configs[name] = config
    plan = plan_monitoring(schedule, endpoint, configs, snapshot.pods, settings, datetime.now(UTC))
    if gauges is not None:
        gauges.record(schedule, plan.status)
    writes = 0
    for obj in plan.objects:
        await kube.apply(obj)
        writes += 1
    desired = plan.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    body = status_patch(raw.get("status"), desired)
    if body:
        meta = raw["metadata"]
        await kube.patch_status(SCHEDULES, meta["namespace"], meta["name"], body)
        writes += 1
    was = {c.type: c.status for c in (schedule.status.conditions if schedule.status else [])}
    drift = next(c for c in plan.status.conditions if c.type == "Drift")
    if drift.status == "True" and was.get("Drift") != "True":
        await events.record(raw, "Warning", "DriftDetected", drift.message)
    return writes

"""One reconcile of a TransformJob: plan from what the watches delivered, create the Job if the
plan wants one, write the status. kopf-free, like reconcile.py.

Level-triggered and idempotent: a reconcile with nothing new writes nothing. When the plan
would conclude that the Job is gone, the Job is looked up first (the watch may lag a create by
a moment), and then the TransformJob itself (the watch may lag our own status write): a
TransformJob is never failed for a Job that exists, nor after it finished, nor run twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from .api import Model, TransformJob, validation_message
from .apply import status_patch
from .events import EventRecorder
from .kube import RESOURCES, ApiError, KubeClient, berth_kind
from .planner.transform import (
    TransformObserved,
    invalid_transform_status,
    job_name,
    plan_transform_job,
)
from .planner.types import Manifest
from .settings import Settings

log = logging.getLogger(__name__)

TRANSFORMJOBS = berth_kind("TransformJob")
JOBS = RESOURCES[("batch/v1", "Job")]


@dataclass(frozen=True)
class TransformSnapshot:
    raw: Manifest  # the TransformJob
    model: Manifest | None  # its Model, if it exists
    job: Manifest | None  # its Job, as the watch last saw it
    pods: list[Manifest]


async def reconcile_transform(
    kube: KubeClient, events: EventRecorder, settings: Settings, snapshot: TransformSnapshot
) -> int:
    """Returns the number of writes made."""
    raw = {"apiVersion": TRANSFORMJOBS.api_version, "kind": "TransformJob", **snapshot.raw}
    meta = raw["metadata"]
    if meta.get("deletionTimestamp"):
        return 0
    now = datetime.now(UTC)
    try:
        transform = TransformJob.model_validate(raw)
    except ValidationError as error:
        # Admission refuses this in a cluster with the CRD; without it, the status says why.
        return await _write_status(kube, raw, invalid_transform_status(raw, validation_message(error), now))
    model = _model(snapshot.model)
    observed = TransformObserved(now, snapshot.job, snapshot.pods)
    plan = plan_transform_job(transform, model, settings, observed)
    status = transform.status
    unfinished = status is not None and bool(status.job_name) and status.phase not in ("Succeeded", "Failed")
    if snapshot.job is None and (plan.job is not None or unfinished):
        # About to create a Job, or to fail for a lost one: the watch may just not show it yet.
        job = await kube.get(JOBS, transform.namespace, job_name(transform.name))
        if job is not None:
            plan = plan_transform_job(transform, model, settings, replace(observed, job=job))
        elif unfinished:
            # The watch may lag our own status write too: the stored TransformJob may already be
            # finished (its Job then went after its TTL). Finished is final, never JobLost.
            fresh = await kube.get(TRANSFORMJOBS, transform.namespace, transform.name)
            phase = ((fresh or {}).get("status") or {}).get("phase")
            if fresh is not None and phase in ("Succeeded", "Failed"):
                raw = {"apiVersion": TRANSFORMJOBS.api_version, "kind": "TransformJob", **fresh}
                transform = TransformJob.model_validate(raw)
                plan = plan_transform_job(transform, model, settings, observed)
    writes = 0
    if plan.job is not None:
        try:
            await kube.create(plan.job)
            writes += 1
        except ApiError as error:
            if error.status != 409:  # created meanwhile by a concurrent reconcile
                raise
    writes += await _write_status(kube, raw, plan.status.to_wire())
    for event in plan.events:
        await events.record(raw, event.type, event.reason, event.message)
    return writes


def _model(raw: Manifest | None) -> Model | None:
    if raw is None:
        return None
    try:
        return Model.model_validate({"apiVersion": TRANSFORMJOBS.api_version, "kind": "Model", **raw})
    except ValidationError as error:
        log.debug("Model %s is invalid: %s", raw["metadata"].get("name"), validation_message(error))
        return None


async def _write_status(kube: KubeClient, raw: Manifest, desired: dict[str, Any]) -> int:
    body = status_patch(raw.get("status"), desired)
    if not body:
        return 0
    meta = raw["metadata"]
    await kube.patch_status(TRANSFORMJOBS, meta["namespace"], meta["name"], body)
    return 1

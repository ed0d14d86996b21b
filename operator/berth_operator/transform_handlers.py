"""kopf handlers of TransformJobs: thin. Any change of a TransformJob, its Job or its pods runs one
reconcile: read them, ask the planner, create the Job if it is missing, write the status.

Level-triggered and idempotent: a reconcile with nothing new writes nothing. No finalizer: the
Job and its pods carry ownerReferences to the TransformJob, so the garbage collector removes
them with it, and the Job's ttlSecondsAfterFinished removes them after the run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import kopf
from pydantic import ValidationError

from .api import Model, TransformJob, validation_message
from .apply import status_patch
from .kube import RESOURCES, ApiError, KubeClient
from .planner.transform import (
    TRANSFORM_JOB,
    TransformObserved,
    job_name,
    plan_transform_job,
    transform_selector,
)
from .settings import Settings

if TYPE_CHECKING:
    from .handlers import OperatorContext

log = logging.getLogger(__name__)

GROUP, VERSION = "berth.dev", "v1alpha1"
TRANSFORMJOBS = RESOURCES[(f"{GROUP}/{VERSION}", "TransformJob")]
MODELS = RESOURCES[(f"{GROUP}/{VERSION}", "Model")]
JOBS = RESOURCES[("batch/v1", "Job")]
PODS = RESOURCES[("v1", "Pod")]


async def reconcile_transform(kube: KubeClient, settings: Settings, namespace: str, name: str) -> None:
    raw = await kube.get(TRANSFORMJOBS, namespace, name)
    if raw is None or raw["metadata"].get("deletionTimestamp"):
        return
    raw.setdefault("apiVersion", f"{GROUP}/{VERSION}")
    raw.setdefault("kind", "TransformJob")
    try:
        transform = TransformJob.model_validate(raw)
    except ValidationError as error:
        # Admission refuses this in a cluster with the CRD; without it, say why in the status.
        failed = {"phase": "Failed", "failureReason": validation_message(error)}
        body = status_patch(raw.get("status"), {**(raw.get("status") or {}), **failed})
        if body:
            await kube.patch_status(TRANSFORMJOBS, namespace, name, body)
        return
    model = await _model(kube, namespace, transform.spec.model_name)
    job = await kube.get(JOBS, namespace, job_name(name))
    pods = await kube.list_objects(PODS, namespace, transform_selector(name)) if job is not None else []
    plan = plan_transform_job(transform, model, settings, TransformObserved(datetime.now(UTC), job, pods))
    if plan.job is not None and job is None:
        try:
            await kube.create(plan.job)
        except ApiError as error:
            if error.status != 409:  # created meanwhile by a concurrent reconcile
                raise
    body = status_patch(raw.get("status"), plan.status.to_wire())
    if body:
        await kube.patch_status(TRANSFORMJOBS, namespace, name, body)
    for event in plan.events:
        await kube.post_event(raw, event.type, event.reason, event.message)


async def _model(kube: KubeClient, namespace: str, name: str) -> Model | None:
    raw = await kube.get(MODELS, namespace, name)
    if raw is None:
        return None
    try:
        return Model.model_validate({"apiVersion": f"{GROUP}/{VERSION}", "kind": "Model", **raw})
    except ValidationError as error:
        log.warning("Model %s/%s is invalid: %s", namespace, name, validation_message(error))
        return None


def _owner_name(meta: Mapping[str, Any], kind: str) -> str | None:
    for owner in meta.get("ownerReferences") or []:
        if owner.get("kind") == kind:
            return str(owner.get("name"))
    return None


def register_transform_handlers(registry: kopf.OperatorRegistry, ctx: OperatorContext) -> None:
    """The TransformJob handlers, on the registry of one operator run (see handlers.build_registry)."""
    # Pods name their TransformJob by label (a name over 63 characters is hashed): remember which.
    by_label: dict[tuple[str, str], str] = {}

    async def reconcile(namespace: str, name: str) -> None:
        by_label[(namespace, transform_selector(name)[TRANSFORM_JOB])] = name
        await reconcile_transform(ctx.client(), ctx.settings, namespace, name)

    @kopf.on.event(GROUP, VERSION, "transformjobs", registry=registry)
    async def transform_changed(*, type: str, namespace: str | None, name: str, **_: Any) -> None:
        namespace = namespace or "default"
        if type == "DELETED":
            by_label.pop((namespace, transform_selector(name)[TRANSFORM_JOB]), None)
            return
        await reconcile(namespace, name)

    @kopf.on.event(GROUP, VERSION, "models", id="transform_model_changed", registry=registry)
    async def model_changed(*, type: str, namespace: str | None, name: str, **_: Any) -> None:
        """A TransformJob waiting for this Model starts when it appears."""
        namespace = namespace or "default"
        if type == "DELETED":
            return
        for item in await ctx.client().list_objects(TRANSFORMJOBS, namespace):
            spec, phase = item.get("spec") or {}, (item.get("status") or {}).get("phase")
            if spec.get("modelName") == name and phase in (None, "Pending"):
                await reconcile(namespace, item["metadata"]["name"])

    @kopf.on.event("batch", "v1", "jobs", labels={TRANSFORM_JOB: kopf.PRESENT}, registry=registry)
    async def job_changed(*, type: str, namespace: str | None, meta: Any, labels: Any, **_: Any) -> None:
        namespace = namespace or "default"
        name = _owner_name(meta, "TransformJob") or by_label.get((namespace, labels[TRANSFORM_JOB]))
        if name is not None and type != "DELETED":
            await reconcile(namespace, name)

    @kopf.on.event("", "v1", "pods", labels={TRANSFORM_JOB: kopf.PRESENT}, registry=registry)
    async def pod_changed(*, namespace: str | None, labels: Any, **_: Any) -> None:
        namespace = namespace or "default"
        label = labels[TRANSFORM_JOB]
        name = by_label.get((namespace, label), label)
        await reconcile(namespace, name)

"""kopf handlers of TransformJobs: thin. Any change of a TransformJob, its Job, its pods or its
Model runs one reconcile (reconcile_transform.py) from kopf's indexes.

No finalizer: the Job and its pods carry ownerReferences to the TransformJob, so the garbage
collector removes them with it, and the Job's ttlSecondsAfterFinished removes them after the run.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import kopf

from .handlers import JOBS, MODELS, PODS, TRANSFORMJOBS, first, plain, pod_view
from .kube import describe_error
from .planner.transform import TRANSFORM_JOB, transform_selector
from .reconcile_transform import TransformSnapshot, reconcile_transform

if TYPE_CHECKING:
    from .handlers import OperatorContext

log = logging.getLogger(__name__)
FINISHED = ("Succeeded", "Failed")


def register_transform_handlers(registry: kopf.OperatorRegistry, ctx: OperatorContext) -> None:
    """The TransformJob handlers, on the registry of one operator run (see handlers.build_registry)."""
    owned = {TRANSFORM_JOB: kopf.PRESENT}

    @kopf.index(*TRANSFORMJOBS, registry=registry, id="transforms_by_label")
    def transforms_by_label(namespace: str | None, name: str, body: Any, **_: Any) -> Any:
        return {(namespace or "default", transform_selector(name)[TRANSFORM_JOB]): plain(body)}

    @kopf.index(*TRANSFORMJOBS, registry=registry, id="waiting_transforms_by_model")
    def waiting_transforms_by_model(
        namespace: str | None, name: str, spec: Any, status: Any, **_: Any
    ) -> Any:
        if (status or {}).get("phase") in FINISHED:
            return None
        return {(namespace or "default", str(spec.get("modelName"))): name}

    def job_index(namespace: str | None, labels: Any, body: Any, **_: Any) -> Any:
        return {(namespace or "default", labels[TRANSFORM_JOB]): plain(body)}

    def pod_index(namespace: str | None, labels: Any, body: Any, **_: Any) -> Any:
        return {(namespace or "default", labels[TRANSFORM_JOB]): pod_view(body)}

    kopf.index(*JOBS, labels=owned, registry=registry, id="jobs_by_transform")(job_index)
    kopf.index(*PODS, labels=owned, registry=registry, id="transform_pods")(pod_index)

    async def reconcile(namespace: str, label: str, indexes: Any) -> None:
        raw = first(indexes["transforms_by_label"], (namespace, label))
        if raw is None:
            return
        shell = ctx.require_shell()
        model_name = str((raw.get("spec") or {}).get("modelName") or "")
        found = TransformSnapshot(
            raw=raw,
            model=first(indexes["models_by_name"], (namespace, model_name)),
            job=first(indexes["jobs_by_transform"], (namespace, label)),
            pods=list(indexes["transform_pods"].get((namespace, label)) or ()),
        )
        try:
            await reconcile_transform(shell.kube, shell.events, ctx.settings, found)
        except Exception as exc:  # kopf retries nothing for event handlers: say why, the next event retries
            log.warning(
                "reconcile of TransformJob %s/%s failed: %s",
                namespace,
                raw["metadata"]["name"],
                describe_error(exc),
            )
            raise

    @kopf.on.event(*TRANSFORMJOBS, registry=registry)
    async def transform_changed(*, type: str, namespace: str | None, name: str, **kwargs: Any) -> None:
        if type != "DELETED":
            await reconcile(namespace or "default", transform_selector(name)[TRANSFORM_JOB], kwargs)

    @kopf.on.event(*MODELS, id="transform_model_changed", registry=registry)
    async def model_changed(*, type: str, namespace: str | None, name: str, **kwargs: Any) -> None:
        """A TransformJob waiting for this Model starts when it appears."""
        namespace = namespace or "default"
        if type == "DELETED":
            return
        for transform in kwargs["waiting_transforms_by_model"].get((namespace, name)) or ():
            await reconcile(namespace, transform_selector(transform)[TRANSFORM_JOB], kwargs)

    @kopf.on.event(*JOBS, labels=owned, registry=registry, id="transform_job_changed")
    @kopf.on.event(*PODS, labels=owned, registry=registry, id="transform_pod_changed")
    async def child_changed(*, namespace: str | None, labels: Any, **kwargs: Any) -> None:
        await reconcile(namespace or "default", labels[TRANSFORM_JOB], kwargs)

"""The plan of a TransformJob: the batch/v1 Job that runs it (job.py) and its status (status.py). Pure.

    plan_transform_job(TransformJob, Model | None, Settings, TransformObserved) -> TransformPlan

A TransformJob runs at most once: a finished one (Succeeded or Failed) keeps its status even after
its Job is gone, and one whose Job disappeared before the outcome was recorded fails with that
reason; neither ever gets a new Job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ...api import Model, TransformJob, TransformJobStatus
from ...settings import Settings
from ..fleet import unknown_instance_type
from ..multimodel import target_model, target_model_problem
from ..types import Event, Manifest
from .job import (
    EXIT_DATA,
    EXIT_USAGE,
    TRANSFORM_JOB,
    job_name,
    transform_args,
    transform_job_manifest,
    transform_labels,
    transform_selector,
)
from .status import (
    Progress,
    invalid_transform_status,
    job_condition,
    pod_problem,
    record_counts,
    transform_status,
)

__all__ = [
    "EXIT_DATA",
    "EXIT_USAGE",
    "TRANSFORM_JOB",
    "TransformObserved",
    "TransformPlan",
    "invalid_transform_status",
    "job_name",
    "plan_transform_job",
    "record_counts",
    "transform_args",
    "transform_job_manifest",
    "transform_labels",
    "transform_selector",
]


@dataclass(frozen=True)
class TransformObserved:
    now: datetime
    job: Manifest | None = None  # the Job named job_name(transform), if it exists
    pods: list[Manifest] = field(default_factory=list)  # pods labelled berth.dev/transform-job=NAME


@dataclass(frozen=True)
class TransformPlan:
    job: Manifest | None  # the Job that should exist (create it when missing); None: none
    status: TransformJobStatus
    events: list[Event] = field(default_factory=list)


def plan_transform_job(
    transform: TransformJob, model: Model | None, settings: Settings, observed: TransformObserved
) -> TransformPlan:
    previous = transform.status or TransformJobStatus()
    if previous.phase in ("Succeeded", "Failed"):
        kept = previous.model_copy(update={"observed_generation": transform.metadata.generation})
        return TransformPlan(None, kept)
    now = observed.now
    name = job_name(transform.name)
    if observed.job is None:
        if previous.job_name:
            return _job_lost(transform, now, previous.job_name)
        return _plan_start(transform, model, settings, now, name)
    job = observed.job
    job_status = job.get("status") or {}
    counts = record_counts(observed.pods, transform.spec.instance_count)
    progress = Progress(name, job_status.get("startTime"), counts.done)
    complete = job_condition(job, "Complete")
    if complete is not None:
        finished = job_status.get("completionTime") or complete.get("lastTransitionTime")
        status = transform_status(
            transform, now, "Succeeded", progress, completion_time=finished, records_total=counts.total
        )
        events = [
            Event(
                "Normal",
                "Succeeded",
                f"transformed {counts.done} records" if counts.done is not None else "done",
            )
        ]
        return TransformPlan(None, status, events)
    failed = job_condition(job, "Failed")
    if failed is not None:
        why = pod_problem(observed.pods, transform.spec.model_name)
        job_reason = f"{failed.get('reason') or 'Failed'}: {failed.get('message') or 'the Job failed'}"
        failure = why or job_reason
        status = transform_status(
            transform,
            now,
            "Failed",
            progress,
            reason=str(failed.get("reason") or "JobFailed"),
            failure=failure,
            completion_time=failed.get("lastTransitionTime"),
        )
        return TransformPlan(None, status, [Event("Warning", "Failed", failure)])
    running = bool(job_status.get("active") or job_status.get("startTime"))
    problem = pod_problem(observed.pods, transform.spec.model_name)
    status = transform_status(transform, now, "Running" if running else "Pending", progress, failure=problem)
    return TransformPlan(None, status)


def _plan_start(
    transform: TransformJob, model: Model | None, settings: Settings, now: datetime, name: str
) -> TransformPlan:
    spec = transform.spec
    if model is None:  # it may yet be created: wait
        failure = f"Model {spec.model_name} not found"
        return TransformPlan(
            None, transform_status(transform, now, "Pending", reason="ModelNotFound", failure=failure)
        )
    instance_type = settings.instance_types.get(spec.instance_type)
    if instance_type is None:
        failure = unknown_instance_type(spec.instance_type, settings)
        return TransformPlan(
            None,
            transform_status(transform, now, "Failed", reason="InvalidSpec", failure=failure),
            [Event("Warning", "Failed", failure)],
        )
    if model.spec.image:
        failure = f"Model {model.name} has its own image; batch transform runs ONNX models in Berth's runtime"
        return TransformPlan(
            None,
            transform_status(transform, now, "Failed", reason="InvalidSpec", failure=failure),
            [Event("Warning", "Failed", failure)],
        )
    mismatch = target_model_problem(model, spec.target_model)
    if mismatch is not None:
        reason, failure = mismatch
        return TransformPlan(
            None,
            transform_status(transform, now, "Failed", reason=reason, failure=failure),
            [Event("Warning", "Failed", failure)],
        )
    if spec.target_model is not None:  # the one model under the MultiModel prefix
        model = target_model(model, spec.target_model)
    job = transform_job_manifest(transform, model, instance_type, settings)
    status = transform_status(transform, now, "Pending", Progress(name))
    return TransformPlan(job, status, [Event("Normal", "JobCreated", f"Job {name} runs the transform")])


def _job_lost(transform: TransformJob, now: datetime, name: str) -> TransformPlan:
    """The Job was deleted (by hand, or by its TTL after a status write was lost) before the outcome
    was recorded: never run the transform again, say what happened."""
    previous = transform.status or TransformJobStatus()
    failure = (
        f"Job {name} is gone before its outcome was recorded (deleted by hand or by its TTL); "
        "a TransformJob never runs twice: create a new TransformJob to run again"
    )
    progress = Progress(name, previous.start_time, previous.records_done)
    status = transform_status(transform, now, "Failed", progress, reason="JobLost", failure=failure)
    return TransformPlan(None, status, [Event("Warning", "Failed", failure)])

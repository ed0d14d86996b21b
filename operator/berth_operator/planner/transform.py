"""The plan of a TransformJob: the batch/v1 Job that runs it, and its status. Pure.

    plan_transform_job(TransformJob, Model | None, Settings, TransformObserved) -> TransformPlan

The Job is Indexed with parallelism = completions = instanceCount: pod i runs `berth transform
--shard-count N` with JOB_COMPLETION_INDEX = i and takes every N-th input object. Its init
container is the serving pods' `berth fetch-model`. Exit code 1 of the transform container
(bad data, a model that does not fit) fails the Job at once; other failures are retried and a
retry resumes where the last attempt stopped. The Job and its pods are owned by the
TransformJob and deleted ttlSecondsAfterFinished after it finished.

Status: the phase follows the Job's conditions; records are the sums of the counts that the
finished pods left in their termination messages (a pod that has not finished has not reported
yet, so `recordsDone` grows pod by pod and `recordsTotal` is known once every pod finished).
A finished TransformJob (Succeeded or Failed) is never run again: its status stays as it is,
even after the Job is gone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from berth_serving.config import MODEL_MOUNT_PATH

from ..api import (
    API_VERSION,
    Condition,
    Model,
    TransformJob,
    TransformJobSpec,
    TransformJobStatus,
    TransformPhase,
)
from ..settings import InstanceType, Settings
from . import labels
from .conditions import condition
from .names import dns_label, label_value
from .podfailures import WAITING_FAILURES
from .types import Event, Manifest
from .workload import (
    INIT_CONTAINER,
    container_security,
    model_init_container,
    model_volume_mounts,
    model_volumes,
    node_placement,
    pod_scaffold,
)

TRANSFORM_JOB = "berth.dev/transform-job"
TRANSFORM_CONTAINER = "transform"
APP_NAME = "berth-transform"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
BACKOFF_LIMIT = 3
EXIT_DATA = 1  # `berth transform`: the data or the model is at fault; retrying cannot help
EXIT_USAGE = 2


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


def job_name(transform_name: str) -> str:
    return dns_label(transform_name)


def transform_selector(transform_name: str) -> dict[str, str]:
    return {TRANSFORM_JOB: label_value(transform_name)}


def transform_labels(transform: TransformJob) -> dict[str, str]:
    return {
        labels.NAME: APP_NAME,
        labels.INSTANCE: label_value(transform.name),
        labels.COMPONENT: "transform",
        labels.PART_OF: labels.PART_OF_VALUE,
        labels.MANAGED_BY: labels.MANAGED_BY_VALUE,
        **transform_selector(transform.name),
        labels.MODEL: label_value(transform.spec.model_name),
    }


# --------------------------------------------------------------------------- the Job


def transform_args(spec: TransformJobSpec, model: Model, gpu: bool) -> list[str]:
    runtime = model.spec.runtime
    args = [
        "transform",
        "--model",
        MODEL_MOUNT_PATH,
        "--input",
        spec.input.uri,
        "--output",
        spec.output.uri,
        "--content-type",
        spec.input.content_type,
        "--split-type",
        spec.input.split_type,
        "--compression",
        spec.input.compression,
        "--accept",
        spec.output.accept,
        "--assemble-with",
        spec.output.assemble_with,
        "--batch-strategy",
        spec.batch_strategy,
        "--max-payload-bytes",
        str(spec.max_payload_bytes),
        "--max-concurrent-transforms",
        str(spec.max_concurrent_transforms),
        "--join-source",
        spec.join_source,
        "--max-errors",
        str(spec.max_errors),
        "--shard-count",
        str(spec.instance_count),
        "--intra-op-threads",
        str(runtime.intra_op_threads),
        "--graph-optimization-level",
        runtime.graph_optimization_level,
        "--no-progress",
    ]
    if gpu:
        args += ["--providers", "cuda"]
    return args


def _resources(instance_type: InstanceType) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for part in ("requests", "limits"):
        quantities = getattr(instance_type.resources, part)
        if quantities:
            result[part] = {key: quantities[key] for key in sorted(quantities)}
    return result


def _transform_container(
    transform: TransformJob, model: Model, instance_type: InstanceType, settings: Settings
) -> dict[str, Any]:
    gpu = instance_type.accelerator == "nvidia"
    container: dict[str, Any] = {
        "name": TRANSFORM_CONTAINER,
        "image": settings.images.gpu if gpu else settings.images.cpu,
        "imagePullPolicy": settings.images.pull_policy,
        "command": ["berth"],
        "args": transform_args(transform.spec, model, gpu),
    }
    if model.spec.env:
        container["env"] = [e.to_wire() for e in model.spec.env]
    if model.spec.credentials_secret_ref is not None:  # the data is read with the model's credentials
        container["envFrom"] = [{"secretRef": {"name": model.spec.credentials_secret_ref.name}}]
    container.update(
        {
            "resources": _resources(instance_type),
            # `berth transform` writes its counts or its error there; the log tail stands in otherwise.
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": container_security(),
            "volumeMounts": model_volume_mounts(),
        }
    )
    return container


def _pod_spec(
    transform: TransformJob, model: Model, instance_type: InstanceType, settings: Settings
) -> Manifest:
    """The serving pods' scaffolding (planner/workload.py) around the transform container."""
    spec: Manifest = {"restartPolicy": "Never", **pod_scaffold(model.spec)}
    spec.update(
        {
            "initContainers": [model_init_container(model.spec, settings)],
            "containers": [_transform_container(transform, model, instance_type, settings)],
            "volumes": model_volumes(model.spec),
        }
    )
    spec.update(node_placement(instance_type))
    return spec


def owner_references(transform: TransformJob) -> list[dict[str, Any]]:
    if not transform.metadata.uid:
        return []
    return [
        {
            "apiVersion": API_VERSION,
            "kind": "TransformJob",
            "name": transform.name,
            "uid": transform.metadata.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def transform_job_manifest(
    transform: TransformJob, model: Model, instance_type: InstanceType, settings: Settings
) -> Manifest:
    spec = transform.spec
    meta: Manifest = {
        "name": job_name(transform.name),
        "namespace": transform.namespace,
        "labels": transform_labels(transform),
    }
    owners = owner_references(transform)
    if owners:
        meta["ownerReferences"] = owners
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "completionMode": "Indexed",
            "completions": spec.instance_count,
            "parallelism": spec.instance_count,
            "backoffLimit": BACKOFF_LIMIT,
            "podFailurePolicy": {
                "rules": [
                    {  # bad data or options: every retry would fail the same way
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": TRANSFORM_CONTAINER,
                            "operator": "In",
                            "values": [EXIT_DATA, EXIT_USAGE],
                        },
                    },
                    {  # a node drained or a pod preempted: not the job's fault
                        "action": "Ignore",
                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                    },
                ]
            },
            "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished,
            "template": {
                "metadata": {"labels": transform_labels(transform)},
                "spec": _pod_spec(transform, model, instance_type, settings),
            },
        },
    }


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class Counts:
    done: int | None = None
    total: int | None = None


def _terminated(pod: Mapping[str, Any], container: str, init: bool = False) -> Mapping[str, Any] | None:
    key = "initContainerStatuses" if init else "containerStatuses"
    for status in (pod.get("status") or {}).get(key) or []:
        if status.get("name") == container:
            state = status.get("state") or {}
            terminated = state.get("terminated") or (status.get("lastState") or {}).get("terminated")
            return terminated or None
    return None


def _pod_index(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return str(
        (meta.get("annotations") or {}).get(COMPLETION_INDEX)
        or (meta.get("labels") or {}).get(COMPLETION_INDEX)
        or meta.get("name")
    )


def record_counts(pods: Iterable[Mapping[str, Any]], completions: int) -> Counts:
    """Sums of the counts in the termination messages of the pods that finished (one per index)."""
    reports: dict[str, tuple[int, int]] = {}
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Succeeded":
            continue
        terminated = _terminated(pod, TRANSFORM_CONTAINER)
        if terminated is None or terminated.get("exitCode") != 0:
            continue
        try:
            report = json.loads(str(terminated.get("message") or ""))
            reports[_pod_index(pod)] = (int(report["records"]), int(report["failed"]))
        except (ValueError, KeyError, TypeError):
            continue  # a message from another version, or cut: the count stays unknown
    if not reports:
        return Counts()
    done = sum(records for records, _ in reports.values())
    total = done + sum(failed for _, failed in reports.values()) if len(reports) >= completions else None
    return Counts(done, total)


def _message(terminated: Mapping[str, Any]) -> str:
    text = str(terminated.get("message") or "").strip()
    if text:
        return text.splitlines()[-1][:1000]
    return f"{terminated.get('reason') or 'Error'} (exit code {terminated.get('exitCode')})"


def pod_problem(pods: Iterable[Mapping[str, Any]], model_name: str) -> str | None:
    """The first thing a person must know about the pods: a model download that failed, an image
    that cannot be pulled, a transform that stopped with an error, or pods that cannot be scheduled."""
    found: list[str] = []
    for pod in pods:
        status = pod.get("status") or {}
        fetch = _terminated(pod, INIT_CONTAINER, init=True)
        if fetch is not None and fetch.get("exitCode") not in (None, 0):
            found.append(f"model {model_name}: download failed: {_message(fetch)}")
            continue
        failed = _terminated(pod, TRANSFORM_CONTAINER)
        if failed is not None and failed.get("exitCode") not in (None, 0):
            found.append(_message(failed))
            continue
        for container in [
            *(status.get("initContainerStatuses") or []),
            *(status.get("containerStatuses") or []),
        ]:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in WAITING_FAILURES:
                detail = str(waiting.get("message") or "").strip()
                found.append(
                    f"{container.get('name')}: {waiting['reason']}" + (f": {detail}" if detail else "")
                )
                break
        else:
            for cond in status.get("conditions") or []:
                if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
                    found.append(f"unschedulable: {str(cond.get('message') or '').strip()}".rstrip(": "))
    return sorted(found)[0] if found else None


def _job_condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def _conditions(
    previous: list[Condition], phase: str, reason: str, message: str, now: datetime, generation: int | None
) -> list[Condition]:
    return [
        condition(
            previous,
            "Complete",
            phase == "Succeeded",
            "Succeeded" if phase == "Succeeded" else phase,
            "",
            now,
            generation,
        ),
        condition(
            previous,
            "Failed",
            phase == "Failed",
            reason if phase == "Failed" else "NotFailed",
            message,
            now,
            generation,
        ),
    ]


@dataclass(frozen=True)
class _Progress:
    job_name: str
    start_time: str | None = None
    records_done: int | None = None


def _status(
    transform: TransformJob,
    now: datetime,
    phase: TransformPhase,
    progress: _Progress | None = None,
    *,
    reason: str = "",
    failure: str | None = None,
    completion_time: str | None = None,
    records_total: int | None = None,
) -> TransformJobStatus:
    previous = transform.status or TransformJobStatus()
    generation = transform.metadata.generation
    return TransformJobStatus(
        observed_generation=generation,
        phase=phase,
        job_name=progress.job_name if progress else None,
        start_time=progress.start_time if progress else None,
        records_done=progress.records_done if progress else None,
        records_total=records_total,
        completion_time=completion_time,
        failure_reason=failure,
        conditions=_conditions(previous.conditions, phase, reason or phase, failure or "", now, generation),
    )


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
        return _plan_start(transform, model, settings, now, name)
    job = observed.job
    job_status = job.get("status") or {}
    counts = record_counts(observed.pods, transform.spec.instance_count)
    progress = _Progress(name, job_status.get("startTime"), counts.done)
    complete = _job_condition(job, "Complete")
    if complete is not None:
        finished = job_status.get("completionTime") or complete.get("lastTransitionTime")
        status = _status(
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
    failed = _job_condition(job, "Failed")
    if failed is not None:
        why = pod_problem(observed.pods, transform.spec.model_name)
        job_reason = f"{failed.get('reason') or 'Failed'}: {failed.get('message') or 'the Job failed'}"
        failure = why or job_reason
        status = _status(
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
    status = _status(transform, now, "Running" if running else "Pending", progress, failure=problem)
    return TransformPlan(None, status)


def _plan_start(
    transform: TransformJob, model: Model | None, settings: Settings, now: datetime, name: str
) -> TransformPlan:
    spec = transform.spec
    if model is None:  # it may yet be created: wait
        failure = f"Model {spec.model_name} not found"
        return TransformPlan(
            None, _status(transform, now, "Pending", reason="ModelNotFound", failure=failure)
        )
    instance_type = settings.instance_types.get(spec.instance_type)
    if instance_type is None:
        failure = f'unknown instanceType "{spec.instance_type}"'
        return TransformPlan(
            None,
            _status(transform, now, "Failed", reason="InvalidSpec", failure=failure),
            [Event("Warning", "Failed", failure)],
        )
    if model.spec.image:
        failure = f"Model {model.name} has its own image; batch transform runs ONNX models in Berth's runtime"
        return TransformPlan(
            None,
            _status(transform, now, "Failed", reason="InvalidSpec", failure=failure),
            [Event("Warning", "Failed", failure)],
        )
    job = transform_job_manifest(transform, model, instance_type, settings)
    status = _status(transform, now, "Pending", _Progress(name))
    return TransformPlan(job, status, [Event("Normal", "JobCreated", f"Job {name} runs the transform")])

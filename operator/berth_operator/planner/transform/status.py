"""The status of a TransformJob: its phase from the Job's conditions, record counts from the
finished pods' termination messages, and the first problem a person must know about.

A pod that has not finished has not reported yet, so `recordsDone` grows pod by pod and
`recordsTotal` is known once every pod finished.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ...api import Condition, TransformJob, TransformJobStatus, TransformPhase
from ..conditions import condition, parsed_conditions
from ..podfailures import WAITING_FAILURES
from ..pods import TRANSFORM_CONTAINER, is_init_container, stage_of_init_container

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


@dataclass(frozen=True)
class Counts:
    done: int | None = None
    total: int | None = None


def _fetch_failure(pod: Mapping[str, Any]) -> str | None:
    """Why a storage-initializer failed (naming the pipeline stage it fetches), else None."""
    for status in (pod.get("status") or {}).get("initContainerStatuses") or []:
        name = str(status.get("name") or "")
        if not is_init_container(name):
            continue
        terminated = _terminated(pod, name, init=True)
        if terminated is not None and terminated.get("exitCode") not in (None, 0):
            stage = stage_of_init_container(name)
            return (f"stage {stage}: " if stage else "") + _message(terminated)
    return None


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
        fetch = _fetch_failure(pod)
        if fetch is not None:
            found.append(f"model {model_name}: download failed: {fetch}")
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


def job_condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
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
class Progress:
    job_name: str
    start_time: str | None = None
    records_done: int | None = None


def transform_status(
    transform: TransformJob,
    now: datetime,
    phase: TransformPhase,
    progress: Progress | None = None,
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


def invalid_transform_status(raw: Mapping[str, Any], message: str, now: datetime) -> dict[str, Any]:
    """The status of a TransformJob whose spec does not parse (admission refuses it on a cluster
    with the CRD; without, say why): Failed, Complete False and Failed True with reason InvalidSpec."""
    stored = dict(raw.get("status") or {})
    generation = (raw.get("metadata") or {}).get("generation")
    previous = parsed_conditions(stored.get("conditions"))
    conditions = _conditions(previous, "Failed", "InvalidSpec", message, now, generation)
    return {
        **stored,
        "observedGeneration": generation,
        "phase": "Failed",
        "failureReason": message,
        "conditions": [c.to_wire() for c in conditions],
    }

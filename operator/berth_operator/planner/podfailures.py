"""Problems worth telling a person: image pulls, crash loops, model downloads, scheduling,
and Deployments that cannot make pods at all (quota, admission)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import labels
from .types import Manifest
from .workload import INIT_CONTAINER

WAITING_FAILURES = (
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
)


@dataclass(frozen=True, order=True)
class PodFailure:
    config: str  # label value of berth.dev/endpoint-config
    variant: str  # label value of berth.dev/variant
    message: str
    fatal: bool  # the fleet cannot serve without a change (unlike Unschedulable, which may heal)


def _terminated_message(terminated: Mapping[str, Any]) -> str:
    text = str(terminated.get("message") or "").strip()
    if text:
        return text.splitlines()[-1] if len(text) > 500 else text
    reason = terminated.get("reason") or "Error"
    return f"{reason} (exit code {terminated.get('exitCode')})"


def _init_failure(statuses: Iterable[Mapping[str, Any]]) -> str | None:
    for status in statuses:
        if status.get("name") != INIT_CONTAINER:
            continue
        state = status.get("state") or {}
        if (state.get("terminated") or {}).get("exitCode") == 0:
            return None  # downloaded
        for terminated in (
            (state.get("terminated") or {}),
            ((status.get("lastState") or {}).get("terminated") or {}),
        ):
            if terminated and terminated.get("exitCode", 0) != 0:
                return _terminated_message(terminated)
    return None


def _waiting_failure(statuses: Iterable[Mapping[str, Any]]) -> str | None:
    for status in statuses:
        waiting = (status.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason not in WAITING_FAILURES:
            continue
        detail = str(waiting.get("message") or "").strip()
        last = (status.get("lastState") or {}).get("terminated")
        if reason == "CrashLoopBackOff" and last:
            detail = _terminated_message(last)
        return f"{status.get('name')}: {reason}" + (f": {detail}" if detail else "")
    return None


def pod_failures(
    pods: Iterable[Manifest], endpoint_label: str, models: Mapping[tuple[str, str], str]
) -> list[PodFailure]:
    """Failures of this endpoint's pods, one per distinct message, sorted.

    models maps (config label, variant label) to the model name, for the variants planned now;
    pods of other variants (old fleets on their way out) are not reported.
    """
    found: set[PodFailure] = set()
    for pod in pods:
        pod_labels = pod.get("metadata", {}).get("labels", {})
        if pod_labels.get(labels.ENDPOINT) != endpoint_label:
            continue
        key = (pod_labels.get(labels.ENDPOINT_CONFIG, ""), pod_labels.get(labels.VARIANT, ""))
        if key not in models:
            continue
        model, variant = models[key], key[1]
        status = pod.get("status") or {}
        download = _init_failure(status.get("initContainerStatuses") or [])
        if download is not None:
            found.add(PodFailure(*key, f"model {model}: download failed: {download}", True))
            continue
        waiting = _waiting_failure(
            [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
        )
        if waiting is not None:
            found.add(PodFailure(*key, f"variant {variant} (model {model}): {waiting}", True))
            continue
        for condition in status.get("conditions") or []:
            if (
                condition.get("type") == "PodScheduled"
                and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"
            ):
                message = str(condition.get("message") or "").strip()
                found.add(
                    PodFailure(*key, f"variant {variant}: unschedulable: {message}".rstrip(": "), False)
                )
    return sorted(found)


def deployment_failures(deployments: Iterable[tuple[str, str, Manifest]]) -> list[PodFailure]:
    """(config label, variant label, observed Deployment) -> failures its conditions report.

    ReplicaFailure (a quota or an admission webhook refusing pods) leaves no pod to look at;
    ProgressDeadlineExceeded says the rollout of the pods themselves stalled. Both may heal.
    """
    found: list[PodFailure] = []
    for config, variant, deployment in deployments:
        for cond in (deployment.get("status") or {}).get("conditions") or []:
            failing = (cond.get("type") == "ReplicaFailure" and cond.get("status") == "True") or (
                cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded"
            )
            if failing:
                message = str(cond.get("message") or cond.get("reason") or "").strip()
                found.append(PodFailure(config, variant, f"variant {variant}: {message}", False))
    return sorted(set(found))

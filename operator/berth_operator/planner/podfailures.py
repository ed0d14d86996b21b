"""Problems worth telling a person: image pulls, crash loops, model downloads, scheduling,
and Deployments that cannot make pods at all (quota, admission)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import labels
from .clock import seconds_since
from .pods import is_init_container, stage_of_init_container
from .types import Manifest

# A pod scheduled this long ago whose containers never started is stuck (a volume that cannot be
# mounted or attached, a sandbox that cannot be made); the init container's download is not.
STUCK_STARTING_SECONDS = 180.0
STARTING_REASONS = ("ContainerCreating", "PodInitializing")

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
    """Why a storage-initializer failed (naming the pipeline stage it fetches), else None."""
    for status in statuses:
        name = str(status.get("name") or "")
        if not is_init_container(name):
            continue
        state = status.get("state") or {}
        if (state.get("terminated") or {}).get("exitCode") == 0:
            continue  # downloaded
        for terminated in (
            (state.get("terminated") or {}),
            ((status.get("lastState") or {}).get("terminated") or {}),
        ):
            if terminated and terminated.get("exitCode", 0) != 0:
                stage = stage_of_init_container(name)
                return (f"stage {stage}: " if stage else "") + _terminated_message(terminated)
    return None


def waiting_failure(statuses: Iterable[Mapping[str, Any]]) -> str | None:
    """The first container waiting for a reason that will not heal by itself, as one line."""
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


def _scheduled_at(pod: Mapping[str, Any]) -> str | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "True":
            return cond.get("lastTransitionTime") or (pod.get("metadata") or {}).get("creationTimestamp")
    return None


def stuck_starting(pod: Mapping[str, Any], now: datetime) -> float | None:
    """Seconds a scheduled pod has waited with no container started, past the deadline; else None."""
    status = pod.get("status") or {}
    if status.get("phase") != "Pending" or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None
    containers = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    waiting = [((c.get("state") or {}).get("waiting") or {}).get("reason") for c in containers]
    if not containers or not all(reason in STARTING_REASONS for reason in waiting):
        return None
    scheduled = _scheduled_at(pod)
    if scheduled is None:
        return None
    seconds = seconds_since(scheduled, now)
    return seconds if seconds >= STUCK_STARTING_SECONDS else None


def pods_stuck_starting(pods: Iterable[Manifest], now: datetime) -> list[str]:
    """Names of the pods whose Warning events the planner wants to read (they say why)."""
    return sorted(
        pod["metadata"]["name"]
        for pod in pods
        if pod.get("metadata") and stuck_starting(pod, now) is not None
    )


def _stuck_message(pod: Mapping[str, Any], seconds: float, events: Iterable[tuple[str, str]]) -> str:
    reasons = {
        ((c.get("state") or {}).get("waiting") or {}).get("reason")
        for c in [*((pod.get("status") or {}).get("containerStatuses") or [])]
    }
    state = "ContainerCreating" if "ContainerCreating" in reasons else "PodInitializing"
    text = f"pod {pod['metadata']['name']} has not started a container for {int(seconds // 60)}m ({state})"
    said = [f"{reason}: {message}".strip() for reason, message in events]
    return text + (": " + "; ".join(dict.fromkeys(said)) if said else "")


def pod_failures(
    pods: Iterable[Manifest],
    endpoint_label: str,
    models: Mapping[tuple[str, str], str],
    now: datetime | None = None,
    events: Mapping[str, Iterable[tuple[str, str]]] | None = None,
) -> list[PodFailure]:
    """Failures of this endpoint's pods, one per distinct message, sorted.

    models maps (config label, variant label) to the model name, for the variants planned now;
    pods of other variants (old fleets on their way out) are not reported. With `now`, pods stuck
    before any container started are reported too, with the Warning events read for them.
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
        waiting = waiting_failure(
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
        stuck = stuck_starting(pod, now) if now is not None else None
        if stuck is not None:
            said = (events or {}).get(pod["metadata"]["name"], ())
            message = f"variant {variant} (model {model}): {_stuck_message(pod, stuck, said)}"
            found.add(PodFailure(*key, message, False))
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

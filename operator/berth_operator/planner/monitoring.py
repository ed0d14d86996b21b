"""A MonitoringSchedule's CronJob and its status: pure, like the rest of the planner.

Each execution is a pod running `berth monitor run` over the Endpoint's captures of the last
window.hours; it reports what it found in its termination message (one JSON line), so the
operator fills the status without reading object storage itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..api import (
    Condition,
    Endpoint,
    EndpointConfig,
    MonitoringExecution,
    MonitoringSchedule,
    MonitoringScheduleStatus,
)
from ..settings import Settings
from . import labels
from .conditions import condition, parsed_conditions
from .meta import object_meta
from .names import dns_label, label_value
from .pods import container_security, pod_security
from .types import Manifest

MONITORING_SCHEDULE = "berth.dev/monitoring-schedule"
MONITOR_CONTAINER = "monitor"
APP_NAME = "berth-monitor"
SPOOL_DIR = "/var/berth/spool"  # s3:// captures are downloaded here before DuckDB reads them
SPOOL_SIZE = "10Gi"
HISTORY = 3  # finished Jobs kept per outcome: enough to read the last execution's pod


@dataclass(frozen=True)
class MonitoringPlan:
    objects: list[Manifest] = field(default_factory=list)
    status: MonitoringScheduleStatus = field(default_factory=MonitoringScheduleStatus)


def cron_job_name(schedule_name: str) -> str:
    return dns_label(f"{schedule_name}-monitor")


def monitoring_selector(schedule_name: str) -> dict[str, str]:
    return {MONITORING_SCHEDULE: label_value(schedule_name)}


def _labels(schedule: MonitoringSchedule) -> dict[str, str]:
    return {
        labels.NAME: APP_NAME,
        labels.INSTANCE: label_value(schedule.name),
        labels.COMPONENT: "monitoring",
        labels.PART_OF: labels.PART_OF_VALUE,
        labels.MANAGED_BY: labels.MANAGED_BY_VALUE,
        **monitoring_selector(schedule.name),
    }


def watched_config_name(endpoint: Endpoint) -> str:
    """The config whose captures are read: the one serving now, else the one asked for."""
    status = endpoint.status
    return (status.endpoint_config_name if status is not None else None) or endpoint.spec.endpoint_config_name


def captures_uri(
    schedule: MonitoringSchedule, endpoint: Endpoint | None, configs: Mapping[str, EndpointConfig]
) -> str:
    """DEST/ENDPOINT/ of the config the Endpoint serves; ValueError says what is missing."""
    name = schedule.spec.endpoint_name
    if endpoint is None:
        raise ValueError(f"Endpoint {name} not found")
    config = configs.get(watched_config_name(endpoint))
    if config is None:
        raise ValueError(f"Endpoint {name}: its EndpointConfig not found")
    capture = config.spec.data_capture
    if capture is None or capture.sampling_percentage <= 0:
        raise ValueError(f"EndpointConfig {config.name} of Endpoint {name} captures nothing: set dataCapture")
    return capture.destination_uri.rstrip("/") + f"/{endpoint.name}/"


def monitor_args(schedule: MonitoringSchedule, captures: str) -> list[str]:
    spec = schedule.spec
    return [
        "monitor",
        "run",
        "--captures",
        captures,
        "--statistics",
        spec.baseline.statistics_uri,
        "--constraints",
        spec.baseline.constraints_uri,
        "--output",
        spec.output_uri,
        "--window-hours",
        str(spec.window.hours),
    ]


def cron_job(schedule: MonitoringSchedule, captures: str, settings: Settings) -> Manifest:
    container: Manifest = {
        "name": MONITOR_CONTAINER,
        "image": settings.images.cpu,
        "imagePullPolicy": settings.images.pull_policy,
        "command": ["berth"],
        "args": monitor_args(schedule, captures),
        "env": [{"name": "TMPDIR", "value": SPOOL_DIR}],
        # `berth monitor run` writes its summary there; the log tail stands in otherwise.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {
            "requests": {"cpu": "1", "memory": "1Gi", "ephemeral-storage": SPOOL_SIZE},
            "limits": {"memory": "2Gi", "ephemeral-storage": SPOOL_SIZE},
        },
        "securityContext": container_security(),
        "volumeMounts": [{"name": "spool", "mountPath": SPOOL_DIR}],
    }
    if schedule.spec.credentials_secret_ref is not None:
        container["envFrom"] = [{"secretRef": {"name": schedule.spec.credentials_secret_ref.name}}]
    pod: Manifest = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security(),
        "containers": [container],
        "volumes": [{"name": "spool", "emptyDir": {"sizeLimit": SPOOL_SIZE}}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": object_meta(schedule, cron_job_name(schedule.name), _labels(schedule)),
        "spec": {
            "schedule": schedule.spec.schedule,
            "timeZone": "Etc/UTC",
            "concurrencyPolicy": "Forbid",  # a slow run is not overtaken by the next
            "suspend": schedule.spec.suspend,
            "successfulJobsHistoryLimit": HISTORY,
            "failedJobsHistoryLimit": HISTORY,
            "jobTemplate": {
                "metadata": {"labels": _labels(schedule)},
                "spec": {
                    "backoffLimit": 1,
                    "template": {"metadata": {"labels": _labels(schedule)}, "spec": pod},
                },
            },
        },
    }


# ---------------------------------------------------------------- status


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == MONITOR_CONTAINER:
            return (status.get("state") or {}).get("terminated") or None
    return None


def _job_of(pod: Mapping[str, Any]) -> str | None:
    return ((pod.get("metadata") or {}).get("labels") or {}).get("job-name")


def execution_of(pod: Mapping[str, Any]) -> MonitoringExecution | None:
    """What a finished execution reported, or None (not finished, failed, or another version's message)."""
    terminated = _terminated(pod)
    if terminated is None or terminated.get("exitCode") != 0:
        return None
    try:
        report = json.loads(str(terminated.get("message") or ""))
        return MonitoringExecution(
            time=str(report["time"]),
            records_read=int(report["recordsRead"]),
            violations=int(report["violations"]),
            violated_features=[str(f) for f in report.get("violatedFeatures") or []][:20],
            report_uri=str(report["reportUri"]),
            job_name=_job_of(pod),
        )
    except (ValueError, KeyError, TypeError):
        return None


def _finished_at(pod: Mapping[str, Any]) -> str:
    terminated = _terminated(pod) or {}
    return str(terminated.get("finishedAt") or "")


def _failure_of(pod: Mapping[str, Any]) -> str | None:
    terminated = _terminated(pod)
    if terminated is None or terminated.get("exitCode") in (None, 0):
        return None
    text = str(terminated.get("message") or "").strip()
    last = text.splitlines()[-1][:1000] if text else f"exit code {terminated.get('exitCode')}"
    return f"execution {_job_of(pod) or '?'} failed: {last}"


def drift_message(execution: MonitoringExecution) -> str:
    features = ", ".join(execution.violated_features) or "the dataset"
    return f"{execution.violations} violation(s) in the window ending {execution.time}: {features}"


def plan_monitoring(
    schedule: MonitoringSchedule,
    endpoint: Endpoint | None,
    configs: Mapping[str, EndpointConfig],
    pods: Iterable[Mapping[str, Any]],
    settings: Settings,
    now: datetime,
) -> MonitoringPlan:
    """The CronJob to apply (none while the Endpoint's captures cannot be found) and the status."""
    stored = schedule.status or MonitoringScheduleStatus()
    previous: Sequence[Condition] = parsed_conditions(c.model_dump(by_alias=True) for c in stored.conditions)
    generation = schedule.metadata.generation
    by_time = sorted(pods, key=_finished_at)
    executions = [(p, e) for p in by_time if (e := execution_of(p)) is not None]
    last = executions[-1][1] if executions else stored.last_execution
    newest_finish = _finished_at(executions[-1][0]) if executions else ""
    failures = [f for p in by_time if _finished_at(p) > newest_finish and (f := _failure_of(p)) is not None]
    objects: list[Manifest] = []
    try:
        captures = captures_uri(schedule, endpoint, configs)
    except ValueError as problem:
        ready = condition(previous, "Ready", False, "CapturesNotFound", str(problem), now, generation)
        failure: str | None = str(problem)
    else:
        objects.append(cron_job(schedule, captures, settings))
        failure = failures[-1] if failures else None
        if failure is not None:
            ready = condition(previous, "Ready", False, "ExecutionFailed", failure, now, generation)
        else:
            ready = condition(
                previous,
                "Ready",
                True,
                "Scheduled",
                f"CronJob {cron_job_name(schedule.name)}",
                now,
                generation,
            )
    if last is None:
        drift = condition(
            previous, "Drift", False, "NoExecution", "no execution has finished yet", now, generation
        )
    elif (last.violations or 0) > 0:
        drift = condition(
            previous, "Drift", True, "ConstraintsViolated", drift_message(last), now, generation
        )
    else:
        message = f"no violation in the window ending {last.time} ({last.records_read} records)"
        drift = condition(previous, "Drift", False, "NoViolations", message, now, generation)
    status = MonitoringScheduleStatus(
        observed_generation=generation,
        cron_job_name=cron_job_name(schedule.name) if objects else None,
        last_execution=last,
        failure_reason=failure,
        conditions=[ready, drift],
    )
    return MonitoringPlan(objects, status)

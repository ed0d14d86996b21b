"""MonitoringSchedules in the planner: a CronJob the API server admits whose pod runs `berth
monitor run` over the Endpoint's captures, and the status (lastExecution, Ready, Drift) filled
from the finished executions' termination messages."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from berth_operator.api import EndpointConfig, MonitoringSchedule
from berth_operator.planner.monitoring import MONITOR_CONTAINER, cron_job_name, plan_monitoring
from berth_operator.settings import Settings
from berth_serving.monitor.cli import monitor

from .support import NAMESPACE, endpoint, variant
from .validation import assert_admitted

NOW = datetime(2026, 12, 1, 10, 5, tzinfo=UTC)
SETTINGS = Settings.model_validate({})


def schedule(**spec: Any) -> MonitoringSchedule:
    return MonitoringSchedule.model_validate(
        {
            "kind": "MonitoringSchedule",
            "metadata": {"name": "fraud-drift", "namespace": NAMESPACE, "generation": 2, "uid": "uid-m"},
            "spec": {
                "endpointName": "fraud",
                "schedule": "@hourly",
                "baseline": {
                    "statisticsUri": "s3://bucket/baseline/statistics.json",
                    "constraintsUri": "s3://bucket/baseline/constraints.json",
                },
                "window": {"hours": 2},
                "outputUri": "s3://bucket/monitoring/fraud/",
                "credentialsSecretRef": {"name": "s3-creds"},
                **spec,
            },
        }
    )


def capturing_config(capture: dict[str, Any] | None) -> EndpointConfig:
    spec: dict[str, Any] = {"productionVariants": [variant("blue", "m1")]}
    if capture is not None:
        spec["dataCapture"] = capture
    return EndpointConfig.model_validate(
        {"kind": "EndpointConfig", "metadata": {"name": "cfg1", "namespace": NAMESPACE}, "spec": spec}
    )


CONFIG = capturing_config({"samplingPercentage": 10, "destinationUri": "s3://bucket/capture"})


def finished(job: str, at: str, exit_code: int, message: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{job}-x", "labels": {"job-name": job}},
        "status": {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": MONITOR_CONTAINER,
                    "state": {"terminated": {"exitCode": exit_code, "finishedAt": at, "message": message}},
                }
            ],
        },
    }


def report(violations: int, features: list[str]) -> str:
    return json.dumps(
        {
            "time": "2026-12-01T10:00:00Z",
            "recordsRead": 5000,
            "violations": violations,
            "violatedFeatures": features,
            "reportUri": "s3://bucket/monitoring/fraud/2026-12-01T10-00-00Z/constraint_violations.json",
        }
    )


def conditions(plan: Any) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status, c.reason, c.message) for c in plan.status.conditions}


def test_the_cron_job_runs_berth_monitor_over_the_endpoints_captures_and_is_admitted() -> None:
    plan = plan_monitoring(schedule(), endpoint("cfg1"), {"cfg1": CONFIG}, [], SETTINGS, NOW)
    [cron] = plan.objects
    assert_admitted(plan.objects)
    assert cron["metadata"]["name"] == cron_job_name("fraud-drift") == plan.status.cron_job_name
    assert cron["metadata"]["ownerReferences"][0]["kind"] == "MonitoringSchedule"
    assert (cron["spec"]["schedule"], cron["spec"]["concurrencyPolicy"]) == ("@hourly", "Forbid")
    [container] = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--captures") + 1] == "s3://bucket/capture/fraud/"
    assert args[args.index("--window-hours") + 1] == "2"
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    # The pod's command line is one `berth monitor` accepts.
    assert args[:2] == ["monitor", "run"]
    run = monitor.get_command(monitor.make_context("monitor", ["run"]), "run")
    assert run is not None
    params = run.make_context("run", list(args[2:])).params
    assert (params["captures_uri"], params["window_hours"]) == ("s3://bucket/capture/fraud/", 2)
    assert conditions(plan)["Ready"][:2] == ("True", "Scheduled")
    assert conditions(plan)["Drift"][:2] == ("False", "NoExecution")


def test_the_last_finished_execution_fills_the_status_and_drift_names_the_features() -> None:
    pods = [
        finished("fraud-drift-monitor-1", "2026-12-01T09:01:00Z", 0, report(0, [])),
        finished("fraud-drift-monitor-2", "2026-12-01T10:01:00Z", 0, report(2, ["_c1", "_c3"])),
    ]
    plan = plan_monitoring(schedule(), endpoint("cfg1"), {"cfg1": CONFIG}, pods, SETTINGS, NOW)
    last = plan.status.last_execution
    assert last is not None
    assert (last.records_read, last.violations, last.violated_features) == (5000, 2, ["_c1", "_c3"])
    assert last.job_name == "fraud-drift-monitor-2"
    assert last.report_uri is not None and last.report_uri.endswith("constraint_violations.json")
    status, reason, message = conditions(plan)["Drift"]
    assert (status, reason) == ("True", "ConstraintsViolated")
    assert "_c1, _c3" in message
    calm = plan_monitoring(schedule(), endpoint("cfg1"), {"cfg1": CONFIG}, pods[:1], SETTINGS, NOW)
    assert conditions(calm)["Drift"][:2] == ("False", "NoViolations")


def test_a_failed_execution_after_the_last_success_is_the_failure_reason() -> None:
    pods = [
        finished("fraud-drift-monitor-1", "2026-12-01T09:01:00Z", 0, report(0, [])),
        finished(
            "fraud-drift-monitor-2",
            "2026-12-01T10:01:00Z",
            3,
            "cannot read s3://bucket/baseline/statistics.json: NoSuchKey",
        ),
    ]
    plan = plan_monitoring(schedule(), endpoint("cfg1"), {"cfg1": CONFIG}, pods, SETTINGS, NOW)
    assert plan.status.failure_reason is not None and "NoSuchKey" in plan.status.failure_reason
    assert conditions(plan)["Ready"][:2] == ("False", "ExecutionFailed")
    assert plan.status.last_execution is not None and plan.status.last_execution.violations == 0
    # A success after the failure clears it.
    pods.append(finished("fraud-drift-monitor-3", "2026-12-01T11:01:00Z", 0, report(0, [])))
    assert (
        plan_monitoring(
            schedule(), endpoint("cfg1"), {"cfg1": CONFIG}, pods, SETTINGS, NOW
        ).status.failure_reason
        is None
    )


def test_no_cron_job_while_the_endpoint_captures_nothing() -> None:
    for found, config, expected in (
        (None, {"cfg1": CONFIG}, "Endpoint fraud not found"),
        (endpoint("cfg1"), {}, "its EndpointConfig not found"),
        (endpoint("cfg1"), {"cfg1": capturing_config(None)}, "captures nothing: set dataCapture"),
    ):
        plan = plan_monitoring(schedule(), found, config, [], SETTINGS, NOW)
        assert plan.objects == []
        status, reason, message = conditions(plan)["Ready"]
        assert (status, reason) == ("False", "CapturesNotFound") and expected in message


def test_a_message_from_another_version_is_not_an_execution() -> None:
    pods = [finished("fraud-drift-monitor-1", "2026-12-01T09:01:00Z", 0, "done")]
    plan = plan_monitoring(schedule(), endpoint("cfg1"), {"cfg1": CONFIG}, pods, SETTINGS, NOW)
    assert plan.status.last_execution is None

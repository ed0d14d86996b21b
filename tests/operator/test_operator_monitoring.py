"""A MonitoringSchedule with the real operator against KMock: the CronJob applied, and the status,
the Drift condition, the DriftDetected Event and the per-feature gauge filled from a finished
execution's pod (its termination message), as on a real API server (tests/cluster)."""

from __future__ import annotations

import json

import pytest

from tests.operator.builders import config, endpoint, model, variant
from tests.support.kmockk8s import KMockCluster, wait_for

pytestmark = pytest.mark.timeout(60)
NS = "ml"
SUMMARY = {
    "time": "2026-12-01T10:00:00Z",
    "recordsRead": 900,
    "violations": 1,
    "violatedFeatures": ["amount"],
    "reportUri": "s3://bucket/monitoring/ep/2026-12-01T10-00-00Z/constraint_violations.json",
}


def schedule(name: str) -> dict:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "MonitoringSchedule",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "endpointName": "ep",
            "schedule": "@hourly",
            "baseline": {"statisticsUri": "s3://b/s.json", "constraintsUri": "s3://b/c.json"},
            "outputUri": "s3://bucket/monitoring/ep/",
        },
    }


def execution_pod(cron_job: dict, name: str, message: str) -> dict:
    template = cron_job["spec"]["jobTemplate"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {**template["metadata"]["labels"], "job-name": "drift-29000000"},
        },
        "spec": template["spec"]["template"]["spec"],
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [
                {
                    "name": "monitor",
                    "state": {
                        "terminated": {
                            "exitCode": 0,
                            "reason": "Completed",
                            "message": message,
                            "finishedAt": "2026-12-01T10:00:30Z",
                        }
                    },
                }
            ],
        },
    }


def test_a_finished_execution_fills_the_status_event_and_gauge(cluster: KMockCluster, start_operator) -> None:
    operator = start_operator()
    cfg = config("c1", variant("blue", "m1"))
    cfg["spec"]["dataCapture"] = {"samplingPercentage": 10, "destinationUri": "s3://bucket/capture/"}
    cluster.create(model("m1"))
    cluster.create(cfg)
    cluster.create(endpoint("ep", "c1"))
    cluster.create(schedule("drift"))

    cron = wait_for(lambda: cluster.get("CronJob", NS, "drift-monitor"), message="the CronJob")
    args = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--captures") + 1] == "s3://bucket/capture/ep/"
    cluster.create(execution_pod(cron, "drift-29000000-x1", json.dumps(SUMMARY)))

    status = wait_for(
        lambda: (
            (cluster.get("MonitoringSchedule", NS, "drift") or {}).get("status", {}).get("lastExecution")
            and cluster.get("MonitoringSchedule", NS, "drift")["status"]
        ),
        message="lastExecution",
    )
    assert status["lastExecution"] == {**SUMMARY, "jobName": "drift-29000000"}
    drift = next(c for c in status["conditions"] if c["type"] == "Drift")
    assert (drift["status"], drift["reason"]) == ("True", "ConstraintsViolated")
    assert "amount" in drift["message"]
    events = wait_for(
        lambda: [e for e in cluster.list("Event", NS) if e.get("reason") == "DriftDetected"],
        message="a DriftDetected Event",
    )
    assert events[0]["involvedObject"]["name"] == "drift"
    violated = [
        sample.labels
        for family in operator.context.monitoring_gauges.collect()
        for sample in family.samples
        if sample.name == "berth_monitoring_feature_violated"
    ]
    assert violated == [{"namespace": NS, "schedule": "drift", "endpoint": "ep", "feature": "amount"}]

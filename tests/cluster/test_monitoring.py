"""A MonitoringSchedule on a real API server: the operator's CronJob (server-side applied, strict),
an execution's Job made from it as `kubectl create job --from=cronjob/...` does, the Job
controller's pod reporting drift, and the status, the Drift condition and the Event."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.support import Cluster
from tests.operator.builders import config, endpoint, model, variant
from tests.support import kubelet as pods

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("needs_controller_manager")]
SCHEDULE_LABEL = "berth.dev/monitoring-schedule"
REPORT_URI = "s3://bucket/monitoring/ep/2026-12-01T10-00-00Z/constraint_violations.json"


def schedule(name: str) -> dict:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "MonitoringSchedule",
        "metadata": {"name": name},
        "spec": {
            "endpointName": "ep",
            "schedule": "@hourly",
            "baseline": {
                "statisticsUri": "s3://bucket/baseline/statistics.json",
                "constraintsUri": "s3://bucket/baseline/constraints.json",
            },
            "outputUri": "s3://bucket/monitoring/ep/",
        },
    }


def capturing_config(name: str) -> dict:
    cfg = config(name, variant("blue", "m1"))
    cfg["spec"]["dataCapture"] = {"samplingPercentage": 50, "destinationUri": "s3://bucket/capture/"}
    return cfg


def condition(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def test_an_execution_that_finds_drift_fills_the_status_and_posts_an_event(cluster: Cluster) -> None:
    summary = {
        "time": "2026-12-01T10:00:00Z",
        "recordsRead": 1200,
        "violations": 2,
        "violatedFeatures": ["_c0", "_c2"],
        "reportUri": REPORT_URI,
    }
    cluster.kubelet.behave(pods.succeeded(json.dumps(summary)), {SCHEDULE_LABEL: "drift"})
    cluster.start_operator()
    cluster.create(model("m1"))
    cluster.create(capturing_config("c1"))
    cluster.create(endpoint("ep", "c1"))
    cluster.create(schedule("drift"))

    status = cluster.wait(
        lambda: (s := cluster.status("MonitoringSchedule", "drift")).get("cronJobName") and s,
        "the CronJob is made",
    )
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "Drift")["reason"] == "NoExecution"
    cron = cluster.get("CronJob", status["cronJobName"])
    assert cron is not None
    uid = cluster.get("MonitoringSchedule", "drift")["metadata"]["uid"]
    assert [(o["kind"], o["uid"]) for o in cron["metadata"]["ownerReferences"]] == [
        ("MonitoringSchedule", uid)
    ]
    args = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--captures") + 1] == "s3://bucket/capture/ep/"

    # One execution now, as `kubectl create job --from=cronjob/NAME` makes it.
    template = cron["spec"]["jobTemplate"]
    cluster.create(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "drift-manual", "labels": template["metadata"]["labels"]},
            "spec": template["spec"],
        }
    )
    status = cluster.wait(
        lambda: (s := cluster.status("MonitoringSchedule", "drift")).get("lastExecution") and s,
        "the execution's report in the status",
        timeout=90,
    )
    assert status["lastExecution"] == {**summary, "jobName": "drift-manual"}
    drift = condition(status, "Drift")
    assert (drift["status"], drift["reason"]) == ("True", "ConstraintsViolated")
    assert "_c0, _c2" in drift["message"]
    events = cluster.wait(
        lambda: [e for e in cluster.list("Event") if e.get("reason") == "DriftDetected"],
        "a DriftDetected Event",
    )
    assert events[0]["involvedObject"]["name"] == "drift" and "_c0, _c2" in events[0]["message"]

    # A series per violated feature on the operator's /metrics, for an alert rule to page on.
    def gauges() -> dict[tuple[str, str], float]:
        return {
            (sample.name, sample.labels.get("feature", "")): sample.value
            for family in text_string_to_metric_families(cluster.operator.metrics())
            for sample in family.samples
            if sample.labels.get("schedule") == "drift"
            and sample.labels.get("namespace") == cluster.namespace
            and sample.labels.get("endpoint") == "ep"
        }

    found = cluster.wait(
        lambda: g if ("berth_monitoring_violations", "") in (g := gauges()) else None,
        "the schedule's gauges",
    )
    assert found == {
        ("berth_monitoring_feature_violated", "_c0"): 1.0,
        ("berth_monitoring_feature_violated", "_c2"): 1.0,
        ("berth_monitoring_violations", ""): 2.0,
        ("berth_monitoring_records_read", ""): 1200.0,
        ("berth_monitoring_last_execution_timestamp_seconds", ""): 1796119200.0,
        ("berth_monitoring_ready", ""): 1.0,
    }

    cluster.delete("MonitoringSchedule", "drift")
    cluster.wait(lambda: not gauges(), "a deleted schedule's series gone")
    assert cluster.operator.forbidden() == []


def test_a_schedule_of_an_endpoint_that_captures_nothing_says_so(cluster: Cluster) -> None:
    cluster.start_operator()
    cluster.create(model("m1"))
    cluster.create(config("c1", variant("blue", "m1")))
    cluster.create(endpoint("ep", "c1"))
    cluster.create(schedule("idle"))
    ready = cluster.wait(
        lambda: (c := condition(cluster.status("MonitoringSchedule", "idle"), "Ready")).get("reason") and c,
        "Ready says why",
    )
    assert ready["status"] == "False" and ready["reason"] == "CapturesNotFound"
    assert "captures nothing: set dataCapture" in ready["message"]
    assert not cluster.list("CronJob", {SCHEDULE_LABEL: "idle"})

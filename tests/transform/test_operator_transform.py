"""TransformJobs with the real operator (kopf) against KMock: the Job it creates, and the status that
follows the Job (the test plays the Job controller and the kubelet by writing Job and Pod status)."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest

from tests.operator.builders import NS, model
from tests.support.kmockk8s import KMockCluster, wait_for

pytestmark = pytest.mark.timeout(60)


def transform_job(name: str, model_name: str = "m1", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "TransformJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "modelName": model_name,
            "input": {"uri": "s3://data/in/"},
            "output": {"uri": "s3://data/out/"},
            "instanceType": "cpu-small",
            **spec,
        },
    }


def status(cluster: KMockCluster, name: str) -> dict[str, Any]:
    return (cluster.get("TransformJob", NS, name) or {}).get("status") or {}


def phase_is(cluster: KMockCluster, name: str, phase: str) -> dict[str, Any] | None:
    current = status(cluster, name)
    return current if current.get("phase") == phase else None


def pod(job: dict[str, Any], index: int, phase: str, exit_code: int, message: str) -> dict[str, Any]:
    template = job["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{job['metadata']['name']}-{index}-x7k2p",
            "namespace": NS,
            "labels": dict(template["metadata"]["labels"]),
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "spec": template["spec"],
        "status": {
            "phase": phase,
            "containerStatuses": [
                {"name": "transform", "state": {"terminated": {"exitCode": exit_code, "message": message}}}
            ],
        },
    }


def report(records: int, failed: int = 0) -> str:
    return json.dumps({"objects": 2, "done": 2, "skipped": 0, "records": records, "failed": failed})


def test_create_runs_a_job_and_succeeds_with_counts(cluster: KMockCluster, start_operator) -> None:
    start_operator()
    cluster.create(model("m1"))
    cluster.create(transform_job("score", instanceCount=2))

    job = wait_for(lambda: cluster.get("Job", NS, "score"), message="the Job")
    kubernetes_validate.validate(job, "1.33", strict=True)
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == (
        "TransformJob",
        cluster.get("TransformJob", NS, "score")["metadata"]["uid"],
    )
    assert (job["spec"]["completionMode"], job["spec"]["parallelism"], job["spec"]["completions"]) == (
        "Indexed",
        2,
        2,
    )
    assert job["metadata"]["labels"]["berth.dev/transform-job"] == "score"
    assert wait_for(lambda: phase_is(cluster, "score", "Pending"), message="Pending")["jobName"] == "score"

    cluster.patch("Job", NS, "score", {"status": {"active": 2, "startTime": "2026-03-01T11:00:00Z"}})
    running = wait_for(lambda: phase_is(cluster, "score", "Running"), message="Running")
    assert running["startTime"] == "2026-03-01T11:00:00Z"

    cluster.create(pod(job, 0, "Succeeded", 0, report(600, failed=1)))
    wait_for(lambda: status(cluster, "score").get("recordsDone") == 600, message="records of the first pod")
    cluster.create(pod(job, 1, "Succeeded", 0, report(400)))
    complete = {"type": "Complete", "status": "True", "lastTransitionTime": "2026-03-01T11:20:00Z"}
    cluster.patch(
        "Job",
        NS,
        "score",
        {
            "status": {
                "active": 0,
                "succeeded": 2,
                "completionTime": "2026-03-01T11:20:00Z",
                "conditions": [complete],
            }
        },
    )
    done = wait_for(lambda: phase_is(cluster, "score", "Succeeded"), message="Succeeded")
    assert (done["recordsDone"], done["recordsTotal"], done["completionTime"]) == (
        1000,
        1001,
        "2026-03-01T11:20:00Z",
    )
    assert {c["type"]: c["status"] for c in done["conditions"]} == {"Complete": "True", "Failed": "False"}

    # Finished is final: the Job going away after its TTL creates nothing and keeps the status.
    cluster.delete("Job", NS, "score")
    cluster.patch("TransformJob", NS, "score", {"metadata": {"labels": {"touched": "yes"}}})
    wait_for(
        lambda: (cluster.get("TransformJob", NS, "score") or {}).get("metadata", {}).get("labels"),
        message="label",
    )
    assert cluster.get("Job", NS, "score") is None
    assert phase_is(cluster, "score", "Succeeded")


def test_failed_job_fails_with_the_pods_reason(cluster: KMockCluster, start_operator) -> None:
    start_operator()
    cluster.create(model("m1"))
    cluster.create(transform_job("bad-data"))
    job = wait_for(lambda: cluster.get("Job", NS, "bad-data"), message="the Job")
    reason = "malformed record at s3://data/in/a.csv:17: expected 4 values, got 3"
    cluster.create(pod(job, 0, "Failed", 1, reason))
    failed = {
        "type": "Failed",
        "status": "True",
        "reason": "PodFailurePolicy",
        "message": "Container transform for pod ml/bad-data-0-x7k2p failed with exit code 1",
        "lastTransitionTime": "2026-03-01T11:05:00Z",
    }
    cluster.patch("Job", NS, "bad-data", {"status": {"failed": 1, "conditions": [failed]}})
    final = wait_for(lambda: phase_is(cluster, "bad-data", "Failed"), message="Failed")
    assert final["failureReason"] == reason
    assert next(c for c in final["conditions"] if c["type"] == "Failed")["reason"] == "PodFailurePolicy"


def test_waits_for_its_model_and_refuses_unknown_instance_types(
    cluster: KMockCluster, start_operator
) -> None:
    start_operator()
    cluster.create(transform_job("early", model_name="later"))
    waiting = wait_for(lambda: phase_is(cluster, "early", "Pending"), message="Pending")
    assert waiting["failureReason"] == "Model later not found"
    assert cluster.get("Job", NS, "early") is None
    cluster.create(model("later"))
    wait_for(lambda: cluster.get("Job", NS, "early"), message="the Job once the Model exists")

    cluster.create(transform_job("huge", model_name="later", instanceType="tpu-huge"))
    refused = wait_for(lambda: phase_is(cluster, "huge", "Failed"), message="Failed")
    assert refused["failureReason"].startswith('unknown instanceType "tpu-huge" (known: cpu-large')
    assert cluster.get("Job", NS, "huge") is None


def test_a_watch_behind_our_own_status_write_never_fails_a_finished_transform(cluster: KMockCluster) -> None:
    """The Job went after its TTL, and the watch still shows the TransformJob as it was before the
    operator wrote Succeeded: the reconcile reads the stored object and leaves it finished."""
    import asyncio

    import kopf
    from berth_operator.events import EventRecorder
    from berth_operator.kube import KubeClient
    from berth_operator.reconcile_transform import TransformSnapshot, reconcile_transform
    from berth_operator.settings import Settings

    cluster.create(model("m1"))
    stale = cluster.create(transform_job("score"))
    stale["status"] = {"phase": "Running", "jobName": "score", "startTime": "2026-03-01T11:00:00Z"}
    finished = {
        "phase": "Succeeded",
        "jobName": "score",
        "startTime": "2026-03-01T11:00:00Z",
        "completionTime": "2026-03-01T11:20:00Z",
    }
    cluster.patch("TransformJob", NS, "score", {"status": finished}, subresource="status")

    async def reconcile() -> int:
        kube = KubeClient(kopf.ConnectionInfo(server=cluster.url))
        try:
            snapshot = TransformSnapshot(stale, cluster.get("Model", NS, "m1"), None, [])
            return await reconcile_transform(kube, EventRecorder(kube), Settings(), snapshot)
        finally:
            await kube.close()

    asyncio.run(reconcile())
    assert status(cluster, "score")["phase"] == "Succeeded"
    assert cluster.get("Job", NS, "score") is None  # and nothing was run again

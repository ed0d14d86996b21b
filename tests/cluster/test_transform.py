"""A TransformJob on a real API server: the operator's Job, the Job controller's pods, the status."""

from __future__ import annotations

import json

import pytest

from tests.cluster.support import Cluster
from tests.operator.builders import model
from tests.support import kubelet as pods

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("needs_controller_manager")]
TRANSFORM_LABEL = "berth.dev/transform-job"


def transform_job(name: str, **spec: object) -> dict:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "TransformJob",
        "metadata": {"name": name},
        "spec": {
            "modelName": "m1",
            "input": {"uri": "s3://data/in/"},
            "output": {"uri": "s3://data/out/"},
            "instanceType": "cpu-small",
            **spec,
        },
    }


def test_transform_job_runs_to_succeeded_and_is_collected(cluster: Cluster) -> None:
    # Each pod of the Indexed Job scores five records and says so in its termination message,
    # as `berth transform` does.
    report = json.dumps({"records": 5, "failed": 0})
    cluster.kubelet.behave(pods.succeeded(report), {TRANSFORM_LABEL: "score"})
    cluster.start_operator()
    cluster.create(model("m1"))
    cluster.create(transform_job("score", instanceCount=2))

    status = cluster.wait(
        lambda: (s := cluster.status("TransformJob", "score")).get("phase") == "Succeeded" and s,
        "TransformJob Succeeded",
        timeout=90,
    )
    assert (status["recordsDone"], status["recordsTotal"]) == (10, 10)
    job = cluster.get("Job", status["jobName"])
    assert job is not None
    uid = cluster.get("TransformJob", "score")["metadata"]["uid"]
    assert [(o["kind"], o["uid"]) for o in job["metadata"]["ownerReferences"]] == [("TransformJob", uid)]
    # The Job controller, not the test, declared the Job complete.
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in job["status"].get("conditions", []))
    assert cluster.operator.forbidden() == []

    assert cluster.delete("TransformJob", "score")
    cluster.wait(
        lambda: (
            cluster.get("Job", status["jobName"]) is None
            and not cluster.list("Pod", {TRANSFORM_LABEL: "score"})
        ),
        "Job and pods garbage-collected",
        timeout=30,
    )

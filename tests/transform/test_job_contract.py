"""The operator and the engine agree: the pods of the Job the operator creates, run for real.

The test plays the kubelet: for each completion index it runs `berth transform` with the exact
args of the Job's pod template (the model path swapped for a local copy, as the init container
would have fetched it), the Indexed Job's JOB_COMPLETION_INDEX and a termination-log file, then
reports the pod as Kubernetes would. The TransformJob's record counts come from those reports.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from berth_serving.config import MODEL_MOUNT_PATH

from tests.operator.builders import NS, model
from tests.support.kmockk8s import KMockCluster, wait_for
from tests.transform.conftest import S3_ENV
from tests.transform.support import berth_env, csv_bytes, rows, run_berth

pytestmark = pytest.mark.timeout(120)


def run_pod(
    job: dict[str, Any], index: int, model_path: Path, env: dict[str, str], log: Path
) -> dict[str, Any]:
    """Run one pod's transform container like the kubelet would; return the Pod as reported."""
    template = job["spec"]["template"]
    [container] = template["spec"]["containers"]
    assert container["command"] == ["berth"]
    args = [str(model_path) if arg == MODEL_MOUNT_PATH else arg for arg in container["args"]]
    result = run_berth(args, {**env, "JOB_COMPLETION_INDEX": str(index), "BERTH_TERMINATION_LOG": str(log)})
    phase = "Succeeded" if result.returncode == 0 else "Failed"
    terminated = {"exitCode": result.returncode, "message": log.read_text()}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{job['metadata']['name']}-{index}-abcde",
            "namespace": NS,
            "labels": dict(template["metadata"]["labels"]),
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "spec": template["spec"],
        "status": {
            "phase": phase,
            "containerStatuses": [{"name": "transform", "state": {"terminated": terminated}}],
        },
    }


def test_the_jobs_pods_transform_every_object_once(
    cluster: KMockCluster,
    start_operator,
    transform_models: SimpleNamespace,
    s3: SimpleNamespace,
    tmp_path: Path,
) -> None:
    bucket = s3.bucket
    for i in range(5):
        body = csv_bytes(rows(20 + i, 4, seed=i)) + (b"oops\n" if i == 3 else b"")
        s3.client.put_object(Bucket=bucket, Key=f"in/part-{i}.csv", Body=body)
    start_operator()
    cluster.create(model("m1", uri=f"s3://{bucket}/models/logreg.onnx"))
    spec = {
        "modelName": "m1",
        "input": {"uri": f"s3://{bucket}/in/"},
        "output": {"uri": f"s3://{bucket}/out/"},
        "instanceType": "cpu-small",
        "instanceCount": 2,
        "joinSource": "Input",
        "maxErrors": 1,
    }
    cluster.create(
        {
            "apiVersion": "berth.dev/v1alpha1",
            "kind": "TransformJob",
            "metadata": {"name": "nightly", "namespace": NS},
            "spec": spec,
        }
    )
    job = wait_for(lambda: cluster.get("Job", NS, "nightly"), message="the Job")

    env = berth_env(**S3_ENV, AWS_ENDPOINT_URL=s3.endpoint)
    for index in range(2):
        reported = run_pod(job, index, transform_models.logreg, env, tmp_path / f"termination-{index}")
        assert reported["status"]["phase"] == "Succeeded", reported["status"]
        cluster.create(reported)
    complete = {"type": "Complete", "status": "True", "lastTransitionTime": "2026-03-01T11:20:00Z"}
    cluster.patch("Job", NS, "nightly", {"status": {"succeeded": 2, "conditions": [complete]}})

    def succeeded() -> dict[str, Any] | None:
        status = (cluster.get("TransformJob", NS, "nightly") or {}).get("status") or {}
        return status if status.get("phase") == "Succeeded" else None

    status = wait_for(succeeded, message="Succeeded")
    good = sum(20 + i for i in range(5))
    assert (status["recordsDone"], status["recordsTotal"]) == (good, good + 1)
    listing = s3.client.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]
    outputs = sorted(item["Key"] for item in listing)
    assert outputs == sorted([f"out/part-{i}.csv.out" for i in range(5)] + ["out/part-3.csv.errors"])
    first = s3.client.get_object(Bucket=bucket, Key="out/part-0.csv.out")["Body"].read().decode().splitlines()
    assert len(first) == 20 and first[0].count(",") == 4  # joinSource Input: 4 features, then the label

"""plan_transform_job: the Job a TransformJob runs as (admitted by Kubernetes' own schemas) and its status."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import kubernetes_validate
import pytest
from berth_operator.api import Model, TransformJob
from berth_operator.planner.transform import (
    TRANSFORM_JOB,
    TransformObserved,
    job_name,
    plan_transform_job,
    record_counts,
)
from berth_operator.settings import Settings
from berth_serving.transform.cli import transform as transform_command
from berth_serving.transform.options import TransformOptions

NS = "ml"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings()


def model(name: str = "fraud-v1", **spec: Any) -> Model:
    body = {"modelUri": f"s3://models/{name}/model.onnx", **spec}
    return Model.model_validate({"kind": "Model", "metadata": {"name": name, "namespace": NS}, "spec": body})


def transform_job(
    name: str = "score-march", status: dict[str, Any] | None = None, **spec: Any
) -> TransformJob:
    body = {
        "modelName": "fraud-v1",
        "input": {"uri": "s3://data/march/"},
        "output": {"uri": "s3://data/march-scored/"},
        "instanceType": "cpu-small",
        **spec,
    }
    doc: dict[str, Any] = {
        "kind": "TransformJob",
        "metadata": {"name": name, "namespace": NS, "uid": "uid-tj", "generation": 1},
        "spec": body,
    }
    if status is not None:
        doc["status"] = status
    return TransformJob.model_validate(doc)


def observed(
    job: dict[str, Any] | None = None, pods: list[dict[str, Any]] | None = None, **later: int
) -> TransformObserved:
    return TransformObserved(now=NOW + timedelta(**later), job=job, pods=pods or [])


def planned_job(
    tj: TransformJob | None = None, m: Model | None = None, settings: Settings = SETTINGS
) -> dict[str, Any]:
    plan = plan_transform_job(tj or transform_job(), m or model(), settings, observed())
    assert plan.job is not None
    return plan.job


def job_with(status: dict[str, Any]) -> dict[str, Any]:
    return {**planned_job(), "status": status}


def pod(
    index: int,
    phase: str,
    *,
    exit_code: int | None = None,
    message: str = "",
    init: dict[str, Any] | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if exit_code is not None:
        status["containerStatuses"] = [
            {"name": "transform", "state": {"terminated": {"exitCode": exit_code, "message": message}}}
        ]
    if init is not None:
        status["initContainerStatuses"] = [{"name": "storage-initializer", **init}]
    return {
        "metadata": {
            "name": f"score-march-{index}-abcde",
            "labels": {TRANSFORM_JOB: "score-march"},
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "status": status,
    }


def report(records: int, failed: int = 0) -> str:
    return json.dumps({"objects": 1, "done": 1, "skipped": 0, "records": records, "failed": failed})


# --------------------------------------------------------------------------- the Job


@pytest.mark.parametrize("version", ["1.30", "1.33", "1.37"])
def test_job_is_admitted_by_kubernetes_schemas(version: str) -> None:
    gpu = {"instanceType": "gpu-small", "instanceCount": 4}
    for job in (planned_job(), planned_job(transform_job(**gpu), model(credentialsSecretRef={"name": "s3"}))):
        kubernetes_validate.validate(job, version, strict=True)


def test_job_shape() -> None:
    job = planned_job(transform_job(instanceCount=3, ttlSecondsAfterFinished=120))
    meta, spec = job["metadata"], job["spec"]
    assert (job["apiVersion"], job["kind"], meta["name"], meta["namespace"]) == (
        "batch/v1",
        "Job",
        "score-march",
        NS,
    )
    assert meta["labels"][TRANSFORM_JOB] == "score-march" and meta["labels"]["berth.dev/model"] == "fraud-v1"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "berth.dev/v1alpha1",
            "kind": "TransformJob",
            "name": "score-march",
            "uid": "uid-tj",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert spec["ttlSecondsAfterFinished"] == 120
    assert spec["podFailurePolicy"]["rules"][0]["onExitCodes"] == {
        "containerName": "transform",
        "operator": "In",
        "values": [1, 2],
    }
    pod_spec = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"] == meta["labels"]
    assert pod_spec["restartPolicy"] == "Never"
    [init] = pod_spec["initContainers"]
    assert init["args"] == [
        "fetch-model",
        "s3://models/fraud-v1/model.onnx",
        "/mnt/models",
        "--max-bytes",
        str(10 * 2**30),  # the model volume's sizeLimit, as for serving pods
    ]
    [container] = pod_spec["containers"]
    assert container["command"] == ["berth"] and container["args"][:2] == ["transform", "--model"]
    assert container["image"] == SETTINGS.images.cpu
    assert container["resources"] == {
        "limits": {"cpu": "1", "memory": "2Gi"},
        "requests": {"cpu": "1", "ephemeral-storage": "11Gi", "memory": "2Gi"},
    }
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_pod_args_are_what_berth_transform_parses() -> None:
    """The args the operator writes, parsed by the real `berth transform` command, give the spec back."""
    tj = transform_job(
        input={"uri": "s3://d/in/", "contentType": "application/jsonlines", "compression": "Gzip"},
        output={"uri": "s3://d/out/", "accept": "application/jsonlines"},
        batchStrategy="SingleRecord",
        maxPayloadBytes=1000,
        maxConcurrentTransforms=3,
        instanceCount=5,
        joinSource="Input",
        maxErrors=7,
        inputFilter="$.features",
        outputFilter="$['id','SageMakerOutput']",
    )
    args = planned_job(tj)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "transform"
    context = transform_command.make_context("transform", list(args[1:]))
    params = dict(context.params)
    assert params.pop("model_uri") == "/mnt/models"
    options = TransformOptions(
        **{k: v for k, v in params.items() if k in TransformOptions.__dataclass_fields__}
    )
    assert options == TransformOptions(
        input_uri="s3://d/in/",
        output_uri="s3://d/out/",
        content_type="application/jsonlines",
        compression="Gzip",
        accept="application/jsonlines",
        batch_strategy="SingleRecord",
        max_payload_bytes=1000,
        max_concurrent_transforms=3,
        join_source="Input",
        max_errors=7,
        shard_count=5,
        input_filter="$.features",
        output_filter="$['id','SageMakerOutput']",
    )


def test_gpu_credentials_service_account_and_env() -> None:
    m = model(
        credentialsSecretRef={"name": "s3-creds"},
        serviceAccountName="reader",
        env=[{"name": "AWS_REGION", "value": "eu-west-1"}],
    )
    pod_spec = planned_job(transform_job(instanceType="gpu-small"), m)["spec"]["template"]["spec"]
    [container] = pod_spec["containers"]
    assert container["image"] == SETTINGS.images.gpu and container["args"][-2:] == ["--providers", "cuda"]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert container["env"] == [{"name": "AWS_REGION", "value": "eu-west-1"}]
    assert pod_spec["initContainers"][0]["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert pod_spec["serviceAccountName"] == "reader"
    assert pod_spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_long_names_make_valid_job_names() -> None:
    name = "a" * 200
    assert len(job_name(name)) <= 63
    kubernetes_validate.validate(planned_job(transform_job(name=name)), "1.33", strict=True)


# --------------------------------------------------------------------------- status


def test_new_transform_creates_its_job_pending() -> None:
    plan = plan_transform_job(transform_job(), model(), SETTINGS, observed())
    assert plan.job is not None
    status = plan.status
    assert (status.phase, status.job_name, status.failure_reason) == ("Pending", "score-march", None)
    assert [(c.type, c.status) for c in status.conditions] == [("Complete", "False"), ("Failed", "False")]
    assert [e.reason for e in plan.events] == ["JobCreated"]


def test_missing_model_waits() -> None:
    plan = plan_transform_job(transform_job(), None, SETTINGS, observed())
    assert plan.job is None
    assert (plan.status.phase, plan.status.failure_reason) == ("Pending", "Model fraud-v1 not found")


@pytest.mark.parametrize(
    ("tj", "m", "reason"),
    [
        (transform_job(instanceType="tpu-huge"), model(), 'unknown instanceType "tpu-huge"'),
        (transform_job(), model(image="acme/server:1"), "Model fraud-v1 has its own image"),
    ],
)
def test_specs_that_cannot_run_fail(tj: TransformJob, m: Model, reason: str) -> None:
    plan = plan_transform_job(tj, m, SETTINGS, observed())
    assert plan.job is None and plan.status.phase == "Failed"
    assert reason in (plan.status.failure_reason or "")
    assert next(c for c in plan.status.conditions if c.type == "Failed").status == "True"


def test_running_job_with_a_pod_finished() -> None:
    job = job_with({"active": 1, "startTime": "2026-03-01T11:00:00Z"})
    pods = [pod(0, "Succeeded", exit_code=0, message=report(500)), pod(1, "Running")]
    plan = plan_transform_job(transform_job(instanceCount=2), model(), SETTINGS, observed(job, pods))
    assert plan.job is None
    status = plan.status
    assert (status.phase, status.start_time, status.records_done, status.records_total) == (
        "Running",
        "2026-03-01T11:00:00Z",
        500,
        None,
    )


def test_succeeded_job_sums_the_pods_reports() -> None:
    job = job_with(
        {
            "startTime": "2026-03-01T11:00:00Z",
            "completionTime": "2026-03-01T11:30:00Z",
            "succeeded": 2,
            "conditions": [
                {"type": "Complete", "status": "True", "lastTransitionTime": "2026-03-01T11:30:00Z"}
            ],
        }
    )
    pods = [
        pod(0, "Failed", exit_code=3, message="cannot read s3://data/march/a.csv: SlowDown"),  # retried
        pod(0, "Succeeded", exit_code=0, message=report(700, failed=2)),
        pod(1, "Succeeded", exit_code=0, message=report(300)),
    ]
    plan = plan_transform_job(transform_job(instanceCount=2), model(), SETTINGS, observed(job, pods))
    status = plan.status
    assert (status.phase, status.records_done, status.records_total) == ("Succeeded", 1000, 1002)
    assert status.completion_time == "2026-03-01T11:30:00Z" and status.failure_reason is None
    assert {c.type: c.status for c in status.conditions} == {"Complete": "True", "Failed": "False"}
    assert [e.reason for e in plan.events] == ["Succeeded"]


def test_failed_job_says_why_from_the_pod() -> None:
    job = job_with(
        {
            "startTime": "2026-03-01T11:00:00Z",
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "PodFailurePolicy",
                    "message": "Container transform for pod ml/score-march-0 failed with exit code 1",
                    "lastTransitionTime": "2026-03-01T11:05:00Z",
                }
            ],
        }
    )
    bad = "malformed record at s3://data/march/a.csv:17: expected 4 values, got 3"
    plan = plan_transform_job(
        transform_job(), model(), SETTINGS, observed(job, [pod(0, "Failed", exit_code=1, message=bad)])
    )
    status = plan.status
    assert (status.phase, status.failure_reason, status.completion_time) == (
        "Failed",
        bad,
        "2026-03-01T11:05:00Z",
    )
    failed = next(c for c in status.conditions if c.type == "Failed")
    assert (failed.status, failed.reason, failed.message) == ("True", "PodFailurePolicy", bad)


def test_failed_job_without_pods_uses_the_job_condition() -> None:
    job = job_with(
        {
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                }
            ]
        }
    )
    plan = plan_transform_job(transform_job(), model(), SETTINGS, observed(job))
    assert plan.status.failure_reason == "BackoffLimitExceeded: Job has reached the specified backoff limit"


def test_model_download_failure_is_surfaced_while_retrying() -> None:
    init = {
        "state": {
            # what `berth fetch-model` writes: the planner says "download failed" itself
            "terminated": {"exitCode": 1, "message": "403 Forbidden from s3://models/x"}
        }
    }
    job = job_with({"active": 1, "startTime": "2026-03-01T11:00:00Z"})
    plan = plan_transform_job(
        transform_job(), model(), SETTINGS, observed(job, [pod(0, "Failed", init=init)])
    )
    assert plan.status.phase == "Running"
    assert plan.status.failure_reason == "model fraud-v1: download failed: 403 Forbidden from s3://models/x"


def test_image_pull_problem_while_pending() -> None:
    waiting = {
        "name": "transform",
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}},
    }
    p = pod(0, "Pending")
    p["status"]["containerStatuses"] = [waiting]
    plan = plan_transform_job(transform_job(), model(), SETTINGS, observed(job_with({}), [p]))
    assert (plan.status.phase, plan.status.failure_reason) == (
        "Pending",
        "transform: ImagePullBackOff: no such image",
    )


def test_finished_transforms_stay_finished_when_the_job_is_gone() -> None:
    done = {"phase": "Succeeded", "jobName": "score-march", "recordsDone": 10, "recordsTotal": 10}
    plan = plan_transform_job(transform_job(status=done), model(), SETTINGS, observed())
    assert plan.job is None and plan.status.phase == "Succeeded" and plan.status.records_done == 10
    failed = {"phase": "Failed", "failureReason": "bad data"}
    plan = plan_transform_job(transform_job(status=failed), None, SETTINGS, observed())
    assert plan.job is None and plan.status.failure_reason == "bad data"


@pytest.mark.parametrize("phase", ["Pending", "Running"])
def test_a_job_gone_before_the_outcome_was_recorded_is_never_run_again(phase: str) -> None:
    # The TTL controller or a person deleted the Job while our status still said Running (a lost
    # status write): a new Job would transform the whole dataset a second time.
    running = {
        "phase": phase,
        "jobName": "score-march",
        "recordsDone": 4,
        "startTime": "2026-01-01T00:00:00Z",
    }
    plan = plan_transform_job(transform_job(status=running), model(), SETTINGS, observed())
    assert plan.job is None
    assert plan.status.phase == "Failed"
    assert plan.status.job_name == "score-march" and plan.status.records_done == 4
    assert plan.status.failure_reason is not None
    assert "Job score-march is gone" in plan.status.failure_reason
    assert "never runs twice" in plan.status.failure_reason
    failed = next(c for c in plan.status.conditions if c.type == "Failed")
    assert (failed.status, failed.reason) == ("True", "JobLost")
    assert [e.reason for e in plan.events] == ["Failed"]


def test_an_invalid_spec_gets_a_planned_failed_status() -> None:
    from berth_operator.planner.transform import invalid_transform_status

    raw = {"metadata": {"name": "t", "generation": 3}, "status": {"phase": "Pending"}}
    status = invalid_transform_status(raw, "spec.instanceCount: must be at least 1", NOW)
    assert status["phase"] == "Failed" and status["observedGeneration"] == 3
    assert status["failureReason"] == "spec.instanceCount: must be at least 1"
    by_type = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert by_type == {"Complete": ("False", "Failed"), "Failed": ("True", "InvalidSpec")}


def test_condition_times_hold_while_nothing_changes() -> None:
    first = plan_transform_job(transform_job(), model(), SETTINGS, observed())
    status = first.status.to_wire()
    later = plan_transform_job(
        transform_job(status=status), model(), SETTINGS, observed(job_with({}), minutes=5)
    )
    assert [c.last_transition_time for c in later.status.conditions] == [
        c.last_transition_time for c in first.status.conditions
    ]


def test_record_counts_ignore_unreadable_reports() -> None:
    pods = [
        pod(0, "Succeeded", exit_code=0, message="not json"),
        pod(1, "Succeeded", exit_code=0, message=report(4)),
    ]
    counts = record_counts(pods, completions=2)
    assert (counts.done, counts.total) == (4, None)
    assert record_counts([], 1).done is None


def test_render_and_up_leave_transform_jobs_to_berth_transform(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from berth_operator.manifests import load_manifests

    wire = transform_job().to_wire()
    wire.pop("status", None)
    (tmp_path / "tj.yaml").write_text(json.dumps({"apiVersion": "berth.dev/v1alpha1", **wire}))
    loaded = load_manifests([tmp_path])
    assert loaded.models == loaded.configs == loaded.endpoints == []
    assert any("ignored TransformJob/score-march" in note for note in loaded.notes)


def test_data_capture_becomes_the_capture_option_berth_transform_parses() -> None:
    from berth_serving.capture import CaptureConfig, capture_from_json

    tj = transform_job(
        dataCapture={"destinationUri": "s3://capture/tj/", "captureModes": ["Input"], "maxFileAgeSeconds": 30}
    )
    args = planned_job(tj)["spec"]["template"]["spec"]["containers"][0]["args"]
    context = transform_command.make_context("transform", list(args[1:]))
    assert capture_from_json(context.params["capture"]) == CaptureConfig(
        "s3://capture/tj/",
        "score-march",
        "transform",
        100.0,
        capture_modes=("Input",),
        source="transform",
        max_file_age_seconds=30.0,
    )
    # Without dataCapture, or sampling nothing: no option.
    specs: list[dict[str, Any]] = [
        {},
        {"dataCapture": {"destinationUri": "s3://capture/tj/", "samplingPercentage": 0}},
    ]
    for spec in specs:
        args = planned_job(transform_job(**spec))["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--capture" not in args


def test_the_captures_are_written_with_their_secret_after_the_models() -> None:
    capture = {"destinationUri": "s3://capture/tj/", "credentialsSecretRef": {"name": "capture-s3"}}
    container = planned_job(transform_job(dataCapture=capture))["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "capture-s3"}}]
    with_model_secret = model(credentialsSecretRef={"name": "models-s3"})
    job = planned_job(transform_job(dataCapture=capture), with_model_secret)
    assert job["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [
        {"secretRef": {"name": "models-s3"}},
        {"secretRef": {"name": "capture-s3"}},  # last: a key in both takes the capture's value
    ]

"""The batch/v1 Job that runs a TransformJob.

The Job is Indexed with parallelism = completions = instanceCount: pod i runs `berth transform
--shard-count N` with JOB_COMPLETION_INDEX = i and takes every N-th input object. Its init
container is the serving pods' `berth fetch-model`. Exit code 1 of the transform container
(bad data, a model that does not fit) or 2 (bad options) fails the Job at once; other failures
are retried and a retry resumes where the last attempt stopped. The Job and its pods are owned
by the TransformJob and deleted ttlSecondsAfterFinished after it finished.
"""

from __future__ import annotations

import json
from typing import Any

from berth_serving.config import MODEL_MOUNT_PATH, pipeline_to_json

from ...api import Model, TransformJob, TransformJobSpec
from ...settings import InstanceType, Settings
from .. import labels, pipeline
from ..capture import capture_credentials, runtime_capture
from ..meta import object_meta
from ..names import dns_label, label_value
from ..pods import (
    STARTUP_SECONDS,
    TRANSFORM_CONTAINER,
    container_resources,
    container_security,
    ephemeral_storage,
    model_init_containers,
    model_volume_mounts,
    model_volume_size,
    model_volumes,
    node_placement,
    pod_scaffold,
    storage_credentials,
)
from ..types import Manifest

TRANSFORM_JOB = "berth.dev/transform-job"
APP_NAME = "berth-transform"
BACKOFF_LIMIT = 3
EXIT_DATA = 1  # `berth transform`: the data or the model is at fault; retrying cannot help
EXIT_USAGE = 2
# A TransformJob's capture files: DEST/JOBNAME/transform/yyyy/mm/dd/hh/UUID.jsonl (the endpoint
# is the TransformJob, the variant the fixed word transform, eventMetadata.source transform).
CAPTURE_VARIANT = "transform"
CAPTURE_SOURCE = "transform"


def job_name(transform_name: str) -> str:
    return dns_label(transform_name)


def transform_selector(transform_name: str) -> dict[str, str]:
    return {TRANSFORM_JOB: label_value(transform_name)}


def transform_labels(transform: TransformJob) -> dict[str, str]:
    return {
        labels.NAME: APP_NAME,
        labels.INSTANCE: label_value(transform.name),
        labels.COMPONENT: "transform",
        labels.PART_OF: labels.PART_OF_VALUE,
        labels.MANAGED_BY: labels.MANAGED_BY_VALUE,
        **transform_selector(transform.name),
        labels.MODEL: label_value(transform.spec.model_name),
    }


def capture_settings(name: str, spec: TransformJobSpec) -> dict[str, Any] | None:
    """`berth transform --capture`'s settings, or None when the TransformJob captures nothing."""
    return runtime_capture(spec.data_capture, name, CAPTURE_VARIANT, CAPTURE_SOURCE)


def transform_args(spec: TransformJobSpec, model: Model, gpu: bool, name: str = "") -> list[str]:
    """`name`: the TransformJob's, the capture's endpoint (needed with spec.dataCapture)."""
    runtime = model.spec.runtime
    served = (
        ["--pipeline", pipeline_to_json(pipeline.served_stages(model.spec))]
        if model.spec.is_pipeline
        else ["--model", MODEL_MOUNT_PATH]
    )
    args = [
        "transform",
        *served,
        "--input",
        spec.input.uri,
        "--output",
        spec.output.uri,
        "--content-type",
        spec.input.content_type,
        "--split-type",
        spec.input.split_type,
        "--compression",
        spec.input.compression,
        "--accept",
        spec.output.accept,
        "--assemble-with",
        spec.output.assemble_with,
        "--batch-strategy",
        spec.batch_strategy,
        "--max-payload-bytes",
        str(spec.max_payload_bytes),
        "--max-concurrent-transforms",
        str(spec.max_concurrent_transforms),
        "--join-source",
        spec.join_source,
        "--max-errors",
        str(spec.max_errors),
        "--shard-count",
        str(spec.instance_count),
        "--intra-op-threads",
        str(runtime.intra_op_threads),
        "--graph-optimization-level",
        runtime.graph_optimization_level,
        "--no-progress",
    ]
    if spec.input_filter is not None:
        args += ["--input-filter", spec.input_filter]
    if spec.output_filter is not None:
        args += ["--output-filter", spec.output_filter]
    capture = capture_settings(name, spec)
    if capture is not None:
        if not name:
            raise ValueError("transform_args needs the TransformJob's name for its dataCapture")
        args += ["--capture", json.dumps(capture, separators=(",", ":"), sort_keys=True)]
    if gpu:
        args += ["--providers", "cuda"]
    return args


def _transform_container(
    transform: TransformJob, model: Model, instance_type: InstanceType, settings: Settings, size_limit: str
) -> dict[str, Any]:
    gpu = instance_type.accelerator == "nvidia"
    container: dict[str, Any] = {
        "name": TRANSFORM_CONTAINER,
        "image": settings.images.gpu if gpu else settings.images.cpu,
        "imagePullPolicy": settings.images.pull_policy,
        "command": ["berth"],
        "args": transform_args(transform.spec, model, gpu, transform.name),
    }
    if model.spec.env:
        container["env"] = [e.to_wire() for e in model.spec.env]
    # The data is read with the model's credentials, the captures written with their own (last:
    # a key in both Secrets takes the capture's value).
    credentials = storage_credentials(model.spec) + capture_credentials(transform.spec.data_capture)
    if credentials:
        container["envFrom"] = credentials
    quantities = _quantities(instance_type)
    if model.spec.is_pipeline:
        quantities = pipeline.server_quantities(quantities, model.spec)
    container.update(
        {
            "resources": container_resources(quantities, ephemeral_storage(size_limit)),
            # `berth transform` writes its counts or its error there; the log tail stands in otherwise.
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": container_security(),
            "volumeMounts": model_volume_mounts(),
        }
    )
    return container


def _quantities(instance_type: InstanceType) -> dict[str, dict[str, int | float | str]]:
    return {
        "requests": dict(instance_type.resources.requests),
        "limits": dict(instance_type.resources.limits),
    }


def _pod_spec(
    transform: TransformJob, model: Model, instance_type: InstanceType, settings: Settings
) -> Manifest:
    """The pod scaffolding of serving pods (planner/pods.py) around the transform container."""
    size_limit = model_volume_size(instance_type)
    spec: Manifest = {"restartPolicy": "Never", **pod_scaffold(model.spec)}
    spec.update(
        {
            # A model under a MultiModel prefix: its NAME.sha256 is checked, as the server would.
            # A pipeline's image stages are native sidecars: the pod completes when the transform does.
            "initContainers": model_init_containers(
                model.spec, settings, size_limit, sha256_beside=transform.spec.target_model is not None
            )
            + pipeline.stage_containers(model.spec, settings, _quantities(instance_type), STARTUP_SECONDS),
            "containers": [_transform_container(transform, model, instance_type, settings, size_limit)],
            "volumes": model_volumes(model.spec, size_limit, settings),
        }
    )
    spec.update(node_placement(instance_type))
    return spec


def transform_job_manifest(
    transform: TransformJob, model: Model, instance_type: InstanceType, settings: Settings
) -> Manifest:
    spec = transform.spec
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": object_meta(transform, job_name(transform.name), transform_labels(transform)),
        "spec": {
            "completionMode": "Indexed",
            "completions": spec.instance_count,
            "parallelism": spec.instance_count,
            "backoffLimit": BACKOFF_LIMIT,
            "podFailurePolicy": {
                "rules": [
                    {  # bad data or options: every retry would fail the same way
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": TRANSFORM_CONTAINER,
                            "operator": "In",
                            "values": [EXIT_DATA, EXIT_USAGE],
                        },
                    },
                    {  # a node drained or a pod preempted: not the job's fault
                        "action": "Ignore",
                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                    },
                ]
            },
            "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished,
            "template": {
                "metadata": {"labels": transform_labels(transform)},
                "spec": _pod_spec(transform, model, instance_type, settings),
            },
        },
    }

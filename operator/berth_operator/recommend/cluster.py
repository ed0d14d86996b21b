"""`berth recommend --cluster`, the objects (pure): per candidate a one-replica Deployment of the
serving runtime with the instance type's real resources, node selector and tolerations, and its
Service; per load level a Job whose pod drives it with the load generator and leaves the figures
in its termination message. Every object carries the run's label, so one delete by label (on the
way out, also after Ctrl-C) removes all of them.
"""

from __future__ import annotations

from typing import Any

from berth_serving.config import DEFAULT_PORT, MODEL_MOUNT_PATH

from ..api import ModelSpec
from ..planner import labels
from ..planner.names import dns_label
from ..planner.pods import (
    SERVER_CONTAINER,
    container_resources,
    container_security,
    ephemeral_storage,
    model_init_container,
    model_volume_mounts,
    model_volume_size,
    model_volumes,
    node_placement,
    pod_scaffold,
)
from ..planner.types import Manifest
from ..settings import Settings
from .search import Candidate, Load

RUN_LABEL = "berth.dev/recommend-run"
ROLE_LABEL = "berth.dev/recommend-role"  # server (a candidate's replica) or load (a load Job's pod)
COMPONENT = "recommend"
PAYLOAD_KEY = "payload"
PAYLOAD_MOUNT = "/var/run/berth/payload"
TERMINATION_LOG = "/dev/termination-log"
JOB_SECONDS_SLACK = 120  # a Job that outlives its load by this much is stuck: the API server ends it


def run_labels(run: str) -> dict[str, str]:
    return {
        labels.PART_OF: labels.PART_OF_VALUE,
        labels.MANAGED_BY: "berth-recommend",
        labels.COMPONENT: COMPONENT,
        RUN_LABEL: run,
    }


def candidate_name(run: str, candidate: Candidate) -> str:
    return dns_label(
        "rec", run, candidate.instance_type, str(candidate.intra_op_threads), str(candidate.max_batch_size)
    )


def _meta(name: str, namespace: str, run: str, extra: dict[str, str] | None = None) -> Manifest:
    return {"name": name, "namespace": namespace, "labels": {**run_labels(run), **(extra or {})}}


def payload_config_map(run: str, namespace: str, payload: bytes) -> Manifest:
    import base64

    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(dns_label("rec", run, "payload"), namespace, run),
        "binaryData": {PAYLOAD_KEY: base64.b64encode(payload).decode()},
    }


def candidate_objects(
    run: str, namespace: str, candidate: Candidate, model_uri: str, settings: Settings
) -> list[Manifest]:
    """The candidate's serving Deployment (one replica, auth None: only the load Job calls it) and Service."""
    instance_type = settings.instance_types[candidate.instance_type]
    model = ModelSpec.model_validate({"modelUri": model_uri})
    name = candidate_name(run, candidate)
    selector = {RUN_LABEL: run, "berth.dev/recommend-candidate": name}
    size_limit = model_volume_size(instance_type)
    quantities = {part: dict(getattr(instance_type.resources, part)) for part in ("requests", "limits")}
    image = settings.images.gpu if instance_type.accelerator == "nvidia" else settings.images.cpu
    server: dict[str, Any] = {
        "name": SERVER_CONTAINER,
        "image": image,
        "imagePullPolicy": settings.images.pull_policy,
        "command": ["berth"],
        "args": [
            "serve",
            MODEL_MOUNT_PATH,
            "--intra-op-threads",
            str(candidate.intra_op_threads),
            "--max-batch-size",
            str(candidate.max_batch_size),
        ],
        "ports": [{"name": "http", "containerPort": DEFAULT_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/ping", "port": "http"}, "periodSeconds": 2},
        "resources": container_resources(quantities, ephemeral_storage(size_limit)),
        "securityContext": container_security(),
        "volumeMounts": model_volume_mounts(),
    }
    pod = pod_scaffold(model)
    pod.update(
        {
            "initContainers": [model_init_container(model, settings, size_limit)],
            "containers": [server],
            "volumes": model_volumes(model, size_limit, settings),
        }
    )
    pod.update(node_placement(instance_type))
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, namespace, run),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": {**run_labels(run), **selector, ROLE_LABEL: "server"}},
                "spec": pod,
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace, run),
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": DEFAULT_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    return [deployment, service]


def load_job(
    run: str, namespace: str, candidate: Candidate, load: Load, index: int, content_type: str, image: str
) -> Manifest:
    """One load level against the candidate's Service; the figures are the pod's termination message."""
    target = candidate_name(run, candidate)
    url = f"http://{target}.{namespace}.svc:{DEFAULT_PORT}/invocations"
    warmup = min(1.0, load.seconds / 3)
    container = {
        "name": "load",
        "image": image,
        "command": ["python", "-m", "berth_operator.recommend.loadgen"],
        "args": [
            url,
            f"{PAYLOAD_MOUNT}/{PAYLOAD_KEY}",
            content_type,
            str(load.users),
            str(warmup),
            str(load.seconds),
            str(load.users_per_minute),
            TERMINATION_LOG,
        ],
        "resources": {"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": container_security(),
        "terminationMessagePolicy": "File",
        "volumeMounts": [{"name": "payload", "mountPath": PAYLOAD_MOUNT, "readOnly": True}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(dns_label("rec", run, target, "load", str(index)), namespace, run),
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": int(load.seconds + warmup) + JOB_SECONDS_SLACK,
            "template": {
                "metadata": {"labels": {**run_labels(run), ROLE_LABEL: "load"}},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001},
                    "containers": [container],
                    "volumes": [
                        {"name": "payload", "configMap": {"name": dns_label("rec", run, "payload")}},
                    ],
                },
            },
        },
    }

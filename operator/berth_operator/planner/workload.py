"""Deployment, Service, HPA and PDB of one variant."""

from __future__ import annotations

import copy
from typing import Any

from berth_serving.config import DEFAULT_PORT, DEFAULT_TIMEOUT_SECONDS, MODEL_MOUNT_PATH, ServeConfig

from ..api import Endpoint, ModelSpec
from ..settings import InstanceType, Settings
from . import labels
from .fleet import VariantPlan
from .meta import object_meta
from .types import Manifest

INIT_CONTAINER = "storage-initializer"
SERVER_CONTAINER = "server"
PORT_NAME = "http"
MODEL_VOLUME = "model"
TMP_VOLUME = "tmp"
PVC_MOUNT_ROOT = "/mnt/pvc"
RUN_AS = 1000
PRE_STOP_SECONDS = 5  # time for the gateway to stop sending to a terminating pod
# Enough to finish a request that started just before SIGTERM (the server's own timeout).
TERMINATION_GRACE_SECONDS = PRE_STOP_SECONDS + int(DEFAULT_TIMEOUT_SECONDS) + 5
GPU_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
INVOCATIONS_METRIC = "berth_invocations_per_second"
# For Prometheus (and prometheus-adapter, which serves the HPA's invocations metric).
SCRAPE_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(DEFAULT_PORT),
    "prometheus.io/path": "/metrics",
}
INIT_RESOURCES: dict[str, Any] = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}


def variant_objects(endpoint: Endpoint, variant: VariantPlan, settings: Settings) -> list[Manifest]:
    objects = [deployment(endpoint, variant, settings), service(endpoint, variant)]
    if variant.autoscaling is not None:
        objects.append(horizontal_pod_autoscaler(endpoint, variant))
    if variant.replicas > 1:
        objects.append(pod_disruption_budget(endpoint, variant))
    return objects


def _labels(variant: VariantPlan) -> dict[str, str]:
    return labels.variant_labels(variant.endpoint, variant.config, variant.name, variant.model.name)


def _selector(variant: VariantPlan) -> dict[str, str]:
    return labels.selector_labels(variant.endpoint, variant.config, variant.name)


def _merged_resources(variant: VariantPlan) -> dict[str, Any]:
    """The catalog's requests and limits, with the variant's overrides applied key by key."""
    catalog = variant.instance_type.resources
    override = variant.spec.resources
    result: dict[str, Any] = {}
    for part in ("requests", "limits"):
        merged = dict(getattr(catalog, part))
        if override is not None:
            merged.update(getattr(override, part))
        if merged:
            result[part] = {key: quantity(merged[key]) for key in sorted(merged)}
    return result


def quantity(value: int | float | str) -> str:
    """A quantity as the API server writes it back for plain numbers (1 -> "1", 0.5 -> "500m"),
    so an observed Deployment compares equal to the planned one."""
    if isinstance(value, str):
        return value
    if float(value).is_integer():
        return str(int(value))
    return f"{round(float(value) * 1000)}m"


def _pvc_claim(uri: str) -> str | None:
    """CLAIM of a pvc://CLAIM/PATH URI."""
    if not uri.startswith("pvc://"):
        return None
    return uri[len("pvc://") :].partition("/")[0]


def _image(variant: VariantPlan, settings: Settings) -> str:
    if variant.model.spec.image:
        return variant.model.spec.image
    return settings.images.gpu if variant.instance_type.accelerator == "nvidia" else settings.images.cpu


def _server_env(variant: VariantPlan) -> list[dict[str, Any]]:
    runtime = variant.model.spec.runtime
    config = ServeConfig(
        model_uri=MODEL_MOUNT_PATH,
        port=DEFAULT_PORT,
        variant=variant.name,
        model_name=variant.model.name,
        max_batch_size=runtime.max_batch_size,
        max_batch_delay_ms=runtime.max_batch_delay_ms,
        intra_op_threads=runtime.intra_op_threads,
        graph_optimization_level=runtime.graph_optimization_level,
        providers=GPU_PROVIDERS if variant.instance_type.accelerator == "nvidia" else (),
    )
    user_env = [e.to_wire() for e in variant.model.spec.env]
    user_names = {e["name"] for e in user_env}
    ours = [{"name": k, "value": v} for k, v in config.to_env().items() if k not in user_names]
    return ours + user_env


# ---- the pod scaffolding shared by serving pods and TransformJob pods (planner/transform.py)


def container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def model_volumes(model: ModelSpec) -> list[dict[str, Any]]:
    """The pod's volumes: the model and /tmp emptyDirs, and the claim of a pvc:// model URI."""
    volumes: list[dict[str, Any]] = [
        {"name": MODEL_VOLUME, "emptyDir": {}},
        {"name": TMP_VOLUME, "emptyDir": {}},
    ]
    claim = _pvc_claim(model.model_uri)
    if claim is not None:  # the init container reads the model from the claim
        volumes.append({"name": "pvc", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    return volumes


def model_volume_mounts() -> list[dict[str, Any]]:
    """The main container's mounts: the fetched model, read-only, and /tmp."""
    return [
        {"name": MODEL_VOLUME, "mountPath": MODEL_MOUNT_PATH, "readOnly": True},
        {"name": TMP_VOLUME, "mountPath": "/tmp"},
    ]


def model_init_container(model: ModelSpec, settings: Settings) -> dict[str, Any]:
    """The storage-initializer: `berth fetch-model` of the model into the model volume."""
    uri = model.model_uri
    mounts: list[dict[str, Any]] = [
        {"name": MODEL_VOLUME, "mountPath": MODEL_MOUNT_PATH},
        {"name": TMP_VOLUME, "mountPath": "/tmp"},
    ]
    claim = _pvc_claim(uri)
    if claim is not None:
        # fetch-model reads pvc://CLAIM/PATH at /mnt/pvc/CLAIM/PATH
        mounts.append({"name": "pvc", "mountPath": f"{PVC_MOUNT_ROOT}/{claim}", "readOnly": True})
    args = ["fetch-model", uri, MODEL_MOUNT_PATH]
    if model.sha256:
        args += ["--sha256", model.sha256]
    container: dict[str, Any] = {
        "name": INIT_CONTAINER,
        # Berth's own image always has `berth fetch-model`, even when the server image is BYO.
        "image": settings.images.cpu,
        "imagePullPolicy": settings.images.pull_policy,
        "command": ["berth"],
        "args": args,
        "resources": copy.deepcopy(INIT_RESOURCES),
        # berth writes its error to /dev/termination-log; the log tail stands in if it could not.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security(),
        "volumeMounts": mounts,
    }
    if model.env:
        container["env"] = [e.to_wire() for e in model.env]
    if model.credentials_secret_ref is not None:
        container["envFrom"] = [{"secretRef": {"name": model.credentials_secret_ref.name}}]
    return container


def pod_scaffold(model: ModelSpec) -> dict[str, Any]:
    """The pod-level fields every pod that runs the model has, in the order the pod spec lists them:
    serviceAccountName (when the model has one), no API token or service links, and a non-root
    securityContext."""
    spec: dict[str, Any] = {}
    if model.service_account_name:
        spec["serviceAccountName"] = model.service_account_name
    spec.update(
        {
            # The pods never call the Kubernetes API; IRSA and workload identity need no token here.
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RUN_AS,
                "runAsGroup": RUN_AS,
                "fsGroup": RUN_AS,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        }
    )
    return spec


def node_placement(instance_type: InstanceType) -> dict[str, Any]:
    """The instance type's nodeSelector and tolerations, those it has."""
    placement: dict[str, Any] = {}
    if instance_type.node_selector:
        placement["nodeSelector"] = dict(sorted(instance_type.node_selector.items()))
    if instance_type.tolerations:
        placement["tolerations"] = [dict(t) for t in instance_type.tolerations]
    return placement


# ---- serving pods


def _server_container(variant: VariantPlan, settings: Settings) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": SERVER_CONTAINER,
        "image": _image(variant, settings),
        "imagePullPolicy": settings.images.pull_policy,
    }
    if not variant.model.spec.image:  # a bring-your-own image keeps its own entrypoint
        container["command"] = ["berth"]
        container["args"] = ["serve", MODEL_MOUNT_PATH]
    container.update(
        {
            "env": _server_env(variant),
            "ports": [{"name": PORT_NAME, "containerPort": DEFAULT_PORT, "protocol": "TCP"}],
            "readinessProbe": {
                "httpGet": {"path": "/ping", "port": PORT_NAME},
                "periodSeconds": 5,
                "timeoutSeconds": 2,
                "failureThreshold": 2,
            },
            "livenessProbe": {
                "httpGet": {"path": "/v2/health/live", "port": PORT_NAME},
                "periodSeconds": 10,
                "timeoutSeconds": 5,
                "failureThreshold": 3,
            },
            "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "resources": _merged_resources(variant),
            "securityContext": container_security(),
            "volumeMounts": model_volume_mounts(),
        }
    )
    return container


def _pod_spec(variant: VariantPlan, settings: Settings) -> dict[str, Any]:
    model = variant.model.spec
    spec = pod_scaffold(model)
    spec.update(
        {
            "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
            "initContainers": [model_init_container(model, settings)],
            "containers": [_server_container(variant, settings)],
            "volumes": model_volumes(model),
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": key,
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": _selector(variant)},
                }
                for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
            ],
        }
    )
    spec.update(node_placement(variant.instance_type))
    return spec


def deployment(endpoint: Endpoint, variant: VariantPlan, settings: Settings) -> Manifest:
    spec: dict[str, Any] = {}
    if variant.autoscaling is None:  # with autoscaling the HPA owns replicas
        spec["replicas"] = variant.replicas
    spec.update(
        {
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": _selector(variant)},
            # Never below the wanted capacity while pods are replaced.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": _labels(variant), "annotations": dict(SCRAPE_ANNOTATIONS)},
                "spec": _pod_spec(variant, settings),
            },
        }
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(endpoint, variant.object_name, _labels(variant)),
        "spec": spec,
    }


def service(endpoint: Endpoint, variant: VariantPlan) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(endpoint, variant.object_name, _labels(variant)),
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(variant),
            "ports": [{"name": PORT_NAME, "port": DEFAULT_PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


def horizontal_pod_autoscaler(endpoint: Endpoint, variant: VariantPlan) -> Manifest:
    scaling = variant.autoscaling
    assert scaling is not None
    metric: dict[str, Any]
    if scaling.target_cpu_utilization is not None:
        metric = {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": scaling.target_cpu_utilization},
            },
        }
    else:
        metric = {
            "type": "Pods",
            "pods": {
                "metric": {"name": INVOCATIONS_METRIC},
                "target": {
                    "type": "AverageValue",
                    "averageValue": str(scaling.target_invocations_per_replica),
                },
            },
        }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": object_meta(endpoint, variant.object_name, _labels(variant)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": variant.object_name},
            "minReplicas": variant.replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [metric],
            "behavior": {
                "scaleDown": {"stabilizationWindowSeconds": scaling.scale_in_cooldown_seconds},
                "scaleUp": {"stabilizationWindowSeconds": scaling.scale_out_cooldown_seconds},
            },
        },
    }


def pod_disruption_budget(endpoint: Endpoint, variant: VariantPlan) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(endpoint, variant.object_name, _labels(variant)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(variant)}},
    }

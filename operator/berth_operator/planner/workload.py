"""Deployment, Service, autoscaler (autoscaling.py) and PDB of one variant."""

from __future__ import annotations

from typing import Any

from berth_serving.config import (
    DEFAULT_PORT,
    DEFAULT_TIMEOUT_SECONDS,
    ENV,
    MODEL_MOUNT_PATH,
    ServeConfig,
    WarmupRequest,
)

from ..api import Endpoint
from ..settings import Settings
from . import capture, labels, multimodel, pipeline, serverless
from .access import ServingAccess, access_env, access_mounts, access_volumes, serving_access
from .asyncinf import (
    WORKER_METRICS_PORT,
    WORKER_METRICS_PORT_NAME,
    redis_configured,
    server_env,
    termination_grace_seconds,
    worker_container,
)
from .autoscaling import autoscaler_objects
from .fleet import VariantPlan
from .meta import object_meta
from .names import peers_service_name
from .pods import (
    SERVER_CONTAINER,
    STARTUP_SECONDS,
    container_resources,
    container_security,
    ephemeral_storage,
    model_init_containers,
    model_volume_mounts,
    model_volume_size,
    model_volumes,
    multi_model_mounts,
    multi_model_volumes,
    node_placement,
    pod_scaffold,
    storage_credentials,
)
from .types import Manifest

PORT_NAME = "http"
PRE_STOP_SECONDS = 5  # time for the gateway to stop sending to a terminating pod
# Enough to finish a request that started just before SIGTERM (the server's own timeout).
TERMINATION_GRACE_SECONDS = PRE_STOP_SECONDS + int(DEFAULT_TIMEOUT_SECONDS) + 5
GPU_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
# For Prometheus (and prometheus-adapter, which serves the HPA's invocations metric).
SCRAPE_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(DEFAULT_PORT),
    "prometheus.io/path": "/metrics",
}


def variant_objects(
    endpoint: Endpoint, variant: VariantPlan, settings: Settings, unavailable: frozenset[str] = frozenset()
) -> list[Manifest]:
    """The variant's objects; an autoscaler of a kind the cluster does not serve is left out (the
    status says so) and the Deployment then holds the floor itself."""
    access = serving_access(endpoint, settings, variant.model.spec.service_account_name)
    scalers = [
        o
        for o in autoscaler_objects(endpoint, variant, settings, _labels(variant))
        if o["kind"] not in unavailable
    ]
    if variant.serverless is not None and serverless.scales_to_zero(settings, unavailable):
        scalers = [
            serverless.http_scaled_object(
                endpoint, variant.object_name, variant.serverless, variant.replicas, _labels(variant)
            )
        ]
    objects = [
        deployment(endpoint, variant, settings, access, scaled=bool(scalers)),
        service(endpoint, variant),
    ]
    if variant.multi_model:
        objects.append(
            multimodel.headless_service(
                endpoint,
                peers_service_name(variant.endpoint, variant.config, variant.name),
                _selector(variant),
                _labels(variant),
            )
        )
    objects += scalers
    if variant.replicas > 1:
        objects.append(pod_disruption_budget(endpoint, variant))
    return objects


def _labels(variant: VariantPlan) -> dict[str, str]:
    return labels.variant_labels(variant.endpoint, variant.config, variant.name, variant.model.name)


def _selector(variant: VariantPlan) -> dict[str, str]:
    return labels.selector_labels(variant.endpoint, variant.config, variant.name)


def _merged_quantities(variant: VariantPlan) -> dict[str, dict[str, int | float | str]]:
    """The catalog's requests and limits with the variant's overrides applied key by key: what one
    replica's pod may take (a pipeline's containers share it: planner/pipeline.py)."""
    catalog = variant.instance_type.resources
    override = variant.spec.resources
    quantities: dict[str, dict[str, int | float | str]] = {}
    for part in ("requests", "limits"):
        merged = dict(getattr(catalog, part))
        if override is not None:
            merged.update(getattr(override, part))
        quantities[part] = merged
    return quantities


def _merged_resources(variant: VariantPlan, size_limit: str) -> dict[str, Any]:
    """The server's share of the pod's quantities, and an ephemeral-storage request for the model
    volume."""
    quantities = _merged_quantities(variant)
    if variant.model.spec.is_pipeline:
        quantities = pipeline.server_quantities(quantities, variant.model.spec)
    return container_resources(quantities, ephemeral_storage(size_limit))


def _image(variant: VariantPlan, settings: Settings) -> str:
    if variant.model.spec.image:
        return variant.model.spec.image
    return settings.images.gpu if variant.instance_type.accelerator == "nvidia" else settings.images.cpu


def _multi_model_settings(variant: VariantPlan, namespace: str) -> dict[str, Any]:
    """ServeConfig's multi-model fields: the prefix, the cache, the peers and the warm-up."""
    spec = variant.model.spec
    if spec.is_pipeline:
        return {"model_uri": "", "pipeline": pipeline.served_stages(spec)}
    if not spec.is_multi_model:
        return {"model_uri": MODEL_MOUNT_PATH}
    settings = spec.multi_model_settings
    warm = variant.warm_from if settings.warm_models > 0 else ""
    return {
        "model_uri": spec.model_uri,
        "multi_model": True,
        "cache_bytes": settings.cache_bytes or 0,
        "max_loaded_models": settings.max_loaded_models or 0,
        "peers": multimodel.peers_address(variant.endpoint, variant.config, variant.name, namespace),
        "warm_from": warm,
        "warm_models": settings.warm_models if warm else 0,
    }


def _server_env(variant: VariantPlan, access: ServingAccess, namespace: str) -> list[dict[str, Any]]:
    runtime = variant.model.spec.runtime
    config = ServeConfig(
        **_multi_model_settings(variant, namespace),
        port=DEFAULT_PORT,
        variant=variant.name,
        model_name=variant.model.name,
        max_batch_size=runtime.max_batch_size,
        max_batch_delay_ms=runtime.max_batch_delay_ms,
        intra_op_threads=runtime.intra_op_threads,
        graph_optimization_level=runtime.graph_optimization_level,
        providers=GPU_PROVIDERS if variant.instance_type.accelerator == "nvidia" else (),
        endpoint_config=variant.config,
        endpoint_variants=variant.production_names,
        model_aliases=(variant.endpoint,) if variant.endpoint != variant.model.name else (),
        warmup_requests=tuple(
            WarmupRequest(r.body, r.content_type) for r in variant.model.spec.warmup_requests
        ),
    )
    # The Endpoint decides who may invoke it and the EndpointConfig what is captured: a Model's
    # env cannot loosen or silence either.
    auth = {**access_env(access), **server_env(variant), **capture.capture_env(variant)}
    user_env = [e.to_wire() for e in variant.model.spec.env if e.name not in auth]
    user_names = {e["name"] for e in user_env}
    ours = [
        {"name": k, "value": v}
        for k, v in config.to_env().items()
        if k not in user_names and not (k == ENV["model_uri"] and config.pipeline)  # no model: stages
    ]
    if config.multi_model and ENV["pod_ip"] not in user_names:
        ours.append(multimodel.pod_ip_env())
    return ours + [{"name": k, "value": v} for k, v in auth.items()] + user_env


# ---- serving pods


def _server_container(
    variant: VariantPlan, settings: Settings, size_limit: str, access: ServingAccess, namespace: str
) -> dict[str, Any]:
    model = variant.model.spec
    container: dict[str, Any] = {
        "name": SERVER_CONTAINER,
        "image": _image(variant, settings),
        "imagePullPolicy": settings.images.pull_policy,
    }
    if not model.image:  # a bring-your-own image keeps its own entrypoint
        container["command"] = ["berth"]
        if model.is_pipeline:  # the stages are in BERTH_PIPELINE
            container["args"] = ["serve"]
        elif model.is_multi_model:
            container["args"] = ["serve", "--multi-model", model.uri]
        else:
            container["args"] = ["serve", MODEL_MOUNT_PATH]
    container["env"] = _server_env(variant, access, namespace)
    # A multi-model server fetches each model itself, with the model's credentials (no
    # storage-initializer); a capturing one writes with the capture's (last: its keys win).
    credentials = (storage_credentials(model) if model.is_multi_model else []) + capture.capture_credentials(
        variant.data_capture
    )
    if credentials:
        container["envFrom"] = credentials
    mounts = multi_model_mounts(model) if model.is_multi_model else model_volume_mounts()
    container.update(
        {
            "ports": [{"name": PORT_NAME, "containerPort": DEFAULT_PORT, "protocol": "TCP"}],
            "startupProbe": {
                "httpGet": {"path": "/ping", "port": PORT_NAME},
                "periodSeconds": 5,
                "timeoutSeconds": 2,
                "failureThreshold": STARTUP_SECONDS // 5,
            },
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
            "resources": _merged_resources(variant, size_limit),
            "securityContext": container_security(),
            "volumeMounts": mounts + access_mounts(access),
        }
    )
    return container


def _sidecars(variant: VariantPlan, settings: Settings) -> list[dict[str, Any]]:
    """An async variant's worker; none until the settings name a queue (the status says so)."""
    if variant.async_config is None or not redis_configured(settings):
        return []
    return [worker_container(variant, settings)]


def _pod_spec(
    variant: VariantPlan, settings: Settings, access: ServingAccess, namespace: str
) -> dict[str, Any]:
    model = variant.model.spec
    size_limit = model_volume_size(variant.instance_type, variant.spec.volume_size_in_gb)
    spec = pod_scaffold(model, access.service_account)
    spec["terminationGracePeriodSeconds"] = termination_grace_seconds(variant, TERMINATION_GRACE_SECONDS)
    if model.is_multi_model:  # the server fetches each model on its first request
        volumes = multi_model_volumes(model, size_limit)
    else:
        # The fetches one after the other, then a pipeline's image stages (native sidecars).
        spec["initContainers"] = model_init_containers(model, settings, size_limit) + (
            pipeline.stage_containers(model, settings, _merged_quantities(variant), STARTUP_SECONDS)
        )
        volumes = model_volumes(model, size_limit, settings)
    spec.update(
        {
            "containers": [
                _server_container(variant, settings, size_limit, access, namespace),
                *_sidecars(variant, settings),
            ],
            "volumes": volumes + access_volumes(access),
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


def deployment(
    endpoint: Endpoint, variant: VariantPlan, settings: Settings, access: ServingAccess, *, scaled: bool
) -> Manifest:
    spec: dict[str, Any] = {}
    if not scaled:  # with an autoscaler the HPA (KEDA's too) owns replicas
        # Without its ScaledObject (no KEDA) nothing would start an async or serverless fleet at
        # zero: keep one.
        floor = 1 if variant.async_config is not None or variant.serverless is not None else 0
        spec["replicas"] = max(variant.replicas, floor)
    spec.update(
        {
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": _selector(variant)},
            # Never below the wanted capacity while pods are replaced.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": _labels(variant), "annotations": dict(SCRAPE_ANNOTATIONS)},
                "spec": _pod_spec(variant, settings, access, endpoint.namespace),
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
            "ports": [
                {"name": PORT_NAME, "port": DEFAULT_PORT, "targetPort": PORT_NAME, "protocol": "TCP"},
                *_worker_ports(variant),
            ],
        },
    }


def _worker_ports(variant: VariantPlan) -> list[dict[str, Any]]:
    """An async variant's Service also names the workers' metrics port, for a ServiceMonitor."""
    if variant.async_config is None:
        return []
    return [
        {
            "name": WORKER_METRICS_PORT_NAME,
            "port": WORKER_METRICS_PORT,
            "targetPort": WORKER_METRICS_PORT_NAME,
            "protocol": "TCP",
        }
    ]


def pod_disruption_budget(endpoint: Endpoint, variant: VariantPlan) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(endpoint, variant.object_name, _labels(variant)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(variant)}},
    }

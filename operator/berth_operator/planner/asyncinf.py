"""Asynchronous inference's objects and status. Pure, like the rest of the planner.

An EndpointConfig with asyncInferenceConfig makes each production variant an async fleet: its
pods get a worker sidecar (`berth async-worker`) that takes messages from the variant's Redis
stream and calls the replica's /invocations over the pod's loopback. One front door per
Endpoint (`berth async-frontdoor`, a Deployment, a Service and the ConfigMap with its
routes.json) queues the requests by the weights the HTTPRoute carries. An autoscaled async
variant gets a KEDA ScaledObject on its stream (scale to zero and back).

KEDA reads the queue itself and takes an address (host:port) and a password, not a URL: with
`async.redis.url` the address is planned from the URL and the password (if any) reaches KEDA as
an env var of the worker container (`passwordFromEnv`, read from the ScaledObject's target
container); with `async.redis.secretRef` the Secret's addressKey and passwordKey entries do the
same through secretKeyRef env vars. No TriggerAuthentication is needed, so nothing more than the
ScaledObject needs RBAC, and no password is ever written into a ScaledObject.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from berth_serving.asyncinf.keys import (
    CONSUMER_GROUP,
    DEFAULT_INVOCATION_TIMEOUT_SECONDS,
    MAX_INVOCATION_TIMEOUT_SECONDS,
    REDIS_URL_ENV,
    ROUTES_FILE_KEY,
    ROUTES_MOUNT,
    Routes,
    RouteVariant,
    stream_key,
)
from berth_serving.config import DEFAULT_PORT, ENV

from ..api import Endpoint, EndpointConfig, EndpointStatus, Model
from ..settings import Settings
from . import labels
from .access import ASYNC_METRICS_PORT, access_env, access_mounts, access_volumes, serving_access
from .fleet import Fleet, VariantPlan
from .meta import object_meta
from .names import async_frontdoor_name, async_routes_name
from .podfailures import waiting_failure
from .pods import TMP_SIZE_LIMIT, TMP_VOLUME, container_resources, container_security, pod_scaffold
from .types import FleetMetrics, Manifest, Observed, QueueState

WORKER_CONTAINER = "async-worker"
FRONTDOOR_CONTAINER = "frontdoor"
FRONTDOOR_COMPONENT = "async-frontdoor"
WORKER_METRICS_PORT = ASYNC_METRICS_PORT
WORKER_METRICS_PORT_NAME = "async-metrics"
FRONTDOOR_SERVICE_PORT = 80
ROUTES_VOLUME = "async-routes"
TRUST_LOOPBACK_ENV = ENV["auth_trust_loopback"]
REQUEST_TIMEOUT_ENV = ENV["timeout_seconds"]
POD_NAME_ENV = "POD_NAME"
REDIS_ADDRESS_ENV = "BERTH_REDIS_ADDRESS"  # host:port, for KEDA (secretRef with addressKey)
REDIS_PASSWORD_ENV = "BERTH_REDIS_PASSWORD"  # for KEDA's passwordFromEnv
REDIS_USERNAME_ENV = "BERTH_REDIS_USERNAME"  # for KEDA's usernameFromEnv (an ACL user in the URL)
DEFAULT_REDIS_PORT = 6379
INVOKE_URL = f"http://127.0.0.1:{DEFAULT_PORT}/invocations"
# KEDA asks the queue this often: a message waiting at zero replicas starts one within it.
KEDA_POLLING_SECONDS = 5
# The front door holds an inline body (6 MiB by default) while it stages it; the worker streams.
FRONTDOOR_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}
WORKER_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"memory": "512Mi"},
}

MSG_NO_REDIS = (
    "asyncInferenceConfig needs a queue, and the operator settings name none: set async.redis.url or "
    "async.redis.secretRef (the chart's async.redis.deploy runs a small Redis for a quick start)"
)
MSG_NO_ADDRESS_KEY = (
    "KEDA needs the Redis address apart from the URL: give async.redis.secretRef.addressKey "
    "(an entry of the Secret holding host:port)"
)


# ---------------------------------------------------------------- the queue's connection


def redis_configured(settings: Settings) -> bool:
    return settings.async_.redis.configured


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def redis_env(settings: Settings, *, for_keda: bool = False) -> list[dict[str, Any]]:
    """BERTH_REDIS_URL for the front door and the workers; with for_keda the parts KEDA reads from
    the worker container too (its ScaledObject names that container)."""
    redis = settings.async_.redis
    if redis.secret_ref is not None:
        ref = redis.secret_ref
        env = [_secret_env(REDIS_URL_ENV, ref.name, ref.key)]
        if for_keda and ref.address_key:
            env.append(_secret_env(REDIS_ADDRESS_ENV, ref.name, ref.address_key))
        if for_keda and ref.password_key:
            env.append(_secret_env(REDIS_PASSWORD_ENV, ref.name, ref.password_key))
        return env
    if redis.url is None:
        return []
    env = [{"name": REDIS_URL_ENV, "value": redis.url}]
    parts = urlsplit(redis.url)
    if for_keda and parts.username:
        env.append({"name": REDIS_USERNAME_ENV, "value": unquote(parts.username)})
    if for_keda and parts.password:
        env.append({"name": REDIS_PASSWORD_ENV, "value": unquote(parts.password)})
    return env


def keda_connection(settings: Settings) -> dict[str, str] | None:
    """The redis-streams trigger's connection metadata, or None when KEDA cannot be told where."""
    redis = settings.async_.redis
    if redis.secret_ref is not None:
        ref = redis.secret_ref
        if not ref.address_key:
            return None
        found = {"addressFromEnv": REDIS_ADDRESS_ENV}
        if ref.password_key:
            found["passwordFromEnv"] = REDIS_PASSWORD_ENV
        return found
    if redis.url is None:
        return None
    parts = urlsplit(redis.url)
    host = parts.hostname or "localhost"
    address = (
        f"[{host}]:{parts.port or DEFAULT_REDIS_PORT}"
        if ":" in host
        else f"{host}:{parts.port or DEFAULT_REDIS_PORT}"
    )
    found = {"address": address}
    if parts.username:
        found["usernameFromEnv"] = REDIS_USERNAME_ENV
    if parts.password:
        found["passwordFromEnv"] = REDIS_PASSWORD_ENV
    database = parts.path.strip("/")
    if database.isdigit() and database != "0":
        found["databaseIndex"] = database
    if parts.scheme == "rediss":
        found["enableTLS"] = "true"
    return found


# ---------------------------------------------------------------- the worker sidecar


def _model_env(model: Model, reserved: Iterable[str]) -> list[dict[str, Any]]:
    """The Model's env (storage endpoints, regions): the worker and the front door read and write
    the same object storage the model came from."""
    taken = set(reserved)
    return [e.to_wire() for e in model.spec.env if e.name not in taken]


def _credentials(model: Model) -> dict[str, Any]:
    ref = model.spec.credentials_secret_ref
    return {"envFrom": [{"secretRef": {"name": ref.name}}]} if ref is not None else {}


def worker_container(variant: VariantPlan, settings: Settings) -> dict[str, Any]:
    """`berth async-worker` beside the server: at most maxConcurrentInvocationsPerInstance messages
    at a time, each answered through the replica's /invocations on the pod's loopback."""
    assert variant.async_config is not None and variant.stream is not None
    config = variant.async_config
    args = [
        "async-worker",
        "--stream",
        variant.stream,
        "--consumer",
        f"$({POD_NAME_ENV})",
        "--invoke-url",
        INVOKE_URL,
        "--max-concurrency",
        str(config.client_config.max_concurrent_invocations_per_instance),
        "--variant",
        variant.name,
        "--endpoint-config",
        variant.config,
    ]
    notification = config.output_config.notification
    if notification is not None and notification.success_webhook:
        args += ["--success-webhook", notification.success_webhook]
    if notification is not None and notification.error_webhook:
        args += ["--error-webhook", notification.error_webhook]
    env: list[dict[str, Any]] = [
        {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    ]
    env += redis_env(settings, for_keda=True)
    env += _model_env(variant.model, (e["name"] for e in env))
    return {
        "name": WORKER_CONTAINER,
        "image": settings.images.cpu,  # Berth's own image has `berth`, whatever image serves the model
        "imagePullPolicy": settings.images.pull_policy,
        "command": ["berth"],
        "args": args,
        "env": env,
        **_credentials(variant.model),
        "ports": [
            {"name": WORKER_METRICS_PORT_NAME, "containerPort": WORKER_METRICS_PORT, "protocol": "TCP"}
        ],
        "resources": container_resources(WORKER_RESOURCES, None),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security(),
        "volumeMounts": [{"name": TMP_VOLUME, "mountPath": "/tmp"}],
    }


def server_env(variant: VariantPlan) -> dict[str, str]:
    """The serving container of an async variant lets its own pod's loopback in without a
    credential, and gives a request as long as X-Berth-Invocation-Timeout-Seconds may ask."""
    if variant.async_config is None:
        return {}
    return {TRUST_LOOPBACK_ENV: "1", REQUEST_TIMEOUT_ENV: str(MAX_INVOCATION_TIMEOUT_SECONDS)}


def termination_grace_seconds(variant: VariantPlan, default: int) -> int:
    """An async pod's worker finishes its messages in flight on SIGTERM: give it the default
    invocation timeout for that (a longer message is answered again by another replica)."""
    if variant.async_config is None:
        return default
    return max(default, DEFAULT_INVOCATION_TIMEOUT_SECONDS + 10)


# ---------------------------------------------------------------- KEDA


def scaled_object(
    endpoint: Endpoint, variant: VariantPlan, settings: Settings, meta_labels: dict[str, str]
) -> Manifest | None:
    """Two redis-streams triggers on the variant's stream and group: the lag (messages no worker has
    taken yet) against targetBacklogPerInstance, active from one message so a fleet at zero starts;
    and the pending entries (in flight) against the per-instance concurrency, so replicas that work
    on messages are not scaled away. The HPA KEDA makes takes the larger of the two."""
    scaling = variant.autoscaling
    connection = keda_connection(settings)
    if scaling is None or variant.stream is None or variant.async_config is None or connection is None:
        return None
    target = scaling.target_backlog_per_instance or 1
    stream = {**connection, "stream": variant.stream, "consumerGroup": CONSUMER_GROUP}
    concurrency = variant.async_config.client_config.max_concurrent_invocations_per_instance
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": object_meta(endpoint, variant.object_name, meta_labels),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": variant.object_name,
                "envSourceContainerName": WORKER_CONTAINER,
            },
            "pollingInterval": KEDA_POLLING_SECONDS,
            "cooldownPeriod": scaling.scale_in_cooldown_seconds,
            "minReplicaCount": variant.replicas,
            "maxReplicaCount": scaling.max_replicas,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "name": variant.object_name,
                    "behavior": {
                        "scaleDown": {"stabilizationWindowSeconds": scaling.scale_in_cooldown_seconds},
                        "scaleUp": {"stabilizationWindowSeconds": scaling.scale_out_cooldown_seconds},
                    },
                }
            },
            "triggers": [
                {
                    "type": "redis-streams",
                    "metricType": "AverageValue",
                    "metadata": {**stream, "lagCount": str(target), "activationLagCount": "0"},
                },
                {
                    "type": "redis-streams",
                    "metricType": "AverageValue",
                    "metadata": {**stream, "pendingEntriesCount": str(concurrency)},
                },
            ],
        },
    }


# ---------------------------------------------------------------- the front door


def frontdoor_selector(endpoint: str) -> dict[str, str]:
    return {labels.ENDPOINT: labels.endpoint_label(endpoint), labels.BERTH_COMPONENT: FRONTDOOR_COMPONENT}


def frontdoor_labels(endpoint: str) -> dict[str, str]:
    return {**labels.endpoint_labels(endpoint, FRONTDOOR_COMPONENT), **frontdoor_selector(endpoint)}


def routes_of(endpoint: Endpoint, fleets: Sequence[Fleet], weights: Mapping[str, int]) -> Routes:
    """Every production variant of the live async fleets, with the weight the route gives its
    Service now (a pending config's variants have their traffic share during a rollout)."""
    variants = []
    for fleet in fleets:
        for v in fleet.production:
            if v.async_config is None or v.stream is None:
                continue
            output = v.async_config.output_config
            variants.append(
                RouteVariant(
                    variantName=v.name,
                    endpointConfigName=v.config,
                    weight=weights.get(v.object_name, 0),
                    stream=v.stream,
                    outputUri=output.output_uri,
                    failureUri=output.failure_location,
                )
            )
    return Routes(namespace=endpoint.namespace, endpoint=endpoint.name, variants=variants)


def routes_json(routes: Routes) -> str:
    return routes.model_dump_json(by_alias=True, indent=2) + "\n"


def frontdoor_objects(endpoint: Endpoint, model: Model, routes: Routes, settings: Settings) -> list[Manifest]:
    """ConfigMap (routes.json), Deployment and Service of the front door. It stages inline bodies
    in the first production variant's object storage, so it gets that Model's credentials and
    env, and it checks callers exactly as a serving container does (same auth env and volumes)."""
    name = async_frontdoor_name(endpoint.name)
    meta_labels = frontdoor_labels(endpoint.name)
    access = serving_access(endpoint, settings, model.spec.service_account_name)
    auth = access_env(access)
    env = redis_env(settings) + [{"name": k, "value": v} for k, v in auth.items()]
    env += _model_env(model, [REDIS_URL_ENV, *auth])
    container: dict[str, Any] = {
        "name": FRONTDOOR_CONTAINER,
        "image": settings.images.cpu,
        "imagePullPolicy": settings.images.pull_policy,
        "command": ["berth"],
        "args": [
            "async-frontdoor",
            "--routes",
            f"{ROUTES_MOUNT}/{ROUTES_FILE_KEY}",
            "--port",
            str(DEFAULT_PORT),
        ],
        "env": env,
        **_credentials(model),
        "ports": [{"name": "http", "containerPort": DEFAULT_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/ping", "port": "http"},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        "resources": container_resources(FRONTDOOR_RESOURCES, None),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security(),
        "volumeMounts": [
            {"name": ROUTES_VOLUME, "mountPath": ROUTES_MOUNT, "readOnly": True},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
            *access_mounts(access),
        ],
    }
    pod = pod_scaffold(model.spec, access.service_account)
    pod.update(
        {
            "containers": [container],
            "volumes": [
                {"name": ROUTES_VOLUME, "configMap": {"name": async_routes_name(endpoint.name)}},
                {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}},
                *access_volumes(access),
            ],
        }
    )
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(endpoint, async_routes_name(endpoint.name), meta_labels),
        "data": {ROUTES_FILE_KEY: routes_json(routes)},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(endpoint, name, meta_labels),
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": frontdoor_selector(endpoint.name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": dict(meta_labels)}, "spec": pod},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(endpoint, name, meta_labels),
        "spec": {
            "type": "ClusterIP",
            "selector": frontdoor_selector(endpoint.name),
            "ports": [
                {"name": "http", "port": FRONTDOOR_SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }
    return [config_map, deployment, service]


def frontdoor_problems(pods: Iterable[Manifest], endpoint: str) -> list[str]:
    """Front door pods that cannot start (image pull, crash loop): said in failureReason. Never a
    fleet's failure: it is no reason to roll a new config back."""
    selector = frontdoor_selector(endpoint)
    found = set()
    for pod in pods:
        if not labels.selects(selector, pod.get("metadata", {}).get("labels") or {}):
            continue
        waiting = waiting_failure((pod.get("status") or {}).get("containerStatuses") or [])
        if waiting is not None:
            found.add(f"async front door: {waiting}")
    return sorted(found)


def frontdoor_ready(children: Iterable[Manifest], endpoint: str) -> bool:
    name = async_frontdoor_name(endpoint)
    for child in children:
        if child.get("kind") == "Deployment" and child.get("metadata", {}).get("name") == name:
            ready = (child.get("status") or {}).get("readyReplicas")
            return isinstance(ready, int) and ready >= 1
    return False


# ---------------------------------------------------------------- what the operator reads


def async_config_names(status: EndpointStatus | None, spec_config: str) -> list[str]:
    """Configs whose queues matter: the spec's, the serving and pending ones, and those draining."""
    status = status or EndpointStatus()
    names = [spec_config, status.endpoint_config_name, status.pending_endpoint_config_name]
    if status.rollout is not None:
        names.append(status.rollout.target_endpoint_config_name)
    names += status.draining_endpoint_config_names
    return sorted({n for n in names if n})


def streams_to_observe(endpoint: Endpoint, configs: Mapping[str, EndpointConfig]) -> list[str]:
    """The streams the operator reads before planning (backlog, counts) for this Endpoint."""
    streams = []
    for name in async_config_names(endpoint.status, endpoint.spec.endpoint_config_name):
        config = configs.get(name)
        if config is None or config.spec.async_inference_config is None:
            continue
        streams += [
            stream_key(endpoint.namespace, endpoint.name, name, v.variant_name)
            for v in config.spec.production_variants
        ]
    return sorted(set(streams))


def queue_of(variant: VariantPlan, observed: Observed) -> QueueState | None:
    """The variant's stream as read; an unread stream is empty, unless reading failed altogether."""
    if variant.stream is None or observed.queue_error is not None:
        return None
    return observed.queues.get(variant.stream, QueueState())


def holds_messages(fleet: Fleet, observed: Observed) -> bool:
    """A fleet that must stay to answer what was queued for it (unknown counts as yes)."""
    for v in fleet.production:
        if v.stream is None:
            continue
        queue = queue_of(v, observed)
        if queue is None or queue.size > 0:
            return True
    return False


def failure_metrics(fleet: Fleet, observed: Observed) -> FleetMetrics | None:
    """The async fleet's outcomes for auto-rollback: failed / (succeeded + failed) of its streams."""
    if not fleet.is_async or observed.queue_error is not None:
        return None
    succeeded = failed = 0
    for v in fleet.production:
        queue = queue_of(v, observed) or QueueState()
        succeeded += int(queue.counts.get("succeeded", 0))
        failed += int(queue.counts.get("failed", 0))
    return FleetMetrics(requests=float(succeeded + failed), errors_5xx=float(failed), errors_are="failed")


def backlog_fields(variant: VariantPlan, observed: Observed, ready: int) -> dict[str, Any]:
    """backlogSize, backlogPerInstance and oldestMessageAgeSeconds of an async variant's status."""
    queue = queue_of(variant, observed)
    if queue is None:
        return {}
    return {
        "backlog_size": queue.size,
        "backlog_per_instance": round(queue.size / ready if ready else float(queue.size), 3),
        "oldest_message_age_seconds": round(queue.oldest_age_seconds, 3),
    }


def without_capacity(variants: Iterable[tuple[VariantPlan, int]], observed: Observed) -> list[str]:
    """Async variants with messages waiting and no ready replica, as (variant, ready replicas) give them."""
    found = []
    for variant, ready in variants:
        queue = queue_of(variant, observed)
        if queue is not None and queue.size > 0 and ready == 0:
            found.append(f"{variant.config}/{variant.name}")
    return found

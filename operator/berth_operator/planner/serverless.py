"""Serverless variants: capacity that follows the traffic down to zero, with held cold starts.

On a cluster the KEDA HTTP add-on does the holding: its interceptor takes the variant's
traffic (the HTTPRoute sends it there, naming the variant in a header), holds requests while
the variant is at zero, and its HTTPScaledObject scales the Deployment on requests in flight.
Local mode plays the interceptor with the same objects (local/).

Sizing, stated once here: a replica gets memorySizeInMB of memory and one CPU per 2048 MB
(SageMaker scales CPU with memory without saying how), and takes REPLICA_CONCURRENCY_PER_CPU
requests in flight per CPU (the batcher merges what arrives while a batch runs, so a few per
core keep it fed). Replicas are bounded by maxConcurrency and kept warm by
provisionedConcurrency, both in requests.
"""

from __future__ import annotations

import math

from berth_serving.config import DEFAULT_PORT

from ..api import Endpoint, ServerlessConfig
from ..settings import InstanceType, Quantities, Settings
from .meta import object_meta
from .types import Manifest

HTTP_SCALED_OBJECT_KIND = "HTTPScaledObject"
HTTP_SCALED_OBJECT_API_VERSION = "http.keda.sh/v1alpha1"
REFERENCE_GRANT_KIND = "ReferenceGrant"
REFERENCE_GRANT_API_VERSION = "gateway.networking.k8s.io/v1beta1"
# The interceptor routes on this header; the route sets it, so a client cannot pick another target.
TARGET_HEADER = "X-Berth-Serverless-Target"
# On the answer of a request held through a cold start: how long it was held, in ms.
COLD_START_HEADER = "X-Berth-Cold-Start"
MB_PER_CPU = 2048
REPLICA_CONCURRENCY_PER_CPU = 4
# What local mode (the interceptor's stand-in) reads; on a cluster they document the variant.
MAX_CONCURRENCY_ANNOTATION = "berth.dev/max-concurrency"
MAX_HELD_ANNOTATION = "berth.dev/max-held-requests"
COLD_START_TIMEOUT_ANNOTATION = "berth.dev/cold-start-timeout-seconds"

MSG_NO_HTTP_ADDON = (
    f"serverless variants scale to zero with the KEDA HTTP add-on, but the cluster does not serve "
    f"{HTTP_SCALED_OBJECT_KIND} ({HTTP_SCALED_OBJECT_API_VERSION}): install it (helm chart "
    "kedacore/keda-add-ons-http); until then each serverless variant keeps max(1, provisioned) replicas"
)
MSG_NEEDS_GATEWAY = (
    "serverless variants scale to zero only with routing.mode gateway (the HTTPRoute sends their "
    "traffic through the KEDA HTTP add-on's interceptor); with this routing mode each keeps "
    "max(1, provisioned) replicas and is reached directly"
)
MSG_NO_REFERENCE_GRANT = (
    f"the cluster does not serve {REFERENCE_GRANT_KIND} ({REFERENCE_GRANT_API_VERSION}): the HTTPRoute "
    "may not send serverless traffic to the interceptor in another namespace; install the Gateway API's "
    "ReferenceGrant CRD (standard channel)"
)


def cpu_of(config: ServerlessConfig) -> float:
    return config.memory_size_in_mb / MB_PER_CPU


def instance_type(config: ServerlessConfig) -> InstanceType:
    """The replica's hardware: the memory asked for and the CPU that follows it (requests = limits)."""
    quantities: dict[str, int | float | str] = {
        "cpu": f"{int(cpu_of(config) * 1000)}m",
        "memory": f"{config.memory_size_in_mb}Mi",
    }
    return InstanceType(resources=Quantities(requests=quantities, limits=dict(quantities)))


def replica_concurrency(config: ServerlessConfig) -> int:
    """Requests one replica takes in flight: the scaling target."""
    return max(1, math.ceil(cpu_of(config) * REPLICA_CONCURRENCY_PER_CPU))


def max_replicas(config: ServerlessConfig) -> int:
    return max(1, math.ceil(config.max_concurrency / replica_concurrency(config)))


def min_replicas(config: ServerlessConfig) -> int:
    """Replicas kept warm for provisionedConcurrency requests (0: the variant scales to zero)."""
    return math.ceil(config.provisioned_concurrency / replica_concurrency(config))


def scales_to_zero(settings: Settings, unavailable: frozenset[str]) -> bool:
    """The cluster can hold a serverless variant's requests while it is at zero."""
    return settings.routing.mode == "gateway" and HTTP_SCALED_OBJECT_KIND not in unavailable


def target_value(namespace: str, object_name: str) -> str:
    return f"{namespace}/{object_name}"


def interceptor_backend_ref(namespace: str, object_name: str, weight: int, settings: Settings) -> Manifest:
    """A backendRef of the HTTPRoute that reaches the variant through the interceptor."""
    interceptor = settings.serverless.interceptor
    return {
        "kind": "Service",
        "name": interceptor.name,
        "namespace": interceptor.namespace,
        "port": interceptor.port,
        "weight": weight,
        "filters": [
            {
                "type": "RequestHeaderModifier",
                "requestHeaderModifier": {
                    "set": [{"name": TARGET_HEADER, "value": target_value(namespace, object_name)}]
                },
            }
        ],
    }


def routed_service(ref: Manifest) -> str:
    """The variant Service a backendRef reaches: its own name, or through the interceptor the
    Service its header names (so an observed route reads as the planned split)."""
    for f in ref.get("filters") or []:
        for header in (f.get("requestHeaderModifier") or {}).get("set") or []:
            if header.get("name") == TARGET_HEADER:
                return str(header.get("value", "")).rpartition("/")[2]
    return str(ref.get("name", ""))


def http_scaled_object(
    endpoint: Endpoint,
    object_name: str,
    config: ServerlessConfig,
    floor: int,
    labels: dict[str, str],
) -> Manifest:
    """The KEDA HTTP add-on's object for one variant: floor is its min replicas (the warm ones,
    or one while a rollout proves the new fleet)."""
    meta = object_meta(endpoint, object_name, labels)
    meta["annotations"] = {
        COLD_START_TIMEOUT_ANNOTATION: str(config.cold_start_timeout_seconds),
        MAX_CONCURRENCY_ANNOTATION: str(config.max_concurrency),
        MAX_HELD_ANNOTATION: str(config.max_held_requests),
    }
    return {
        "apiVersion": HTTP_SCALED_OBJECT_API_VERSION,
        "kind": HTTP_SCALED_OBJECT_KIND,
        "metadata": meta,
        "spec": {
            "hosts": ["*"],
            "pathPrefixes": ["/"],
            "headers": [{"name": TARGET_HEADER, "value": target_value(endpoint.namespace, object_name)}],
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": object_name,
                "service": object_name,
                "port": DEFAULT_PORT,
            },
            "replicas": {"min": floor, "max": max(floor, max_replicas(config))},
            "scaledownPeriod": config.idle_seconds,
            "scalingMetric": {"concurrency": {"targetValue": replica_concurrency(config)}},
            "timeouts": {"conditionWait": f"{config.cold_start_timeout_seconds}s"},
        },
    }


def reference_grant(namespace: str, settings: Settings, meta_labels: dict[str, str]) -> Manifest:
    """Lets the HTTPRoutes of namespace send to the interceptor, which lives in its own namespace.
    Shared by every Endpoint of the namespace (no owner: owners cannot cross namespaces)."""
    interceptor = settings.serverless.interceptor
    return {
        "apiVersion": REFERENCE_GRANT_API_VERSION,
        "kind": REFERENCE_GRANT_KIND,
        "metadata": {
            "name": f"berth-routes-from-{namespace}",
            "namespace": interceptor.namespace,
            "labels": dict(meta_labels),
        },
        "spec": {
            "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": namespace}],
            "to": [{"group": "", "kind": "Service", "name": interceptor.name}],
        },
    }


def problems(any_serverless: bool, settings: Settings, unavailable: frozenset[str]) -> list[str]:
    """Why serverless variants cannot scale to zero here (they still serve, warm)."""
    if not any_serverless:
        return []
    if settings.routing.mode != "gateway":
        return [MSG_NEEDS_GATEWAY]
    found = []
    if HTTP_SCALED_OBJECT_KIND in unavailable:
        found.append(MSG_NO_HTTP_ADDON)
    if REFERENCE_GRANT_KIND in unavailable and settings.serverless.interceptor.namespace:
        found.append(MSG_NO_REFERENCE_GRANT)
    return found

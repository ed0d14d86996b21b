"""The autoscaler of a variant, and what its status says.

CPU targets always get a HorizontalPodAutoscaler (metrics-server serves CPU everywhere). A request
target (targetInvocationsPerReplica) needs the invocations rate from somewhere: with
`autoscaling.scaler: hpa` an adapter (prometheus-adapter) serves it as the Pods metric
berth_invocations_per_second; with `keda` a KEDA ScaledObject reads it from Prometheus itself.
Either way the Deployment has no replicas field: the HPA (KEDA makes one) owns the count.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from berth_serving.metrics import INVOCATIONS_PER_SECOND, INVOCATIONS_TOTAL

from ..api import Endpoint
from ..quantity import canonical
from ..settings import Settings
from . import asyncinf
from .fleet import VariantPlan
from .meta import object_meta
from .observe import find
from .types import Manifest

KEDA_KIND = "ScaledObject"
KEDA_API_VERSION = "keda.sh/v1alpha1"
RATE_WINDOW = "1m"
ADAPTER_HINT = (
    "request-based autoscaling needs a metrics adapter that serves berth_invocations_per_second "
    "(prometheus-adapter), autoscaling.scaler keda in the operator settings, or CPU-based autoscaling "
    "(targetCPUUtilization) with metrics-server"
)
KEDA_MISSING = (
    "the operator settings say autoscaling.scaler keda, but the cluster does not serve "
    f"{KEDA_KIND} ({KEDA_API_VERSION}): install KEDA, or set autoscaling.scaler hpa"
)
KEDA_MISSING_ASYNC = (
    f"async variants scale on their queue with KEDA, but the cluster does not serve {KEDA_KIND} "
    f"({KEDA_API_VERSION}): install KEDA; until then the Deployment keeps max(minReplicas, 1) replicas"
)
NO_PROMETHEUS = (
    "autoscaling.scaler keda reads the invocations rate from Prometheus: set autoscaling.prometheusUrl "
    "(or rollback.prometheusUrl) in the operator settings"
)


def uses_keda(variant: VariantPlan, settings: Settings) -> bool:
    """Async variants always scale with KEDA (on their stream); request targets when the settings say."""
    scaling = variant.autoscaling
    if scaling is not None and variant.async_config is not None:
        return True
    return (
        scaling is not None
        and scaling.target_invocations_per_replica is not None
        and settings.autoscaling.scaler == "keda"
    )


def prometheus_url(settings: Settings) -> str:
    return settings.autoscaling.prometheus_url or settings.rollback.prometheus_url


def autoscaler_objects(
    endpoint: Endpoint, variant: VariantPlan, settings: Settings, labels: dict[str, str]
) -> list[Manifest]:
    if variant.autoscaling is None:
        return []
    if variant.async_config is not None:
        found = asyncinf.scaled_object(endpoint, variant, settings, labels)
        return [found] if found is not None else []
    if uses_keda(variant, settings):
        return [scaled_object(endpoint, variant, settings, labels)]
    return [horizontal_pod_autoscaler(endpoint, variant, labels)]


def _behavior(variant: VariantPlan) -> dict[str, Any]:
    scaling = variant.autoscaling
    assert scaling is not None
    return {
        "scaleDown": {"stabilizationWindowSeconds": scaling.scale_in_cooldown_seconds},
        "scaleUp": {"stabilizationWindowSeconds": scaling.scale_out_cooldown_seconds},
    }


def _target(variant: VariantPlan) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": variant.object_name}


def horizontal_pod_autoscaler(endpoint: Endpoint, variant: VariantPlan, labels: dict[str, str]) -> Manifest:
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
        assert scaling.target_invocations_per_replica is not None  # admission: exactly one target
        metric = {
            "type": "Pods",
            "pods": {
                "metric": {"name": INVOCATIONS_PER_SECOND},
                "target": {
                    "type": "AverageValue",
                    "averageValue": canonical(scaling.target_invocations_per_replica),
                },
            },
        }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": object_meta(endpoint, variant.object_name, labels),
        "spec": {
            "scaleTargetRef": _target(variant),
            "minReplicas": variant.replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [metric],
            "behavior": _behavior(variant),
        },
    }


def invocations_rate_query(namespace: str, deployment: str) -> str:
    """Requests per second the Deployment's pods answer (every code: a failing replica is busy too).
    `namespace` and `pod` are the target labels Prometheus's Kubernetes discovery and the
    Prometheus Operator's monitors set; a Deployment's pods are named DEPLOYMENT-HASH-SUFFIX."""
    pods = f"{deployment}-[a-z0-9]+-[a-z0-9]+"
    return f'sum(rate({INVOCATIONS_TOTAL}{{namespace="{namespace}",pod=~"{pods}"}}[{RATE_WINDOW}]))'


def scaled_object(
    endpoint: Endpoint, variant: VariantPlan, settings: Settings, labels: dict[str, str]
) -> Manifest:
    """KEDA's ScaledObject with the HPA's bounds and cooldowns: KEDA makes an HPA (named after the
    variant's objects, so one name tells both) whose external metric is the Prometheus query
    averaged over the replicas against targetInvocationsPerReplica."""
    scaling = variant.autoscaling
    assert scaling is not None and scaling.target_invocations_per_replica is not None
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": KEDA_KIND,
        "metadata": object_meta(endpoint, variant.object_name, labels),
        "spec": {
            "scaleTargetRef": _target(variant),
            "minReplicaCount": variant.replicas,
            "maxReplicaCount": scaling.max_replicas,
            "advanced": {
                "horizontalPodAutoscalerConfig": {"name": variant.object_name, "behavior": _behavior(variant)}
            },
            "triggers": [
                {
                    "type": "prometheus",
                    "metricType": "AverageValue",
                    "metadata": {
                        "serverAddress": prometheus_url(settings),
                        "query": invocations_rate_query(endpoint.namespace, variant.object_name),
                        "threshold": str(scaling.target_invocations_per_replica),
                    },
                }
            ],
        },
    }


def _condition_problem(obj: Manifest | None, kind_type: str) -> str | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind_type and cond.get("status") == "False":
            return f"{cond.get('reason') or 'Unknown'}: {cond.get('message') or ''}".rstrip(": ")
    return None


def autoscaler_problems(
    children: Iterable[Manifest], fleets: Iterable[Any], settings: Settings, unavailable: frozenset[str]
) -> list[str]:
    """Autoscalers that cannot scale: an HPA with ScalingActive False (usually no metrics), a
    ScaledObject that KEDA says is not Ready, or a scaler the cluster or the settings lack."""
    listed = list(children)
    problems = []
    for fleet in fleets:
        for variant in fleet.variants:
            if variant.autoscaling is None:
                continue
            where = f"variant {variant.name}: the autoscaler cannot scale"
            if variant.async_config is not None:
                if not asyncinf.redis_configured(settings):
                    continue  # the missing queue is the problem the status names
                if KEDA_KIND in unavailable:
                    problems.append(f"{where} ({KEDA_MISSING_ASYNC})")
                elif asyncinf.keda_connection(settings) is None:
                    problems.append(f"{where} ({asyncinf.MSG_NO_ADDRESS_KEY})")
                elif why := _condition_problem(find(listed, KEDA_KIND, variant.object_name), "Ready"):
                    problems.append(f"{where} (KEDA: {why})")
                continue
            if uses_keda(variant, settings):
                if KEDA_KIND in unavailable:
                    problems.append(f"{where} ({KEDA_MISSING})")
                elif not prometheus_url(settings):
                    problems.append(f"{where} ({NO_PROMETHEUS})")
                elif why := _condition_problem(find(listed, KEDA_KIND, variant.object_name), "Ready"):
                    problems.append(f"{where} (KEDA: {why})")
                continue
            why = _condition_problem(
                find(listed, "HorizontalPodAutoscaler", variant.object_name), "ScalingActive"
            )
            if why is not None:
                hint = f"; {ADAPTER_HINT}" if variant.autoscaling.target_invocations_per_replica else ""
                problems.append(f"{where} ({why}){hint}")
    return problems

"""The scaler of a variant: an HPA, or a KEDA ScaledObject when the settings say keda."""

from __future__ import annotations

from typing import Any

from berth_operator.settings import Settings

from .support import Cluster, config, endpoint, model, variant
from .validation import assert_admitted

BY_REQUESTS = {"minReplicas": 2, "maxReplicas": 6, "targetInvocationsPerReplica": 40}
BY_CPU = {"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilization": 70}
KEDA = {"autoscaling": {"scaler": "keda"}, "rollback": {"prometheusUrl": "http://prometheus.monitoring:9090"}}


def cluster_with(scaling: dict[str, Any], settings: dict[str, Any]) -> Cluster:
    return Cluster(
        endpoint("cfg"),
        {"cfg": config("cfg", variant("blue", "m", autoscaling=scaling))},
        {"m": model("m")},
        settings=Settings.model_validate(settings),
    )


def test_keda_scales_request_targets_with_the_hpas_bounds_and_cooldowns() -> None:
    cluster = cluster_with({**BY_REQUESTS, "scaleInCooldownSeconds": 120}, KEDA)
    plan = cluster.step()
    assert cluster.names("HorizontalPodAutoscaler") == []
    [scaled] = [o for o in plan.objects if o["kind"] == "ScaledObject"]
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fraud-cfg-blue"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 6)
    hpa = spec["advanced"]["horizontalPodAutoscalerConfig"]
    assert hpa["name"] == "fraud-cfg-blue"
    assert hpa["behavior"]["scaleDown"] == {"stabilizationWindowSeconds": 120}
    [trigger] = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"] == {
        "serverAddress": "http://prometheus.monitoring:9090",
        "query": 'sum(rate(berth_invocations_total{namespace="prod",pod=~"fraud-cfg-blue-[a-z0-9]+-[a-z0-9]+"}[1m]))',
        "threshold": "40",
    }
    assert_admitted([scaled])  # against KEDA's CRD
    [deployment] = [o for o in plan.objects if o["kind"] == "Deployment"]
    assert "replicas" not in deployment["spec"]  # KEDA's HPA owns the count
    assert plan.status.failure_reason is None


def test_keda_has_its_own_prometheus_setting() -> None:
    settings = {"autoscaling": {"scaler": "keda", "prometheusUrl": "http://thanos:9090"}}
    plan = cluster_with(BY_REQUESTS, settings).step()
    [scaled] = [o for o in plan.objects if o["kind"] == "ScaledObject"]
    assert scaled["spec"]["triggers"][0]["metadata"]["serverAddress"] == "http://thanos:9090"


def test_cpu_targets_stay_on_an_hpa() -> None:
    cluster = cluster_with(BY_CPU, KEDA)
    cluster.step()
    assert cluster.names("HorizontalPodAutoscaler") == ["fraud-cfg-blue"]
    assert cluster.names("ScaledObject") == []


def test_switching_the_scaler_replaces_the_autoscaler() -> None:
    cluster = cluster_with(BY_REQUESTS, {})
    cluster.step()
    assert cluster.names("HorizontalPodAutoscaler") == ["fraud-cfg-blue"]
    cluster.settings = Settings.model_validate(KEDA)
    plan = cluster.step()
    assert [(r.kind, r.name) for r in plan.delete] == [("HorizontalPodAutoscaler", "fraud-cfg-blue")]
    assert cluster.names("ScaledObject") == ["fraud-cfg-blue"]


def test_without_keda_the_status_says_so_and_the_deployment_holds_the_floor() -> None:
    cluster = cluster_with(BY_REQUESTS, KEDA)
    cluster.unavailable_kinds = frozenset({"ScaledObject"})
    cluster.step()
    plan = cluster.step()
    assert cluster.names("ScaledObject") == []  # never sent to a server that would 404 it
    [deployment] = [o for o in plan.objects if o["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 2
    assert plan.status.phase == "InService"  # at its floor
    assert plan.status.failure_reason == (
        "variant blue: the autoscaler cannot scale (the operator settings say autoscaling.scaler keda, but"
        " the cluster does not serve ScaledObject (keda.sh/v1alpha1): install KEDA, or set"
        " autoscaling.scaler hpa)"
    )


def test_keda_without_a_prometheus_is_said() -> None:
    plan = cluster_with(BY_REQUESTS, {"autoscaling": {"scaler": "keda"}}).step()
    assert plan.status.failure_reason is not None
    assert "set autoscaling.prometheusUrl (or rollback.prometheusUrl)" in plan.status.failure_reason


def test_what_keda_says_of_a_scaled_object_reaches_the_status() -> None:
    cluster = cluster_with(BY_REQUESTS, KEDA)
    cluster.step()
    cluster.objects[("ScaledObject", "fraud-cfg-blue")]["status"] = {
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "ScaledObjectCheckFailed",
                "message": "no such host",
            }
        ]
    }
    plan = cluster.plan()
    assert plan.status.failure_reason == (
        "variant blue: the autoscaler cannot scale (KEDA: ScaledObjectCheckFailed: no such host)"
    )

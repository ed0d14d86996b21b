"""Manifests and kubelet-like actions for the operator tests."""

from __future__ import annotations

from typing import Any

from tests.support.kmockk8s import KMockCluster, wait_for

NS = "ml"
Manifest = dict[str, Any]


def model(name: str, uri: str = "s3://models/fraud/model.onnx", namespace: str = NS) -> Manifest:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"modelUri": uri},
    }


def variant(name: str, model_name: str, weight: float = 1, count: int = 1, **extra: Any) -> Manifest:
    return {
        "variantName": name,
        "modelName": model_name,
        "instanceType": "cpu-small",
        "initialInstanceCount": count,
        "initialVariantWeight": weight,
        **extra,
    }


def config(name: str, *variants: Manifest, namespace: str = NS) -> Manifest:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "EndpointConfig",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"productionVariants": list(variants)},
    }


def endpoint(name: str, config_name: str, namespace: str = NS, **spec: Any) -> Manifest:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"endpointConfigName": config_name, **spec},
    }


def children(cluster: KMockCluster, kind: str, endpoint_name: str, namespace: str = NS) -> list[Manifest]:
    return [
        obj
        for obj in cluster.list(kind, namespace)
        if (obj["metadata"].get("labels") or {}).get("berth.dev/endpoint") == endpoint_name
    ]


def set_deployments_ready(
    cluster: KMockCluster, endpoint_name: str, namespace: str = NS, config: str | None = None
) -> int:
    """Act as the kubelet and the Deployment controller: every replica of the Deployments is ready."""
    count = 0
    # Without spec.replicas the HPA decides: it starts at minReplicas.
    hpa_min = {
        h["metadata"]["name"]: h["spec"].get("minReplicas", 1)
        for h in children(cluster, "HorizontalPodAutoscaler", endpoint_name, namespace)
    }
    for deployment in children(cluster, "Deployment", endpoint_name, namespace):
        labels = deployment["metadata"].get("labels") or {}
        if config is not None and labels.get("berth.dev/endpoint-config") != config:
            continue
        name = deployment["metadata"]["name"]
        if "replicas" not in deployment["spec"] and name not in hpa_min:
            # Its HPA is applied beside it, maybe a moment later: it says where the count starts.
            hpa = wait_for(
                lambda name=name: cluster.get("HorizontalPodAutoscaler", namespace, name),
                message=f"the HPA of {name}",
            )
            hpa_min[name] = hpa["spec"].get("minReplicas", 1)
        replicas = deployment["spec"].get("replicas", hpa_min.get(name, 1))
        status = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
        }
        if deployment.get("status") != status:
            cluster.patch(
                "Deployment", namespace, deployment["metadata"]["name"], {"status": status}, "status"
            )
        count += 1
    return count


def pod_of(
    deployment: Manifest, name: str, status: Manifest, ip: str | None = None, port: int | None = None
) -> Manifest:
    """A Pod as the ReplicaSet would make it from the Deployment's template, with the given status."""
    template = deployment["spec"]["template"]
    spec = dict(template["spec"])
    if port is not None:
        spec["containers"] = [
            {**c, "ports": [{"name": "http", "containerPort": port}]} if i == 0 else c
            for i, c in enumerate(spec["containers"])
        ]
    if ip is not None:
        status = {**status, "podIP": ip}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": deployment["metadata"]["namespace"],
            "labels": dict(template["metadata"].get("labels") or {}),
        },
        "spec": spec,
        "status": status,
    }

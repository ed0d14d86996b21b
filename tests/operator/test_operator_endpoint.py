"""Endpoint reconcile (issue #3), with the real operator (kopf) against KMock."""

from __future__ import annotations

from typing import Any

import pytest
from berth_operator.settings import Settings

from tests.operator.builders import (
    NS,
    children,
    config,
    endpoint,
    model,
    pod_of,
    set_deployments_ready,
    variant,
)
from tests.support.kmockk8s import KMockCluster, wait_for

pytestmark = pytest.mark.timeout(60)
CHILD_KINDS = ("Deployment", "Service", "HTTPRoute", "HorizontalPodAutoscaler", "PodDisruptionBudget")


def status(cluster: KMockCluster, name: str = "ep") -> dict:
    return (cluster.get("Endpoint", NS, name) or {}).get("status") or {}


def condition(cluster: KMockCluster, type_: str, name: str = "ep") -> dict:
    return next((c for c in status(cluster, name).get("conditions", []) if c["type"] == type_), {})


def route_weights(route: dict) -> dict[str, int]:
    default_rule = route["spec"]["rules"][-1]
    return {ref["name"]: ref["weight"] for ref in default_rule["backendRefs"]}


def serving(cluster: KMockCluster, name: str = "ep") -> bool:
    return (
        status(cluster, name).get("phase") == "InService"
        and condition(cluster, "Ready", name).get("status") == "True"
    )


def test_create_makes_children_then_in_service_when_ready(cluster, start_operator):
    start_operator()
    cluster.create(model("m1"))
    autoscaled = {"autoscaling": {"minReplicas": 2, "maxReplicas": 5, "targetCPUUtilization": 70}}
    cluster.create(config("cfg1", variant("blue", "m1", count=2), variant("green", "m1", **autoscaled)))
    cluster.create(endpoint("ep", "cfg1"))

    wait_for(lambda: len(children(cluster, "Deployment", "ep")) == 2, message="two Deployments")
    wait_for(lambda: children(cluster, "HTTPRoute", "ep"), message="HTTPRoute")
    assert len(children(cluster, "Service", "ep")) == 2
    hpas = children(cluster, "HorizontalPodAutoscaler", "ep")
    assert [h["spec"]["maxReplicas"] for h in hpas] == [5]
    assert children(cluster, "PodDisruptionBudget", "ep")  # blue has 2 replicas
    assert status(cluster)["phase"] == "Creating"
    assert condition(cluster, "Ready")["status"] == "False"
    owner = children(cluster, "Deployment", "ep")[0]["metadata"]["ownerReferences"][0]
    assert (
        owner["kind"] == "Endpoint" and owner["uid"] == cluster.get("Endpoint", NS, "ep")["metadata"]["uid"]
    )

    set_deployments_ready(cluster, "ep")
    wait_for(lambda: serving(cluster), message="InService")
    final = status(cluster)
    assert final["endpointConfigName"] == "cfg1"
    assert final["url"].endswith(f"/endpoints/{NS}/ep/invocations")
    assert {v["variantName"]: v["readyInstanceCount"] for v in final["productionVariants"]} == {
        "blue": 2,
        "green": 2,
    }
    # kopf keeps its own bookkeeping out of our status.
    assert all("kopf" not in (v or {}).get("status", {}) for v in cluster.history("Endpoint", NS, "ep"))


def test_variant_overrides_patch_route_weights(cluster, start_operator):
    start_operator()
    cluster.create(model("m1"))
    cluster.create(config("cfg1", variant("blue", "m1", weight=1), variant("green", "m1", weight=1)))
    cluster.create(endpoint("ep", "cfg1"))
    wait_for(lambda: len(children(cluster, "Deployment", "ep")) == 2, message="Deployments")
    set_deployments_ready(cluster, "ep")
    wait_for(lambda: serving(cluster), message="InService")
    route = children(cluster, "HTTPRoute", "ep")[0]
    before = route_weights(route)
    assert len(set(before.values())) == 1  # equal weights

    overrides = [{"variantName": "green", "desiredWeight": 3}]
    cluster.patch("Endpoint", NS, "ep", {"spec": {"variantOverrides": overrides}})
    name = route["metadata"]["name"]

    def shifted() -> dict[str, int] | None:
        weights = route_weights(cluster.get("HTTPRoute", NS, name))
        return weights if weights != before else None

    after = wait_for(shifted, message="new weights")
    green = next(w for svc, w in after.items() if svc.endswith("green"))
    blue = next(w for svc, w in after.items() if svc.endswith("blue"))
    assert green == 3 * blue
    # The route was patched in place, not re-created.
    versions = [v for v in cluster.history("HTTPRoute", NS, name) if v is not None]
    assert len({v["metadata"]["uid"] for v in versions}) == 1
    wait_for(lambda: status(cluster)["observedGeneration"] == 2, message="observedGeneration 2")


def test_missing_config_then_missing_model_then_heals(cluster, start_operator):
    start_operator()
    cluster.create(endpoint("ep", "cfg1"))
    wait_for(lambda: "cfg1" in (status(cluster).get("failureReason") or ""), message="config named")
    assert not children(cluster, "Deployment", "ep")

    cluster.create(config("cfg1", variant("blue", "m1")))
    wait_for(lambda: "m1" in (status(cluster).get("failureReason") or ""), message="model named")
    config_ready = wait_for(
        lambda: next(
            iter((cluster.get("EndpointConfig", NS, "cfg1").get("status") or {}).get("conditions", [])), None
        )
    )
    assert config_ready["reason"] == "ModelNotFound" and "m1" in config_ready["message"]

    cluster.create(model("m1"))
    wait_for(lambda: children(cluster, "Deployment", "ep"), message="Deployment once the Model exists")
    set_deployments_ready(cluster, "ep")
    wait_for(lambda: serving(cluster), message="InService")
    assert not status(cluster).get("failureReason")


def test_failed_model_download_reaches_failure_reason(cluster, start_operator):
    start_operator()
    cluster.create(model("m1", uri="s3://models/fraud/missing.onnx"))
    cluster.create(config("cfg1", variant("blue", "m1")))
    cluster.create(endpoint("ep", "cfg1"))
    deployment = wait_for(
        lambda: next(iter(children(cluster, "Deployment", "ep")), None), message="Deployment"
    )
    init_name = deployment["spec"]["template"]["spec"]["initContainers"][0]["name"]
    message = "403 Forbidden from s3://models/fraud/missing.onnx"  # what fetch-model writes
    terminated = {"exitCode": 1, "reason": "Error", "message": message}
    pod_status = {
        "phase": "Pending",
        "initContainerStatuses": [
            {
                "name": init_name,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": terminated},
            }
        ],
    }
    cluster.create(pod_of(deployment, "ep-blue-abc12", pod_status))
    reason = wait_for(lambda: status(cluster).get("failureReason"), message="failureReason")
    assert reason == "model m1: download failed: 403 Forbidden from s3://models/fraud/missing.onnx"
    assert condition(cluster, "Degraded")["status"] == "True"


def test_delete_leaves_nothing(cluster, start_operator):
    start_operator()
    cluster.create(model("m1"))
    cluster.create(config("cfg1", variant("blue", "m1", count=2)))
    cluster.create(endpoint("ep", "cfg1"))
    wait_for(lambda: children(cluster, "HTTPRoute", "ep"), message="children")
    set_deployments_ready(cluster, "ep")
    wait_for(lambda: serving(cluster), message="InService")

    cluster.delete("Endpoint", NS, "ep")
    wait_for(lambda: cluster.get("Endpoint", NS, "ep") is None, message="Endpoint gone")
    for kind in CHILD_KINDS:
        assert children(cluster, kind, "ep") == [], kind
    phases = [(v or {}).get("status", {}).get("phase") for v in cluster.history("Endpoint", NS, "ep")]
    assert "Deleting" in phases


def settle(cluster: KMockCluster, context: Any) -> None:
    """Until two reconciles in a row wrote nothing (the echoes of our own writes are answered)."""

    def quiet() -> bool:
        start, reconciles = cluster.request_count(), context.reconciles
        wait_for(lambda: context.reconciles >= reconciles + 2, message="two reconciles")
        return cluster.writes_since(start) == []

    wait_for(quiet, timeout=20, interval=0, message="a reconcile that writes nothing")


def test_resync_with_nothing_changed_reads_and_writes_nothing(cluster, start_operator):
    operator = start_operator(resync_seconds=0.2)
    cluster.create(model("m1"))
    cluster.create(config("cfg1", variant("blue", "m1", count=2)))
    cluster.create(endpoint("ep", "cfg1"))
    wait_for(lambda: children(cluster, "HTTPRoute", "ep"), message="children")
    set_deployments_ready(cluster, "ep")
    wait_for(lambda: serving(cluster), message="InService")
    settle(cluster, operator.context)  # the reconciles woken by our own writes are answered

    start, context = cluster.request_count(), operator.context
    reconciles, requests = context.reconciles, context.kube.requests
    wait_for(lambda: context.reconciles >= reconciles + 4, message="four resyncs")
    assert cluster.writes_since(start) == []
    # Everything a resync needs is in the watches' indexes: not one GET or LIST either.
    assert context.kube.requests == requests


def test_ingress_mode_makes_an_ingress(cluster, start_operator):
    settings = Settings.model_validate({"routing": {"mode": "ingress"}})
    start_operator(settings)
    cluster.create(model("m1"))
    cluster.create(config("cfg1", variant("blue", "m1")))
    cluster.create(endpoint("ep", "cfg1"))
    wait_for(lambda: children(cluster, "Ingress", "ep"), message="Ingress")
    assert children(cluster, "HTTPRoute", "ep") == []


def test_child_deleted_by_hand_comes_back(cluster, start_operator):
    start_operator()
    cluster.create(model("m1"))
    cluster.create(config("cfg1", variant("blue", "m1")))
    cluster.create(endpoint("ep", "cfg1"))
    service = wait_for(lambda: next(iter(children(cluster, "Service", "ep")), None), message="Service")
    name = service["metadata"]["name"]
    cluster.delete("Service", NS, name)
    recreated = wait_for(lambda: cluster.get("Service", NS, name), message="Service re-created")
    assert recreated["metadata"]["uid"] != service["metadata"]["uid"]


def test_routing_mode_change_replaces_the_route_kind(cluster, start_operator):
    gateway = start_operator()
    cluster.create(model("m1"))
    cluster.create(config("cfg1", variant("blue", "m1")))
    cluster.create(endpoint("ep", "cfg1"))
    wait_for(lambda: children(cluster, "HTTPRoute", "ep"), message="HTTPRoute")
    gateway.stop()

    start_operator(Settings.model_validate({"routing": {"mode": "ingress"}}))
    wait_for(lambda: children(cluster, "Ingress", "ep"), message="Ingress")
    wait_for(lambda: not children(cluster, "HTTPRoute", "ep"), message="HTTPRoute removed")


def test_invalid_endpoint_spec_is_reported_not_crashed_on(cluster, start_operator):
    # Admission refuses this in a real cluster; the operator must still say why, not loop on errors.
    start_operator()
    cluster.create(endpoint("ep", "Not_A_Valid_Name"))
    reason = wait_for(lambda: status(cluster).get("failureReason"), message="failureReason")
    assert "endpointConfigName" in reason
    assert status(cluster)["phase"] == "Failed"

"""An Endpoint on a real API server: children, InService, failures surfaced, deletion, RBAC."""

from __future__ import annotations

import pytest

from tests.cluster.support import CHILD_KINDS, Cluster
from tests.operator.builders import config, endpoint, model, variant
from tests.support import kubelet as pods
from tests.support.envtest import wait_for
from tests.support.gateway import CONTROLLER_NAME

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("needs_controller_manager")]

AUTOSCALED = {"autoscaling": {"minReplicas": 1, "maxReplicas": 4, "targetCPUUtilization": 70}}


def two_variants(cluster: Cluster) -> None:
    """blue: two replicas (so a PodDisruptionBudget); green: autoscaled (so an HPA)."""
    cluster.create(model("m1"))
    cluster.create(config("cfg1", variant("blue", "m1", count=2), variant("green", "m1", **AUTOSCALED)))
    cluster.create(endpoint("ep", "cfg1"))


def test_endpoint_reaches_in_service(cluster: Cluster) -> None:
    cluster.start_operator()
    two_variants(cluster)
    final = cluster.wait_in_service()

    assert final["endpointConfigName"] == "cfg1"
    assert final["url"].endswith(f"/endpoints/{cluster.namespace}/ep/invocations")
    ready = {v["variantName"]: v["readyInstanceCount"] for v in final["productionVariants"]}
    assert ready == {"blue": 2, "green": 1}
    # The Deployment controller, not the test, counted the ready replicas.
    deployments = cluster.children("Deployment")
    assert sorted(d["status"].get("readyReplicas") for d in deployments) == [1, 2]
    uid = cluster.get("Endpoint", "ep")["metadata"]["uid"]
    for kind in CHILD_KINDS:
        found = cluster.children(kind)
        assert found, f"no {kind}"
        for child in found:
            owners = child["metadata"].get("ownerReferences") or []
            assert [(o["kind"], o["uid"], o.get("controller")) for o in owners] == [("Endpoint", uid, True)]
    # The route attaches to the chart's Gateway, and the Gateway (stand-in) accepts it.
    [route] = cluster.children("HTTPRoute")
    parents = wait_for(
        lambda: (
            (route_now := cluster.get("HTTPRoute", route["metadata"]["name"]))
            and (route_now.get("status") or {}).get("parents")
        ),
        message="route status",
    )
    [parent] = parents
    assert parent["controllerName"] == CONTROLLER_NAME
    assert parent["parentRef"]["name"] == cluster.install.gateway_name
    assert {c["type"]: c["status"] for c in parent["conditions"]} == {
        "Accepted": "True",
        "ResolvedRefs": "True",
    }
    assert cluster.operator.forbidden() == []
    assert cluster.standin_errors() == []


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        (
            pods.init_failed("403 Forbidden from s3://models/fraud/missing.onnx"),
            "model m1: download failed: 403 Forbidden from s3://models/fraud/missing.onnx",
        ),
        (pods.crash_loop("onnxruntime: model is not a valid ONNX file"), "CrashLoopBackOff"),
        (pods.image_pull_backoff(), "ImagePullBackOff"),
        (pods.unschedulable("0/1 nodes are available: 1 Insufficient cpu."), "unschedulable: 0/1 nodes"),
    ],
    ids=["init-download-failed", "crash-loop", "image-pull", "unschedulable"],
)
def test_pod_failures_reach_failure_reason(
    cluster: Cluster, behaviour: pods.Behaviour, expected: str
) -> None:
    cluster.kubelet.behave(behaviour)
    cluster.start_operator()
    cluster.create(model("m1"))
    cluster.create(config("cfg1", variant("blue", "m1")))
    cluster.create(endpoint("ep", "cfg1"))
    reason = cluster.wait(
        lambda: (
            expected in (cluster.status().get("failureReason") or "") and cluster.status()["failureReason"]
        ),
        f"failureReason with {expected!r}",
    )
    assert expected in reason
    assert cluster.status()["phase"] != "InService"
    assert cluster.condition("Ready").get("status") == "False"


def test_deletion_leaves_nothing(cluster: Cluster) -> None:
    cluster.start_operator()
    two_variants(cluster)
    cluster.wait_in_service()
    endpoints = cluster.watch("Endpoint")
    assert cluster.delete("Endpoint", "ep")

    cluster.wait(lambda: cluster.get("Endpoint", "ep") is None, "Endpoint gone (finalizer removed)")
    phases = [(obj.get("status") or {}).get("phase") for _, obj in endpoints.history()]
    assert "Deleting" in phases

    def leftovers() -> list[str]:
        kinds = [*CHILD_KINDS, "ReplicaSet", "Pod"]
        return [f"{kind}/{o['metadata']['name']}" for kind in kinds for o in cluster.children(kind)]

    cluster.wait(lambda: not leftovers(), "no child, ReplicaSet or Pod left", timeout=30)
    assert cluster.operator.forbidden() == []


def test_children_are_garbage_collected_through_owner_references(cluster: Cluster) -> None:
    """With the operator gone (uninstalled), deleting an Endpoint still removes everything it made."""
    operator = cluster.start_operator()
    two_variants(cluster)
    cluster.wait_in_service()
    assert operator.stop() == 0
    cluster.patch("Endpoint", "ep", {"metadata": {"finalizers": None}})
    assert cluster.delete("Endpoint", "ep")
    cluster.wait(lambda: cluster.get("Endpoint", "ep") is None, "Endpoint gone")

    def leftovers() -> list[str]:
        kinds = [*CHILD_KINDS, "ReplicaSet", "Pod"]
        return [f"{kind}/{o['metadata']['name']}" for kind in kinds for o in cluster.children(kind)]

    cluster.wait(lambda: not leftovers(), "the garbage collector removed every child", timeout=30)


def test_a_route_no_gateway_accepted_keeps_the_endpoint_out_of_service(cluster: Cluster) -> None:
    # The Gateway implementation here serves another Gateway than the one the chart's settings name.
    cluster.gateway.gateway_name = "another-gateway"
    cluster.start_operator()
    cluster.create(model("m1"))
    cluster.create(config("cfg1", variant("blue", "m1")))
    cluster.create(endpoint("ep", "cfg1"))

    def refused() -> bool:
        parents = [
            p for r in cluster.children("HTTPRoute") for p in (r.get("status") or {}).get("parents") or []
        ]
        return any(c["reason"] == "NoMatchingParent" for p in parents for c in p["conditions"])

    cluster.wait(refused, "the route refused by the Gateway")
    cluster.wait(
        lambda: all(d["status"].get("readyReplicas") == 1 for d in cluster.children("Deployment")),
        "every replica ready: only the route is missing",
    )

    def reported() -> bool:
        status = cluster.status()
        text = (
            f"{status.get('failureReason') or ''} {cluster.condition('Ready').get('message') or ''}".lower()
        )
        return cluster.condition("Ready").get("status") == "False" and (
            "nomatchingparent" in text or "not accepted" in text
        )

    cluster.wait(reported, "Ready=False naming the route the Gateway did not accept", timeout=20)
    assert cluster.status()["phase"] != "InService"


def test_an_autoscaler_without_metrics_says_so_on_the_endpoint(cluster: Cluster) -> None:
    # No metrics adapter here, as in many clusters: the real HPA controller reports it cannot
    # scale, and the Endpoint (serving at its floor) says why and what is missing.
    cluster.start_operator()
    requests = {"autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetInvocationsPerReplica": 50}}
    cluster.create(model("m1"))
    cluster.create(config("cfg1", variant("blue", "m1", **requests)))
    cluster.create(endpoint("ep", "cfg1"))
    cluster.wait_in_service()
    reason = cluster.wait(
        lambda: (
            (cluster.status().get("failureReason") or "")
            if "autoscaler" in (cluster.status().get("failureReason") or "")
            else None
        ),
        "the autoscaler's complaint on the Endpoint",
    )
    assert reason.startswith("variant blue: the autoscaler cannot scale (")
    assert "berth_invocations_per_second" in reason and "prometheus-adapter" in reason
    assert cluster.serving()  # it still serves, at its floor

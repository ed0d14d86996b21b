"""Status from observed state: phases, conditions, failures, idempotence, overrides, deletes."""

from __future__ import annotations

import copy
from typing import Any

from berth_operator.planner import labels as L
from berth_operator.planner import plan_endpoint
from berth_operator.planner.types import ObjectRef, Observed, PlanInput

from .support import Cluster, config, endpoint, header_rules, model, variant
from .validation import assert_admitted


def simple(**fields: Any) -> Cluster:
    cfg = config("cfg1", variant("blue", "m1", initialInstanceCount=2, **fields))
    return Cluster(endpoint("cfg1"), {"cfg1": cfg}, {"m1": model("m1")})


def conditions(cluster: Cluster) -> dict[str, tuple[str, str]]:
    status = cluster.endpoint.status
    assert status is not None
    return {c.type: (c.status, c.reason) for c in status.conditions}


def failing_pod(name: str, **status: Any) -> dict[str, Any]:
    labels = {L.ENDPOINT: "fraud", L.ENDPOINT_CONFIG: "cfg1", L.VARIANT: "blue", L.MODEL: "m1"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "prod", "labels": labels},
        "status": status,
    }


def test_fresh_endpoint_is_creating_then_in_service() -> None:
    cluster = simple()
    cluster.auto_ready = False
    plan = cluster.step()
    assert plan.status.phase == "Creating"
    assert plan.status.endpoint_config_name == "cfg1"
    assert plan.status.url == "http://localhost/endpoints/prod/fraud/invocations"
    assert plan.status.observed_generation == 1
    assert conditions(cluster) == {
        "Ready": ("False", "VariantsNotReady"),
        "Progressing": ("True", "Creating"),
        "Degraded": ("False", "AsExpected"),
    }
    assert plan.status.production_variants[0].desired_instance_count == 2
    assert plan.status.production_variants[0].ready_instance_count == 0

    cluster.make_ready()
    plan = cluster.step()
    assert plan.status.phase == "InService"
    assert conditions(cluster)["Ready"] == ("True", "Serving")
    assert conditions(cluster)["Progressing"] == ("False", "Complete")
    variant_status = plan.status.production_variants[0]
    assert (variant_status.ready_instance_count, variant_status.current_weight) == (2, 1.0)
    assert [e.reason for e in plan.events] == ["InService"]


def test_stale_observed_generation_is_not_ready() -> None:
    cluster = simple()
    cluster.step()
    deployment = cluster.objects[("Deployment", "fraud-cfg1-blue")]
    deployment["metadata"]["generation"] = 2  # a spec change the controller has not seen yet
    assert cluster.plan().status.phase == "Creating"
    deployment["status"]["observedGeneration"] = 2
    assert cluster.plan().status.phase == "InService"


def test_route_must_carry_the_weights_for_in_service() -> None:
    cluster = simple()
    cluster.step()
    cluster.objects[("HTTPRoute", "fraud")]["spec"]["rules"][-1]["backendRefs"][0]["name"] = "elsewhere"
    plan = cluster.plan()
    assert plan.status.phase == "Creating"
    assert conditions_of(plan)["Ready"] == ("False", "RouteNotReady")


def conditions_of(plan: Any) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in plan.status.conditions}


def test_server_defaults_on_the_route_do_not_matter() -> None:
    cluster = simple()
    cluster.step()
    route = cluster.objects[("HTTPRoute", "fraud")]
    for ref in route["spec"]["rules"][-1]["backendRefs"]:
        ref.update({"group": "", "kind": "Service"})  # what the API server adds
    route["spec"]["hostnames"] = []
    assert cluster.plan().status.phase == "InService"


def test_no_op_reconcile_is_identical() -> None:
    cluster = simple()
    cluster.step()
    cluster.step()
    cluster.advance(3600)  # time passes, nothing changes
    first = cluster.plan()
    cluster.apply(first)
    second = cluster.plan()
    assert first == second
    assert second.status == cluster.endpoint.status
    assert second.status.conditions[0].last_transition_time == "2026-01-01T00:00:00.000000Z"
    assert second.events == [] and second.delete == [] and second.requeue_after is None


def test_transition_time_moves_only_when_status_changes() -> None:
    cluster = simple()
    cluster.auto_ready = False
    cluster.step()
    cluster.advance(42)
    cluster.make_ready()
    cluster.step()
    status = cluster.endpoint.status
    assert status is not None
    times = {c.type: c.last_transition_time for c in status.conditions}
    assert times == {
        "Ready": "2026-01-01T00:00:42.000000Z",
        "Progressing": "2026-01-01T00:00:42.000000Z",
        "Degraded": "2026-01-01T00:00:00.000000Z",
    }


def test_variant_overrides_change_weights_and_counts_in_place() -> None:
    cfg = config("cfg1", variant("blue", "m1"), variant("green", "m1", initialInstanceCount=2))
    cluster = Cluster(endpoint("cfg1"), {"cfg1": cfg}, {"m1": model("m1")})
    cluster.step()
    cluster.step()
    assert cluster.weights() == {"fraud-cfg1-blue": 500, "fraud-cfg1-green": 500}
    deployments = cluster.names("Deployment")

    cluster.edit(
        variantOverrides=[
            {"variantName": "green", "desiredWeight": 3, "desiredInstanceCount": 4},
            {"variantName": "blue", "desiredInstanceCount": 1},
        ]
    )
    cluster.auto_ready = False
    plan = cluster.step()
    assert cluster.names("Deployment") == deployments  # the same fleet, patched
    assert cluster.weights() == {"fraud-cfg1-blue": 250, "fraud-cfg1-green": 750}
    assert cluster.objects[("Deployment", "fraud-cfg1-green")]["spec"]["replicas"] == 4
    assert plan.status.phase == "Updating"  # green is scaling up
    assert plan.status.observed_generation == 2
    cluster.make_ready()
    plan = cluster.step()
    assert plan.status.phase == "InService"
    green = next(v for v in plan.status.production_variants if v.variant_name == "green")
    assert (green.desired_weight, green.current_weight, green.desired_instance_count) == (3.0, 3.0, 4)


def test_missing_endpoint_config_is_reported_then_heals() -> None:
    cluster = Cluster(endpoint("cfg1"), {}, {"m1": model("m1")})
    plan = cluster.step()
    # Only the NetworkPolicy: it is planned whatever the fleets, so no pod is ever left open.
    assert [o["kind"] for o in plan.objects] == ["NetworkPolicy"]
    assert plan.status.phase == "Creating"
    assert plan.status.failure_reason == "EndpointConfig cfg1 not found"
    assert conditions(cluster)["Ready"] == ("False", "EndpointConfigNotFound")
    assert conditions(cluster)["Degraded"][0] == "True"
    cluster.configs["cfg1"] = config("cfg1", variant("blue", "m1"))
    cluster.step()
    assert cluster.step().status.phase == "InService"
    assert cluster.endpoint.status and cluster.endpoint.status.failure_reason is None


def test_missing_model_is_reported_per_variant() -> None:
    cfg = config("cfg1", variant("blue", "m1"), variant("green", "m2"))
    cluster = Cluster(endpoint("cfg1"), {"cfg1": cfg}, {"m1": model("m1")})
    plan = cluster.step()
    assert plan.status.failure_reason == "EndpointConfig cfg1: variant green: Model m2 not found"
    assert conditions(cluster)["Ready"] == ("False", "ModelNotFound")
    assert cluster.names("Deployment") == ["fraud-cfg1-blue"]  # what can be built is
    assert cluster.step().status.phase == "Creating"  # but the endpoint is not complete


def test_unknown_instance_type_fails() -> None:
    cluster = Cluster(
        endpoint("fraud-v2"),
        {"fraud-v2": config("fraud-v2", variant("blue", "m1", instanceType="gpu-huge"))},
        {"m1": model("m1")},
    )
    plan = cluster.step()
    assert plan.status.failure_reason == (
        'EndpointConfig fraud-v2: variant blue: unknown instanceType "gpu-huge" (known: cpu-large, '
        "cpu-small, gpu-small; the catalog is the operator settings' instanceTypes)"
    )
    assert plan.status.phase == "Failed"
    assert not [o for o in plan.objects if o["kind"] == "Deployment"]
    assert conditions(cluster)["Ready"] == ("False", "InvalidVariant")


def test_download_failure_from_the_init_container() -> None:
    cluster = simple()
    cluster.auto_ready = False
    cluster.step()
    cluster.pods = [
        failing_pod(
            "p1",
            initContainerStatuses=[
                {
                    "name": "storage-initializer",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {
                        "terminated": {
                            "exitCode": 1,
                            "message": "403 Forbidden from s3://models/m1/model.onnx",
                        }
                    },
                }
            ],
        ),
        failing_pod(
            "p2",
            initContainerStatuses=[
                {
                    "name": "storage-initializer",
                    "state": {
                        "terminated": {
                            "exitCode": 1,
                            "message": "403 Forbidden from s3://models/m1/model.onnx",
                        }
                    },
                }
            ],
        ),
    ]
    plan = cluster.step()
    assert (
        plan.status.failure_reason
        == "model m1: download failed: 403 Forbidden from s3://models/m1/model.onnx"
    )
    assert conditions(cluster)["Degraded"] == ("True", "PodFailures")
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "Degraded")]
    assert cluster.step().events == []  # told once


def test_image_pull_crash_loop_and_unschedulable() -> None:
    cluster = simple()
    cluster.auto_ready = False
    cluster.step()
    cluster.pods = [
        failing_pod(
            "pull",
            containerStatuses=[
                {
                    "name": "server",
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}},
                }
            ],
        ),
        failing_pod(
            "crash",
            initContainerStatuses=[{"name": "storage-initializer", "state": {"terminated": {"exitCode": 0}}}],
            containerStatuses=[
                {
                    "name": "server",
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}},
                    "lastState": {"terminated": {"exitCode": 1, "message": "onnxruntime: invalid model"}},
                }
            ],
        ),
        failing_pod(
            "pending",
            conditions=[
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient cpu.",
                }
            ],
        ),
        failing_pod("fine", containerStatuses=[{"name": "server", "state": {"running": {}}}]),
    ]
    reason = cluster.step().status.failure_reason
    assert reason is not None
    assert reason.split("; ") == [
        "variant blue (model m1): server: CrashLoopBackOff: onnxruntime: invalid model",
        "variant blue (model m1): server: ImagePullBackOff: no such image",
        "variant blue: unschedulable: 0/3 nodes are available: 3 Insufficient cpu.",
    ]


def test_pods_of_other_endpoints_are_ignored() -> None:
    cluster = simple()
    pod = failing_pod(
        "other", containerStatuses=[{"name": "server", "state": {"waiting": {"reason": "ErrImagePull"}}}]
    )
    pod["metadata"]["labels"][L.ENDPOINT] = "someone-else"
    cluster.pods = [pod]
    cluster.step()
    assert cluster.step().status.failure_reason is None


def test_stale_children_are_deleted_but_foreign_ones_never() -> None:
    cluster = simple()
    cluster.step()
    stale = copy.deepcopy(cluster.objects[("Deployment", "fraud-cfg1-blue")])
    stale["metadata"]["name"] = "fraud-old-blue"
    stale["metadata"]["labels"][L.ENDPOINT_CONFIG] = "old"
    foreign = copy.deepcopy(stale)
    foreign["metadata"]["name"] = "not-ours"
    foreign["metadata"]["labels"][L.ENDPOINT] = "another"
    unlabelled = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "plain", "namespace": "prod"}}
    pod = failing_pod("a-pod")  # pods are never children to delete
    observed = Observed(
        now=cluster.now,
        children=[*cluster.observed().children, stale, foreign, unlabelled, pod],
    )
    plan = plan_endpoint(
        PlanInput(cluster.endpoint, cluster.configs, cluster.models, cluster.settings, observed)
    )
    assert plan.delete == [ObjectRef("apps/v1", "Deployment", "fraud-old-blue", "prod")]


def test_objects_follow_the_observed_children_and_validate() -> None:
    cluster = simple(autoscaling={"maxReplicas": 5, "targetCPUUtilization": 60})
    cluster.step()
    plan = cluster.step()
    assert_admitted(plan.objects)
    assert plan.status.phase == "InService"
    # The HPA scaled to 4: the desired count follows it, but the variant stays ready at its floor
    # while the new pods start (it answered with 1 before; it must not flap out of InService).
    deployment = cluster.objects[("Deployment", "fraud-cfg1-blue")]
    deployment["spec"]["replicas"] = 4
    plan = cluster.plan()
    assert plan.status.production_variants[0].desired_instance_count == 4
    assert plan.status.production_variants[0].ready_instance_count == 1
    assert plan.status.phase == "InService"
    assert conditions_of(plan)["Ready"] == ("True", "Serving")
    assert not [e for e in plan.events if e.reason == "InService"]  # no event storm either


def test_overrides_that_zero_every_weight_are_ignored_and_reported() -> None:
    cfg = config(
        "cfg1", variant("blue", "m1", initialVariantWeight=1), variant("green", "m1", initialVariantWeight=3)
    )
    cluster = Cluster(endpoint("cfg1"), {"cfg1": cfg}, {"m1": model("m1")})
    cluster.step()
    cluster.edit(
        variantOverrides=[
            {"variantName": "blue", "desiredWeight": 0},
            {"variantName": "green", "desiredWeight": 0},
        ]
    )
    plan = cluster.step()
    assert cluster.weights() == {"fraud-cfg1-blue": 250, "fraud-cfg1-green": 750}
    assert plan.status.failure_reason == (
        "variantOverrides give every production variant weight 0: the config's weights apply"
    )
    assert plan.status.phase == "InService"


def test_one_override_weight_zero_takes_a_variant_out_of_the_default_rule() -> None:
    cfg = config("cfg1", variant("blue", "m1"), variant("green", "m1"))
    cluster = Cluster(endpoint("cfg1"), {"cfg1": cfg}, {"m1": model("m1")})
    cluster.edit(variantOverrides=[{"variantName": "blue", "desiredWeight": 0}])
    cluster.step()
    assert cluster.weights() == {"fraud-cfg1-green": 1000}
    route = cluster.route()
    assert route is not None
    headers = [r["matches"][0]["headers"][0]["value"] for r in header_rules(route)]
    assert headers == ["blue", "green"]  # still reachable by header


def test_a_serving_config_that_vanishes_keeps_its_fleet_and_route() -> None:
    cluster = simple()
    cluster.step()
    cluster.step()
    before = dict(cluster.objects)
    del cluster.configs["cfg1"]
    plan = cluster.step()
    assert plan.delete == []
    assert cluster.objects.keys() == before.keys()
    assert plan.status.failure_reason == "EndpointConfig cfg1 not found"
    assert plan.status.phase == "Updating"


def test_children_in_other_namespaces_are_not_ours() -> None:
    cluster = simple()
    cluster.step()
    elsewhere = copy.deepcopy(cluster.objects[("Deployment", "fraud-cfg1-blue")])
    elsewhere["metadata"].update(name="fraud-old-blue", namespace="other")
    observed = Observed(now=cluster.now, children=[*cluster.observed().children, elsewhere])
    plan = plan_endpoint(
        PlanInput(cluster.endpoint, cluster.configs, cluster.models, cluster.settings, observed)
    )
    assert plan.delete == []


def test_deployment_that_cannot_make_pods_is_reported() -> None:
    cluster = simple()
    cluster.auto_ready = False
    cluster.step()
    cluster.objects[("Deployment", "fraud-cfg1-blue")]["status"] = {
        "conditions": [
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": 'pods "fraud-cfg1-blue-x" is forbidden: exceeded quota: compute',
            }
        ]
    }
    plan = cluster.step()
    assert (
        plan.status.failure_reason
        == 'variant blue: pods "fraud-cfg1-blue-x" is forbidden: exceeded quota: compute'
    )
    assert conditions(cluster)["Degraded"] == ("True", "PodFailures")

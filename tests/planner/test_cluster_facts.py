"""What a real cluster reports that an emulator never did, and how the planner reads it: a Gateway
that has not accepted the route, a cluster without Gateway API, children the API server refused,
autoscalers without metrics, pods stuck before any container started, and bakes timed exactly."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from berth_operator.planner import Observed, PlanInput, plan_endpoint
from berth_operator.planner.podfailures import pods_stuck_starting
from berth_operator.planner.status import invalid_endpoint_status

from tests.support.routestatus import parents_status

from .support import EPOCH, Cluster, config, endpoint, model, variant


def simple(**variant_fields: Any) -> Cluster:
    cfg = config("cfg1", variant("blue", "m1", **variant_fields))
    return Cluster(endpoint("cfg1"), {"cfg1": cfg}, {"m1": model("m1")})


def conditions(plan: Any) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status, c.reason, c.message) for c in plan.status.conditions}


def route(cluster: Cluster) -> dict[str, Any]:
    found = cluster.route()
    assert found is not None
    return found


def test_a_route_no_gateway_has_accepted_keeps_the_endpoint_creating() -> None:
    cluster = simple()
    cluster.gateway_accepts = False
    cluster.step()
    plan = cluster.step()
    assert plan.status.phase == "Creating"
    ready = conditions(plan)["Ready"]
    assert ready[:2] == ("False", "RouteNotReady")
    assert "waiting for Gateway berth-system/berth to accept HTTPRoute fraud" in ready[2]
    assert not plan.status.failure_reason  # no word yet is not a failure

    route(cluster)["status"] = parents_status(route(cluster))
    assert cluster.plan().status.phase == "InService"


def test_a_refused_route_is_a_degraded_endpoint_that_says_why() -> None:
    cluster = simple()
    cluster.gateway_accepts = False
    cluster.step()
    refused = parents_status(
        route(cluster), accepted=False, reason="NotAllowedByListeners", message="namespace prod not allowed"
    )
    route(cluster)["status"] = refused
    plan = cluster.plan()
    assert plan.status.phase == "Creating"
    assert plan.status.failure_reason == (
        "HTTPRoute fraud: Gateway berth-system/berth reports Accepted=False "
        "(NotAllowedByListeners: namespace prod not allowed)"
    )
    assert conditions(plan)["Degraded"][:2] == ("True", "ConfigurationError")


def test_an_acceptance_of_an_older_generation_does_not_count() -> None:
    cluster = simple()
    cluster.step()
    assert cluster.step().status.phase == "InService"
    route(cluster)["metadata"]["generation"] = 2  # changed; the Gateway has not looked yet
    plan = cluster.plan()
    assert plan.status.phase == "Updating"
    assert "to see the new HTTPRoute fraud" in conditions(plan)["Ready"][2]


def test_no_gateway_api_in_the_cluster_names_the_fix_instead_of_retrying() -> None:
    cluster = simple()
    cluster.unavailable_kinds = frozenset({"HTTPRoute"})
    cluster.step()
    plan = cluster.step()  # the replicas are ready: only the route is missing
    assert not [o for o in plan.objects if o["kind"] == "HTTPRoute"]
    assert plan.status.failure_reason is not None
    assert "Gateway API CRDs are not installed" in plan.status.failure_reason
    assert "v1.3.0" in plan.status.failure_reason and "routing.mode" in plan.status.failure_reason
    assert conditions(plan)["Ready"][:2] == ("False", "RouteError")


def test_a_child_the_api_server_refused_keeps_the_endpoint_out_of_service() -> None:
    # A full Service range: 1,540 creates failed with 500 and those Endpoints still said InService.
    cluster = simple()
    cluster.step()
    cluster.step()
    del cluster.objects[("Service", "fraud-cfg1-blue")]
    failures = {("Service", "fraud-cfg1-blue"): "500: Internal error: range is full"}
    observed = cluster.observed()
    plan = plan_endpoint(
        PlanInput(
            cluster.endpoint,
            cluster.configs,
            cluster.models,
            cluster.settings,
            Observed(
                now=observed.now,
                children=observed.children,
                pods=observed.pods,
                write_failures=failures,
            ),
        )
    )
    assert plan.status.phase != "InService"
    assert conditions(plan)["Ready"][:2] == ("False", "ChildrenMissing")
    assert (
        plan.status.failure_reason
        == "cannot apply Service fraud-cfg1-blue: 500: Internal error: range is full"
    )
    assert conditions(plan)["Degraded"][:2] == ("True", "ApplyFailed")


def test_an_autoscaler_without_metrics_is_reported() -> None:
    cluster = simple(autoscaling={"maxReplicas": 4, "targetInvocationsPerReplica": 50})
    cluster.step()
    hpa = cluster.objects[("HorizontalPodAutoscaler", "fraud-cfg1-blue")]
    hpa["status"] = {
        "conditions": [
            {
                "type": "ScalingActive",
                "status": "False",
                "reason": "FailedGetPodsMetric",
                "message": "unable to get metric berth_invocations_per_second",
            }
        ]
    }
    plan = cluster.plan()
    assert plan.status.phase == "InService"  # it serves at its floor; it cannot scale
    assert plan.status.failure_reason is not None
    assert plan.status.failure_reason.startswith(
        "variant blue: the autoscaler cannot scale (FailedGetPodsMetric: unable to get metric"
    )
    assert "prometheus-adapter" in plan.status.failure_reason


def stuck_pod(name: str, scheduled_minutes_ago: float) -> dict[str, Any]:
    scheduled = (EPOCH - timedelta(minutes=scheduled_minutes_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    labels = {
        "berth.dev/endpoint": "fraud",
        "berth.dev/endpoint-config": "cfg1",
        "berth.dev/variant": "blue",
    }
    waiting = {"waiting": {"reason": "PodInitializing"}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "prod", "labels": labels},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled}],
            "initContainerStatuses": [{"name": "storage-initializer", "state": waiting}],
            "containerStatuses": [{"name": "server", "state": waiting}],
        },
    }


def test_a_pod_that_cannot_mount_its_volume_says_so_with_its_events() -> None:
    cluster = simple()
    cluster.auto_ready = False
    cluster.step()
    young, old = stuck_pod("p-young", 1), stuck_pod("p-old", 6)
    assert pods_stuck_starting([young, old], EPOCH) == ["p-old"]
    observed = cluster.observed()
    events = {
        "p-old": (
            ("FailedAttachVolume", "Multi-Attach error for volume pvc-1: used by another node"),
            ("FailedMount", "timed out waiting for the condition"),
        )
    }
    plan = plan_endpoint(
        PlanInput(
            cluster.endpoint,
            cluster.configs,
            cluster.models,
            cluster.settings,
            Observed(now=EPOCH, children=observed.children, pods=[young, old], pod_events=events),
        )
    )
    assert plan.status.failure_reason == (
        "variant blue (model m1): pod p-old has not started a container for 6m (PodInitializing): "
        "FailedAttachVolume: Multi-Attach error for volume pvc-1: used by another node; "
        "FailedMount: timed out waiting for the condition"
    )


def test_a_bake_lasts_exactly_its_wait_interval() -> None:
    # Whole-second timestamps against a precise clock once made a 3 s bake last about 2 s.
    old = config("cfg1", variant("blue", "m1"))
    new = config("cfg2", variant("blue", "m2"))
    routing = {"blueGreen": {"trafficRouting": {"type": "Canary", "waitIntervalSeconds": 3}}}
    cluster = Cluster(
        endpoint("cfg1", deploymentConfig=routing),
        {"cfg1": old, "cfg2": new},
        {"m1": model("m1"), "m2": model("m2")},
    )
    cluster.now = EPOCH + timedelta(seconds=0.9)
    cluster.step()
    cluster.step()
    cluster.edit(endpointConfigName="cfg2")
    cluster.step()  # provisioning
    shifted = cluster.step()  # canary at 10%
    assert shifted.status.rollout is not None and shifted.status.rollout.traffic_shifted_percent == 10
    cluster.advance(2.95)
    assert cluster.step().status.rollout.traffic_shifted_percent == 10  # type: ignore[union-attr]
    cluster.advance(0.06)
    assert cluster.step().status.rollout.traffic_shifted_percent == 100  # type: ignore[union-attr]


def test_an_invalid_endpoint_spec_gets_a_planned_status_without_a_stale_ready() -> None:
    stored = {
        "phase": "InService",
        "endpointConfigName": "cfg1",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Serving",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
    }
    raw = {"metadata": {"name": "fraud", "generation": 4}, "status": stored}
    status = invalid_endpoint_status(raw, "spec.endpointConfigName: String should match pattern", EPOCH)
    assert status["phase"] == "Failed" and status["observedGeneration"] == 4
    assert status["endpointConfigName"] == "cfg1"  # what it served stays on record
    by_type = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert by_type == {
        "Ready": ("False", "InvalidSpec"),
        "Progressing": ("False", "InvalidSpec"),
        "Degraded": ("True", "InvalidSpec"),
    }

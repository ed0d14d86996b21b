"""Blue/green rollouts: policies, bakes, rollbacks, aborts, supersedes, resume, capacity."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from berth_operator.api import EndpointStatus
from berth_operator.planner import FleetMetrics
from berth_operator.planner import labels as L

from .support import Cluster, config, endpoint, model, variant
from .support import header_rules as support_header_rules
from .validation import assert_admitted

OLD = "fraud-cfg1-blue"
NEW = "fraud-cfg2-blue"


def rollout_cluster(
    routing: dict[str, Any] | None = None,
    termination: int = 30,
    timeout: int = 600,
    auto_rollback: dict[str, Any] | None = None,
    new_variant: dict[str, Any] | None = None,
    old_variant: dict[str, Any] | None = None,
) -> Cluster:
    """An endpoint InService on cfg1; cfg2 and cfg3 exist."""
    deployment_config: dict[str, Any] = {
        "blueGreen": {
            "trafficRouting": routing or {"type": "AllAtOnce", "waitIntervalSeconds": 0},
            "terminationWaitSeconds": termination,
            "maximumExecutionTimeoutSeconds": timeout,
        },
        "autoRollback": auto_rollback or {"maxErrorRatePercent": 5},
    }
    configs = {
        "cfg1": config("cfg1", old_variant or variant("blue", "m1", initialInstanceCount=2)),
        "cfg2": config("cfg2", new_variant or variant("blue", "m2", initialInstanceCount=2)),
        "cfg3": config("cfg3", variant("blue", "m3")),
    }
    models = {name: model(name) for name in ("m1", "m2", "m3")}
    cluster = Cluster(endpoint("cfg1", deploymentConfig=deployment_config), configs, models)
    cluster.step()
    assert cluster.step().status.phase == "InService"
    return cluster


def run(cluster: Cluster, seconds: float, tick: float = 1.0) -> list[tuple[float, dict[str, int], list[str]]]:
    """Reconcile every tick for seconds; the weights after each step, when they or events change."""
    seen: list[tuple[float, dict[str, int], list[str]]] = []
    start = cluster.now
    for _ in range(int(seconds / tick) + 1):
        plan = cluster.step()
        assert_no_dropped_traffic(cluster)
        events = [e.reason for e in plan.events]
        weights = cluster.weights()
        if not seen or seen[-1][1] != weights or events:
            seen.append(((cluster.now - start).total_seconds(), weights, events))
        cluster.advance(tick)
    return seen


def assert_no_dropped_traffic(cluster: Cluster) -> None:
    """Every Service the route sends to has a ready Deployment behind it."""
    for service, weight in cluster.weights().items():
        deployment = cluster.objects.get(("Deployment", service))
        assert deployment is not None, f"route sends to {service}, which has no Deployment"
        if weight:
            status = deployment.get("status", {})
            assert status.get("readyReplicas", 0) >= 1, (
                f"route sends {weight} to {service}, which is not ready"
            )


def weight_sequence(history: list[tuple[float, dict[str, int], list[str]]]) -> list[dict[str, int]]:
    result: list[dict[str, int]] = []
    for _, weights, _ in history:
        if not result or result[-1] != weights:
            result.append(weights)
    return result


def status(cluster: Cluster) -> EndpointStatus:
    assert cluster.endpoint.status is not None
    return cluster.endpoint.status


# --------------------------------------------------------------------------- policies


def test_all_at_once() -> None:
    cluster = rollout_cluster({"type": "AllAtOnce", "waitIntervalSeconds": 10}, termination=20)
    cluster.edit(endpointConfigName="cfg2")
    history = run(cluster, 60)
    assert weight_sequence(history) == [{OLD: 1000}, {NEW: 1000}]
    events = [(t, e) for t, _, es in history for e in es]
    assert [e for _, e in events] == [
        "RolloutStarted",
        "TrafficShifted",
        "OldFleetTerminating",
        "RolloutCompleted",
        "InService",
    ]
    times = dict((e, t) for t, e in events)
    assert times["OldFleetTerminating"] - times["TrafficShifted"] == 10  # the bake
    assert times["RolloutCompleted"] - times["OldFleetTerminating"] == 20  # terminationWaitSeconds
    assert cluster.names("Deployment") == [NEW]
    assert status(cluster).endpoint_config_name == "cfg2"
    assert status(cluster).rollout is None and status(cluster).pending_endpoint_config_name is None


def test_canary() -> None:
    routing = {"type": "Canary", "waitIntervalSeconds": 30, "canarySize": {"type": "Percent", "value": 10}}
    cluster = rollout_cluster(routing, termination=5)
    cluster.edit(endpointConfigName="cfg2")
    history = run(cluster, 90)
    assert weight_sequence(history) == [{OLD: 1000}, {OLD: 900, NEW: 100}, {NEW: 1000}]
    shifts = [t for t, _, es in history if "TrafficShifted" in es]
    assert shifts[1] - shifts[0] == 30


def test_linear() -> None:
    routing = {"type": "Linear", "waitIntervalSeconds": 5, "linearStepSize": {"type": "Percent", "value": 30}}
    cluster = rollout_cluster(routing, termination=0)
    cluster.edit(endpointConfigName="cfg2")
    history = run(cluster, 40)
    assert weight_sequence(history) == [
        {OLD: 1000},
        {OLD: 700, NEW: 300},
        {OLD: 400, NEW: 600},
        {OLD: 100, NEW: 900},
        {NEW: 1000},
    ]
    shifts = [t for t, _, es in history if "TrafficShifted" in es]
    assert [b - a for a, b in itertools.pairwise(shifts)] == [5, 5, 5]
    assert cluster.names("Deployment") == [NEW]


def test_status_during_a_rollout() -> None:
    routing = {
        "type": "Linear",
        "waitIntervalSeconds": 60,
        "linearStepSize": {"type": "Percent", "value": 25},
    }
    cluster = rollout_cluster(routing)
    cluster.edit(endpointConfigName="cfg2")
    cluster.step()
    plan = cluster.step()
    st = plan.status
    assert st.phase == "Updating"
    assert (st.endpoint_config_name, st.pending_endpoint_config_name) == ("cfg1", "cfg2")
    assert st.rollout is not None
    assert (st.rollout.step, st.rollout.traffic_shifted_percent, st.rollout.state) == (1, 25, "Baking")
    assert st.production_variants[0].desired_weight == 0.75
    assert st.pending_production_variants[0].desired_weight == 0.25
    assert plan.requeue_after == 10.0  # re-read the metrics while baking
    progressing = next(c for c in st.conditions if c.type == "Progressing")
    assert (progressing.status, progressing.reason) == ("True", "RollingOut")
    assert "25% of traffic shifted" in progressing.message
    ready = next(c for c in st.conditions if c.type == "Ready")
    assert ready.status == "True"  # the serving fleet answers throughout
    assert_admitted(plan.objects)
    assert sorted(cluster.names("Deployment")) == [OLD, NEW]


def test_new_fleet_takes_traffic_only_when_ready() -> None:
    cluster = rollout_cluster()
    cluster.not_ready.add(NEW)
    cluster.edit(endpointConfigName="cfg2")
    history = run(cluster, 20)
    assert weight_sequence(history) == [{OLD: 1000}]
    assert status(cluster).rollout is not None and status(cluster).rollout.state == "Provisioning"  # type: ignore[union-attr]
    cluster.not_ready.clear()
    cluster.make_ready()
    history = run(cluster, 40)
    assert weight_sequence(history)[-1] == {NEW: 1000}


def test_spec_change_before_first_service_switches_directly() -> None:
    cluster = rollout_cluster()
    cluster.endpoint = endpoint("cfg1", deploymentConfig=cluster.endpoint.spec.deployment_config.to_wire())
    cluster.objects.clear()
    cluster.auto_ready = False
    cluster.step()  # Creating, nothing ready
    cluster.edit(endpointConfigName="cfg2")
    plan = cluster.step()
    assert plan.status.rollout is None
    assert plan.status.endpoint_config_name == "cfg2"
    assert sorted(cluster.names("Deployment")) == [OLD, NEW]  # the route still points at cfg1
    cluster.step()
    assert cluster.names("Deployment") == [NEW]


# --------------------------------------------------------------------------- rollback


def test_rollback_on_error_rate() -> None:
    routing = {"type": "Canary", "waitIntervalSeconds": 60, "canarySize": {"type": "Percent", "value": 10}}
    cluster = rollout_cluster(routing, auto_rollback={"maxErrorRatePercent": 5})
    cluster.edit(endpointConfigName="cfg2")
    run(cluster, 3)
    assert cluster.weights() == {OLD: 900, NEW: 100}
    cluster.metrics = {"cfg2": FleetMetrics(requests=5, errors_5xx=5)}  # too few requests to judge
    run(cluster, 3)
    assert cluster.weights() == {OLD: 900, NEW: 100}
    cluster.metrics = {"cfg2": FleetMetrics(requests=100, errors_5xx=12)}
    plan = cluster.step()
    assert (plan.events[0].type, plan.events[0].reason, plan.events[0].message) == (
        "Warning",
        "RolledBack",
        "rolled back EndpointConfig cfg2: 5xx 12.0% > 5%",
    )
    assert cluster.weights() == {OLD: 1000}
    st = plan.status
    assert (st.phase, st.endpoint_config_name, st.pending_endpoint_config_name) == (
        "RollingBack",
        "cfg1",
        None,
    )
    degraded = next(c for c in st.conditions if c.type == "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "RolledBack")
    assert degraded.message.startswith("rolled back: 5xx 12.0% > 5%")
    # The new fleet goes once the route no longer sends to it.
    assert NEW in cluster.names("Deployment") and plan.requeue_after == 2.0
    assert cluster.step().status.phase == "InService"
    assert cluster.names("Deployment") == [OLD]
    # Not tried again, and the status stays put.
    history = run(cluster, 30)
    assert weight_sequence(history) == [{OLD: 1000}]
    assert all(not events for _, _, events in history)
    assert status(cluster).last_rollback is not None
    assert status(cluster).last_rollback.endpoint_config_name == "cfg2"  # type: ignore[union-attr]
    assert cluster.names("Deployment") == [OLD]


def test_rollback_on_p99() -> None:
    routing = {"type": "AllAtOnce", "waitIntervalSeconds": 60}
    cluster = rollout_cluster(routing, auto_rollback={"maxErrorRatePercent": 5, "maxP99LatencyMs": 250})
    cluster.edit(endpointConfigName="cfg2")
    run(cluster, 3)
    assert cluster.weights() == {NEW: 1000}
    cluster.metrics = {"cfg2": FleetMetrics(requests=1000, errors_5xx=0, p99_latency_ms=900)}
    plan = cluster.step()
    assert plan.status.failure_reason == "rolled back: p99 900ms > 250ms (EndpointConfig cfg2)"
    assert cluster.weights() == {OLD: 1000}


def test_metrics_are_not_checked_without_auto_rollback() -> None:
    cluster = rollout_cluster({"type": "AllAtOnce", "waitIntervalSeconds": 5}, termination=0)
    cluster.endpoint.spec.deployment_config.auto_rollback = None
    cluster.edit(endpointConfigName="cfg2")
    cluster.metrics = {"cfg2": FleetMetrics(requests=100, errors_5xx=100)}
    run(cluster, 20)
    assert status(cluster).endpoint_config_name == "cfg2"


def test_rollback_when_new_fleet_is_not_ready_in_time() -> None:
    cluster = rollout_cluster(timeout=120)
    cluster.not_ready.add(NEW)
    cluster.edit(endpointConfigName="cfg2")
    plan = cluster.step()
    assert plan.requeue_after == 30.0
    history = run(cluster, 130, tick=10)
    assert weight_sequence(history) == [{OLD: 1000}]
    rolled = [t for t, _, events in history if "RolledBack" in events]
    assert rolled == [120.0]
    assert (
        status(cluster).failure_reason == "rolled back: new fleet not ready within 120s (EndpointConfig cfg2)"
    )
    assert cluster.names("Deployment") == [OLD]


def test_rollback_when_new_fleet_fails() -> None:
    cluster = rollout_cluster()
    cluster.not_ready.add(NEW)
    cluster.edit(endpointConfigName="cfg2")
    cluster.step()
    cluster.pods = [
        {
            "metadata": {
                "name": "new-pod",
                "labels": {L.ENDPOINT: "fraud", L.ENDPOINT_CONFIG: "cfg2", L.VARIANT: "blue", L.MODEL: "m2"},
            },
            "status": {
                "initContainerStatuses": [
                    {
                        "name": "storage-initializer",
                        "state": {"terminated": {"exitCode": 1, "message": "403 Forbidden"}},
                    }
                ]
            },
        }
    ]
    plan = cluster.step()
    assert "RolledBack" in [e.reason for e in plan.events]
    assert (
        plan.status.failure_reason
        == "rolled back: model m2: download failed: 403 Forbidden (EndpointConfig cfg2)"
    )
    assert plan.status.phase == "InService"
    assert cluster.names("Deployment") == [OLD]  # it never had traffic: deleted at once


def test_a_new_config_after_a_rollback_is_rolled_out() -> None:
    cluster = rollout_cluster(timeout=60)
    cluster.not_ready.add(NEW)
    cluster.edit(endpointConfigName="cfg2")
    run(cluster, 70, tick=10)
    assert status(cluster).last_rollback is not None
    cluster.edit(endpointConfigName="cfg3")
    history = run(cluster, 40)
    assert weight_sequence(history)[-1] == {"fraud-cfg3-blue": 1000}
    assert status(cluster).last_rollback is None
    assert status(cluster).failure_reason is None


# --------------------------------------------------------------------------- abort, supersede


def test_revert_mid_rollout_aborts() -> None:
    routing = {"type": "Canary", "waitIntervalSeconds": 60, "canarySize": {"type": "Percent", "value": 20}}
    cluster = rollout_cluster(routing)
    cluster.edit(endpointConfigName="cfg2")
    run(cluster, 3)
    assert cluster.weights() == {OLD: 800, NEW: 200}
    cluster.edit(endpointConfigName="cfg1")
    plan = cluster.step()
    assert [e.reason for e in plan.events] == ["RolloutAborted"]
    assert cluster.weights() == {OLD: 1000}
    assert plan.status.rollout is None
    assert cluster.step().status.phase == "InService"
    assert cluster.names("Deployment") == [OLD]
    assert status(cluster).failure_reason is None


def test_third_config_supersedes_without_dropping_traffic() -> None:
    routing = {
        "type": "Linear",
        "waitIntervalSeconds": 10,
        "linearStepSize": {"type": "Percent", "value": 50},
    }
    cluster = rollout_cluster(routing, termination=0)
    cluster.edit(endpointConfigName="cfg2")
    run(cluster, 3)
    assert cluster.weights() == {OLD: 500, NEW: 500}
    cluster.not_ready.add("fraud-cfg3-blue")
    cluster.edit(endpointConfigName="cfg3")
    plan = cluster.step()
    assert [e.reason for e in plan.events] == ["RolloutSuperseded", "RolloutStarted"]
    assert cluster.weights() == {OLD: 1000}  # cfg1 is ready: cfg2's share goes back to it
    assert plan.status.pending_endpoint_config_name == "cfg3"
    history = run(cluster, 10)
    assert weight_sequence(history) == [{OLD: 1000}]
    assert "fraud-cfg2-blue" not in cluster.names("Deployment")
    cluster.not_ready.clear()
    history = run(cluster, 40)
    assert weight_sequence(history) == [
        {OLD: 1000},
        {OLD: 500, "fraud-cfg3-blue": 500},
        {"fraud-cfg3-blue": 1000},
    ]
    assert status(cluster).endpoint_config_name == "cfg3"


def test_supersede_while_terminating_builds_on_the_new_config() -> None:
    cluster = rollout_cluster({"type": "AllAtOnce", "waitIntervalSeconds": 0}, termination=300)
    cluster.edit(endpointConfigName="cfg2")
    run(cluster, 3)
    assert status(cluster).rollout is not None and status(cluster).rollout.state == "Terminating"  # type: ignore[union-attr]
    cluster.edit(endpointConfigName="cfg3")
    plan = cluster.step()
    assert [e.reason for e in plan.events] == ["RolloutCompleted", "RolloutStarted"]
    assert plan.status.endpoint_config_name == "cfg2"
    assert cluster.weights() == {NEW: 1000}  # never back to the old fleet
    history = run(cluster, 10)
    assert weight_sequence(history)[-1] == {"fraud-cfg3-blue": 1000}


def test_supersede_waits_while_the_serving_fleet_is_not_ready() -> None:
    routing = {"type": "Canary", "waitIntervalSeconds": 60, "canarySize": {"type": "Percent", "value": 30}}
    cluster = rollout_cluster(routing)
    cluster.edit(endpointConfigName="cfg2")
    run(cluster, 3)
    cluster.objects[("Deployment", OLD)]["status"]["readyReplicas"] = 0
    cluster.not_ready.add(OLD)
    cluster.edit(endpointConfigName="cfg1")  # revert, but cfg1 cannot take the traffic back now
    plan = cluster.step()
    assert cluster.weights() == {OLD: 700, NEW: 300}
    assert plan.status.rollout is not None and plan.requeue_after == 5.0
    progressing = next(c for c in plan.status.conditions if c.type == "Progressing")
    assert "waiting for EndpointConfig cfg1 to be ready" in progressing.message
    cluster.not_ready.clear()
    cluster.make_ready()
    cluster.step()
    assert cluster.weights() == {OLD: 1000}


# --------------------------------------------------------------------------- resume, capacity


def test_resume_from_a_stored_status() -> None:
    routing = {
        "type": "Linear",
        "waitIntervalSeconds": 60,
        "linearStepSize": {"type": "Percent", "value": 25},
    }
    cluster = rollout_cluster(routing)
    cluster.edit(endpointConfigName="cfg2")
    run(cluster, 65, tick=5)
    assert cluster.weights() == {OLD: 500, NEW: 500}
    stored = status(cluster).rollout
    assert stored is not None and stored.step == 2

    # An operator restart: a fresh planner gets the stored status and the same world.
    restarted = Cluster(cluster.endpoint, cluster.configs, cluster.models, now=cluster.now)
    restarted.objects = {k: dict(v) for k, v in cluster.objects.items()}
    again = restarted.plan()
    assert again.status.rollout == stored
    assert again.events == []
    restarted.apply(again)
    assert restarted.weights() == {OLD: 500, NEW: 500}
    history = run(restarted, 200, tick=5)
    sequence = weight_sequence(history)
    assert sequence[0] == {OLD: 500, NEW: 500}
    assert sequence[1:] == [{OLD: 250, NEW: 750}, {NEW: 1000}]


def test_same_input_same_plan_mid_rollout() -> None:
    routing = {"type": "Canary", "waitIntervalSeconds": 60, "canarySize": {"type": "Percent", "value": 10}}
    cluster = rollout_cluster(routing)
    cluster.edit(endpointConfigName="cfg2")
    run(cluster, 10)
    first, second = cluster.plan(), cluster.plan()
    assert first == second
    cluster.apply(first)
    third = cluster.plan()
    assert third.status == first.status and third.events == []


def test_capacity_of_an_autoscaled_variant_is_retained() -> None:
    scaling = {"minReplicas": 1, "maxReplicas": 10, "targetCPUUtilization": 60}
    cluster = rollout_cluster(
        {"type": "AllAtOnce", "waitIntervalSeconds": 0},
        old_variant=variant("blue", "m1", autoscaling=scaling),
        new_variant=variant("blue", "m2", autoscaling=scaling),
    )
    cluster.objects[("Deployment", OLD)]["spec"]["replicas"] = 6  # the HPA grew the old fleet
    cluster.make_ready()
    cluster.auto_ready = False
    cluster.edit(endpointConfigName="cfg2")
    plan = cluster.step()
    assert plan.status.rollout is not None
    assert plan.status.rollout.retained_instance_counts == {"blue": 6}
    assert cluster.objects[("HorizontalPodAutoscaler", NEW)]["spec"]["minReplicas"] == 6
    assert (
        "replicas"
        not in next(o for o in plan.objects if o["metadata"]["name"] == NEW and o["kind"] == "Deployment")[
            "spec"
        ]
    )
    assert cluster.objects[("PodDisruptionBudget", NEW)]  # more than one replica now
    # Ready means the retained six are up, not the HPA's one.
    cluster.objects[("Deployment", NEW)]["spec"]["replicas"] = 1
    cluster.objects[("Deployment", NEW)]["status"] = {
        "observedGeneration": 1,
        "readyReplicas": 1,
        "updatedReplicas": 1,
    }
    cluster.step()
    assert cluster.weights() == {OLD: 1000}
    cluster.objects[("Deployment", NEW)]["spec"]["replicas"] = 6
    cluster.make_ready()
    cluster.step()
    assert cluster.weights() == {NEW: 1000}
    run(cluster, 40)
    assert status(cluster).rollout is None, status(cluster).conditions
    # After the rollout the HPA floor is the config's again.
    assert cluster.objects[("HorizontalPodAutoscaler", NEW)]["spec"]["minReplicas"] == 1


@pytest.mark.parametrize("mode", ["ingress", "none"])
def test_rollouts_in_other_routing_modes(mode: str) -> None:
    from berth_operator.settings import Routing, Settings

    cluster = rollout_cluster(
        {"type": "Canary", "waitIntervalSeconds": 5, "canarySize": {"value": 10}}, termination=0
    )
    cluster.settings = Settings(routing=Routing(mode=mode))  # type: ignore[arg-type]
    cluster.step()
    cluster.step()
    cluster.edit(endpointConfigName="cfg2")
    cluster.step()
    plan = cluster.step()
    assert_admitted(plan.objects)
    if mode == "ingress":
        canary = next(o for o in plan.objects if o["metadata"]["name"] == "fraud-canary")
        assert canary["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight"] == "100"
    run(cluster, 20)
    assert status(cluster).endpoint_config_name == "cfg2"
    assert cluster.names("Deployment") == [NEW]


def test_header_rules_follow_the_fleets_with_traffic() -> None:
    routing = {"type": "Canary", "waitIntervalSeconds": 60, "canarySize": {"value": 10}}
    configs_new = variant("blue", "m2")
    cluster = rollout_cluster(routing, new_variant=configs_new)
    cluster.configs["cfg2"] = config("cfg2", configs_new, variant("green", "m2"))
    cluster.not_ready.add(NEW)
    cluster.edit(endpointConfigName="cfg2")
    cluster.step()

    def header_rules() -> dict[str, list[tuple[str, int]]]:
        route = cluster.route()
        assert route is not None
        return {
            rule["matches"][0]["headers"][0]["value"]: [(r["name"], r["weight"]) for r in rule["backendRefs"]]
            for rule in support_header_rules(route)
        }

    assert header_rules() == {"blue": [(OLD, 100)]}  # nothing of cfg2 until it takes traffic
    cluster.not_ready.clear()
    cluster.make_ready()
    cluster.step()
    assert header_rules() == {
        "blue": [(OLD, 90), (NEW, 10)],
        "green": [("fraud-cfg2-green", 10)],
    }


def test_a_lost_status_write_does_not_move_traffic_back() -> None:
    routing = {
        "type": "Linear",
        "waitIntervalSeconds": 10,
        "linearStepSize": {"type": "Percent", "value": 25},
    }
    cluster = rollout_cluster(routing)
    cluster.edit(endpointConfigName="cfg2")
    run(cluster, 12)
    assert cluster.weights() == {OLD: 500, NEW: 500}
    stale = cluster.endpoint  # the status says 50%
    cluster.advance(10)
    cluster.step()
    assert cluster.weights() == {OLD: 250, NEW: 750}
    # The route was patched, but the status patch failed: the operator reads the old status.
    cluster.endpoint = stale
    plan = cluster.step()
    assert cluster.weights() == {OLD: 250, NEW: 750}
    assert [e.reason for e in plan.events] == ["RolloutResumed"]
    assert plan.status.rollout is not None and plan.status.rollout.traffic_shifted_percent == 75
    history = run(cluster, 40)
    assert weight_sequence(history) == [{OLD: 250, NEW: 750}, {NEW: 1000}]

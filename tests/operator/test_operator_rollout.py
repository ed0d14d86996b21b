"""Blue/green rollouts and auto rollback (issue #4), with the real operator (kopf) against KMock.

Traffic steps are read back from KMock's recorded versions of the HTTPRoute.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

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
from tests.operator.metrics_server import FleetMetricsServer
from tests.support.kmockk8s import KMockCluster, wait_for

pytestmark = pytest.mark.timeout(90)


def status(cluster: KMockCluster) -> dict:
    return (cluster.get("Endpoint", NS, "ep") or {}).get("status") or {}


def policy(kind: str, wait: int = 1, termination: int = 0, **routing: Any) -> dict:
    return {
        "blueGreen": {
            "trafficRouting": {"type": kind, "waitIntervalSeconds": wait, **routing},
            "terminationWaitSeconds": termination,
        }
    }


def new_share(route: dict | None, config_name: str) -> int | None:
    """Percent of the default rule's weight on the Services of config_name."""
    if route is None:
        return None
    refs = route["spec"]["rules"][-1]["backendRefs"]
    total = sum(ref["weight"] for ref in refs)
    new = sum(ref["weight"] for ref in refs if f"-{config_name}-" in ref["name"])
    return round(100 * new / total) if total else None


def share_sequence(cluster: KMockCluster, config_name: str) -> list[int]:
    route_name = children(cluster, "HTTPRoute", "ep")[0]["metadata"]["name"]
    shares = [new_share(v, config_name) for v in cluster.history("HTTPRoute", NS, route_name)]
    return [share for share, _ in itertools.groupby(shares) if share is not None]


def serving_cfg1(
    cluster: KMockCluster, deployment_config: dict | None = None, count: int = 1, **v1: Any
) -> None:
    cluster.create(model("m1"))
    cluster.create(model("m2"))
    cluster.create(config("cfg1", variant("blue", "m1", count=count, **v1)))
    cluster.create(config("cfg2", variant("blue", "m2", count=count, **v1)))
    spec = {"deploymentConfig": deployment_config} if deployment_config else {}
    cluster.create(endpoint("ep", "cfg1", **spec))
    wait_for(lambda: children(cluster, "Deployment", "ep"), message="cfg1 Deployment")
    set_deployments_ready(cluster, "ep")
    wait_for(lambda: status(cluster).get("phase") == "InService", message="InService on cfg1")


def start_rollout(cluster: KMockCluster) -> dict:
    cluster.patch("Endpoint", NS, "ep", {"spec": {"endpointConfigName": "cfg2"}})
    wait_for(
        lambda: any(
            d["metadata"]["name"].startswith("ep-cfg2") for d in children(cluster, "Deployment", "ep")
        ),
        message="cfg2 Deployment",
    )
    return next(
        d for d in children(cluster, "Deployment", "ep") if d["metadata"]["name"].startswith("ep-cfg2")
    )


def completed(cluster: KMockCluster) -> bool:
    s = status(cluster)
    return s.get("endpointConfigName") == "cfg2" and not s.get("rollout") and s.get("phase") == "InService"


def run_to_completion(cluster: KMockCluster, timeout: float = 20) -> None:
    def done() -> bool:
        set_deployments_ready(cluster, "ep")  # the kubelet keeps every new replica ready
        return completed(cluster)

    wait_for(done, timeout=timeout, interval=0.1, message="rollout completed")


@pytest.mark.parametrize(
    ("routing", "expected"),
    [
        ({"type": "AllAtOnce"}, [0, 100]),
        ({"type": "Canary", "canarySize": {"type": "Percent", "value": 10}}, [0, 10, 100]),
        ({"type": "Linear", "linearStepSize": {"type": "Percent", "value": 40}}, [0, 40, 80, 100]),
    ],
)
def test_policy_traffic_steps(cluster, start_operator, routing, expected):
    start_operator()
    kind = routing.pop("type")
    serving_cfg1(cluster, policy(kind, wait=1, **routing))
    start_rollout(cluster)
    run_to_completion(cluster)
    assert share_sequence(cluster, "cfg2") == expected
    # The old fleet is gone after the termination wait.
    wait_for(
        lambda: all("-cfg1-" not in d["metadata"]["name"] for d in children(cluster, "Deployment", "ep"))
    )


def test_rollback_on_5xx_breach_from_real_metrics(cluster, start_operator):
    start_operator()
    deployment_config = policy("Canary", wait=3, canarySize={"type": "Percent", "value": 20})
    deployment_config["autoRollback"] = {"maxErrorRatePercent": 5}
    serving_cfg1(cluster, deployment_config)
    with FleetMetricsServer(ok_per_scrape=20, errors_per_scrape=10) as metrics:
        new = start_rollout(cluster)
        cluster.create(pod_of(new, "ep-cfg2-blue-1", {"phase": "Running"}, ip="127.0.0.1", port=metrics.port))
        set_deployments_ready(cluster, "ep", config="cfg2")
        record = wait_for(lambda: status(cluster).get("lastRollback"), timeout=15, message="rollback")
        assert metrics.scrapes >= 1
    assert record["endpointConfigName"] == "cfg2"
    assert "5xx" in record["reason"]
    final = status(cluster)
    assert final["endpointConfigName"] == "cfg1" and final["phase"] == "InService"
    degraded = next(c for c in final["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    sequence = share_sequence(cluster, "cfg2")
    assert sequence[-1] == 0 and 20 in sequence
    wait_for(
        lambda: all("-cfg2-" not in d["metadata"]["name"] for d in children(cluster, "Deployment", "ep"))
    )


def test_healthy_metrics_do_not_roll_back(cluster, start_operator):
    start_operator()
    deployment_config = policy("Canary", wait=1, canarySize={"type": "Percent", "value": 20})
    deployment_config["autoRollback"] = {"maxErrorRatePercent": 5}
    serving_cfg1(cluster, deployment_config)
    with FleetMetricsServer(ok_per_scrape=50, errors_per_scrape=1) as metrics:
        new = start_rollout(cluster)
        cluster.create(pod_of(new, "ep-cfg2-blue-1", {"phase": "Running"}, ip="127.0.0.1", port=metrics.port))
        run_to_completion(cluster)
        assert metrics.scrapes >= 1
    assert not status(cluster).get("lastRollback")


def test_rollback_when_new_fleet_not_ready_in_time(cluster, start_operator):
    start_operator()
    serving_cfg1(cluster, policy("AllAtOnce"))
    start_rollout(cluster)
    wait_for(
        lambda: (status(cluster).get("rollout") or {}).get("state") == "Provisioning", message="provisioning"
    )
    # The new fleet never gets ready. Rather than wait 30 minutes, move the rollout's start back
    # by that much, as if the operator had been away for it (the status is its only memory).
    rollout = status(cluster)["rollout"]
    cluster.patch(
        "Endpoint",
        NS,
        "ep",
        {"status": {"rollout": {**rollout, "startedAt": "2000-01-01T00:00:00Z"}}},
        "status",
    )
    record = wait_for(lambda: status(cluster).get("lastRollback"), message="rollback on timeout")
    assert "not ready" in record["reason"]
    assert status(cluster)["endpointConfigName"] == "cfg1"
    assert share_sequence(cluster, "cfg2") in ([0], [])


def test_revert_aborts_rollout(cluster, start_operator):
    start_operator()
    serving_cfg1(cluster, policy("Canary", wait=30, canarySize={"type": "Percent", "value": 10}))
    start_rollout(cluster)
    set_deployments_ready(cluster, "ep", config="cfg2")
    wait_for(
        lambda: (status(cluster).get("rollout") or {}).get("trafficShiftedPercent") == 10,
        message="canary step",
    )
    cluster.patch("Endpoint", NS, "ep", {"spec": {"endpointConfigName": "cfg1"}})
    wait_for(lambda: not status(cluster).get("rollout"), message="rollout aborted")
    assert status(cluster)["endpointConfigName"] == "cfg1"
    assert share_sequence(cluster, "cfg2")[-1] == 0
    wait_for(
        lambda: all("-cfg2-" not in d["metadata"]["name"] for d in children(cluster, "Deployment", "ep"))
    )
    reasons = [e.get("reason") for e in cluster.list("Event", NS)]
    assert "RolloutAborted" in reasons


def test_resume_after_operator_restart_mid_bake(cluster, start_operator):
    first = start_operator()
    serving_cfg1(cluster, policy("Linear", wait=2, linearStepSize={"type": "Percent", "value": 50}))
    start_rollout(cluster)
    set_deployments_ready(cluster, "ep", config="cfg2")
    wait_for(
        lambda: (status(cluster).get("rollout") or {}).get("trafficShiftedPercent") == 50, message="step 1"
    )
    first.stop()
    started_at = status(cluster)["rollout"]["startedAt"]

    start_operator()
    run_to_completion(cluster)
    assert share_sequence(cluster, "cfg2") == [0, 50, 100]
    history = [
        v for v in cluster.history("Endpoint", NS, "ep") if v and (v.get("status") or {}).get("rollout")
    ]
    assert {v["status"]["rollout"]["startedAt"] for v in history} == {started_at}  # resumed, not restarted


def test_capacity_retained_from_autoscaled_old_fleet(cluster, start_operator):
    start_operator()
    autoscaling = {"autoscaling": {"minReplicas": 1, "maxReplicas": 10, "targetCPUUtilization": 60}}
    serving_cfg1(cluster, policy("AllAtOnce"), **autoscaling)
    old = children(cluster, "Deployment", "ep")[0]
    # The HPA has grown the old fleet to 4 replicas.
    cluster.patch("Deployment", NS, old["metadata"]["name"], {"spec": {"replicas": 4}})
    set_deployments_ready(cluster, "ep")
    start_rollout(cluster)
    rollout = wait_for(lambda: status(cluster).get("rollout"), message="rollout")
    assert rollout["retainedInstanceCounts"] == {"blue": 4}
    new_hpa = wait_for(
        lambda: next(
            (
                h
                for h in children(cluster, "HorizontalPodAutoscaler", "ep")
                if "-cfg2-" in h["metadata"]["name"]
            ),
            None,
        )
    )
    assert new_hpa["spec"]["minReplicas"] == 4

"""Blue/green rollouts on a real API server: canary weights read from the route's watch events,
and auto rollback on the metrics the new fleet's pods serve on their own (loopback) pod IPs."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tests.cluster.support import Cluster
from tests.operator.builders import config, endpoint, model, variant
from tests.operator.metrics_server import FleetMetricsServer
from tests.support import kubelet as pods
from tests.support.envtest import Manifest, Watcher

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("needs_controller_manager")]
CONFIG_LABEL = "berth.dev/endpoint-config"


def policy(kind: str, wait: int = 1, termination: int = 0, **routing: Any) -> dict[str, Any]:
    return {
        "blueGreen": {
            "trafficRouting": {"type": kind, "waitIntervalSeconds": wait, **routing},
            "terminationWaitSeconds": termination,
        }
    }


def new_share(route: Manifest, config_name: str) -> int | None:
    """Percent of the default rule's weight on the Services of config_name."""
    refs = route["spec"]["rules"][-1]["backendRefs"]
    total = sum(ref.get("weight", 1) for ref in refs)
    new = sum(ref.get("weight", 1) for ref in refs if f"-{config_name}-" in ref["name"])
    return round(100 * new / total) if total else None


def share_sequence(routes: Watcher, config_name: str) -> list[int]:
    """The new config's share in every version of the route the watch saw, repeats collapsed."""
    shares = [new_share(obj, config_name) for kind, obj in routes.history() if kind != "DELETED"]
    return [share for share, _ in itertools.groupby(shares) if share is not None]


def serving_cfg1(cluster: Cluster, deployment_config: dict[str, Any]) -> Watcher:
    cluster.create(model("m1"))
    cluster.create(model("m2"))
    cluster.create(config("cfg1", variant("blue", "m1")))
    cluster.create(config("cfg2", variant("blue", "m2")))
    routes = cluster.watch("HTTPRoute")
    cluster.create(endpoint("ep", "cfg1", deploymentConfig=deployment_config))
    cluster.wait_in_service()
    return routes


def old_fleet_gone(cluster: Cluster, config_name: str) -> bool:
    return all(
        f"-{config_name}-" not in d["metadata"]["name"] for d in cluster.children("Deployment")
    ) and all(
        (p["metadata"].get("labels") or {}).get(CONFIG_LABEL) != config_name for p in cluster.list("Pod")
    )


def test_canary_rollout_moves_traffic_in_steps(cluster: Cluster) -> None:
    cluster.start_operator()
    routes = serving_cfg1(cluster, policy("Canary", wait=2, canarySize={"type": "Percent", "value": 20}))
    cluster.patch("Endpoint", "ep", {"spec": {"endpointConfigName": "cfg2"}})

    def completed() -> bool:
        s = cluster.status()
        return (
            s.get("endpointConfigName") == "cfg2" and not s.get("rollout") and s.get("phase") == "InService"
        )

    cluster.wait(completed, "rollout to cfg2 completed", timeout=90)
    assert share_sequence(routes, "cfg2") == [0, 20, 100]
    # The old fleet goes after the termination wait: Deployment by the operator, Pods by the
    # ReplicaSet and garbage collector, then removed by the kubelet.
    cluster.wait(lambda: old_fleet_gone(cluster, "cfg1"), "cfg1 fleet gone")
    assert cluster.serving()
    assert cluster.operator.forbidden() == []


def test_rollback_on_5xx_breach_from_pod_metrics(cluster: Cluster) -> None:
    cluster.start_operator()
    deployment_config = policy("Canary", wait=3, canarySize={"type": "Percent", "value": 20})
    deployment_config["autoRollback"] = {"maxErrorRatePercent": 5}
    routes = serving_cfg1(cluster, deployment_config)
    with FleetMetricsServer(ok_per_scrape=20, errors_per_scrape=10) as metrics:
        # The new fleet's pods are Ready and answer 5xx to a third of their requests.
        cluster.kubelet.behave(pods.ready(metrics=metrics.scrape), {CONFIG_LABEL: "cfg2"})
        cluster.patch("Endpoint", "ep", {"spec": {"endpointConfigName": "cfg2"}})
        record = cluster.wait(lambda: cluster.status().get("lastRollback"), "rollback", timeout=90)
        assert metrics.scrapes >= 1, "the operator never scraped the new fleet's pod"
    assert record["endpointConfigName"] == "cfg2"
    assert "5xx" in record["reason"]
    cluster.wait(
        lambda: cluster.serving() and cluster.status().get("endpointConfigName") == "cfg1", "back on cfg1"
    )
    degraded = cluster.condition("Degraded")
    assert degraded["status"] == "True"
    sequence = share_sequence(routes, "cfg2")
    assert 20 in sequence and sequence[-1] == 0
    cluster.wait(lambda: old_fleet_gone(cluster, "cfg2"), "cfg2 fleet gone")

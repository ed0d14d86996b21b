"""Every request the real operator makes is allowed by the chart's RBAC.

The operator (kopf) runs against KMock through a whole Endpoint life: create, a blue/green
update, deletion. KMock records each request; each is turned into the RBAC attributes the API
server would check (verb, API group, resource[/subresource], namespace) and evaluated against
the rules the chart renders, cluster-wide and namespaced. A request the chart does not grant
would be a 403 in a real cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest
from berth_operator.settings import Settings

from tests.delivery.delivery_support import CHART_DIR, objects, render
from tests.delivery.rbac_audit import Attributes, allowed, attributes, operator_requests
from tests.operator.builders import NS, children, config, endpoint, model, set_deployments_ready, variant
from tests.support.kmockk8s import KMockCluster, OperatorThread, wait_for

pytestmark = pytest.mark.timeout(120)


def test_attributes() -> None:
    assert attributes("GET", "/apis/apps/v1/namespaces/ml/deployments", {"watch": "true"}) == Attributes(
        "watch", "apps", "deployments", "ml"
    )
    assert attributes(
        "PATCH", "/apis/berth.dev/v1alpha1/namespaces/ml/endpoints/ep/status", {}
    ) == Attributes("patch", "berth.dev", "endpoints/status", "ml")
    assert attributes("GET", "/api/v1/namespaces", {}) == Attributes("list", "", "namespaces", None)
    assert attributes("GET", "/api/v1/namespaces/ml", {}) == Attributes("get", "", "namespaces", None)
    assert attributes("GET", "/apis/berth.dev/v1alpha1/endpoints", {}) == Attributes(
        "list", "berth.dev", "endpoints", None
    )
    assert attributes("GET", "/apis/berth.dev/v1alpha1", {}) is None


@pytest.fixture
def cluster() -> Iterator[KMockCluster]:
    cluster = KMockCluster()
    try:
        yield cluster
    finally:
        cluster.close()


def endpoint_life(cluster: KMockCluster, settings: Settings, namespaces: tuple[str, ...]) -> None:
    """Create, update blue/green and delete an Endpoint with the real operator running."""
    operator = OperatorThread(cluster, settings)
    operator.options.namespaces = namespaces
    operator.start()
    try:
        cluster.create(model("m1"))
        cluster.create(model("m2"))
        autoscaled = {"autoscaling": {"minReplicas": 2, "maxReplicas": 4, "targetCPUUtilization": 70}}
        cluster.create(config("cfg1", variant("blue", "m1", count=2), variant("green", "m1", **autoscaled)))
        cluster.create(config("cfg2", variant("blue", "m2", count=2)))
        fast = {
            "blueGreen": {
                "trafficRouting": {"type": "AllAtOnce", "waitIntervalSeconds": 0},
                "terminationWaitSeconds": 0,
            }
        }
        cluster.create(endpoint("ep", "cfg1", deploymentConfig=fast))
        wait_for(lambda: len(children(cluster, "Deployment", "ep")) == 2, timeout=20, message="cfg1 fleet")
        set_deployments_ready(cluster, "ep")
        wait_for(lambda: phase(cluster) == "InService", timeout=20, message="InService on cfg1")

        cluster.patch("Endpoint", NS, "ep", {"spec": {"endpointConfigName": "cfg2"}})
        wait_for(lambda: len(children(cluster, "Deployment", "ep")) == 3, timeout=20, message="cfg2 fleet")
        set_deployments_ready(cluster, "ep")
        wait_for(lambda: served(cluster) == "cfg2", timeout=30, message="cfg2 serving alone")

        cluster.delete("Endpoint", NS, "ep")
        wait_for(lambda: cluster.get("Endpoint", NS, "ep") is None, timeout=20, message="Endpoint gone")
    finally:
        operator.stop()


def phase(cluster: KMockCluster) -> str | None:
    return ((cluster.get("Endpoint", NS, "ep") or {}).get("status") or {}).get("phase")


def served(cluster: KMockCluster) -> str | None:
    status = (cluster.get("Endpoint", NS, "ep") or {}).get("status") or {}
    if status.get("pendingEndpointConfigName") or len(children(cluster, "Deployment", "ep")) != 1:
        return None
    return status.get("endpointConfigName")


@pytest.mark.parametrize(
    ("mode", "namespaces"),
    [("gateway", ()), ("ingress", ()), ("gateway", (NS,))],
    ids=["cluster-wide-gateway", "cluster-wide-ingress", "namespaced"],
)
def test_chart_rbac_allows_every_operator_request(
    cluster: KMockCluster, mode: str, namespaces: tuple[str, ...]
) -> None:
    values: dict[str, Any] = {"settings": {"routing": {"mode": mode}}, "watchNamespaces": list(namespaces)}
    with helm.Chart.load(CHART_DIR) as chart:
        objs = objects(render(chart, values))

    endpoint_life(cluster, Settings.model_validate({"routing": {"mode": mode}}), namespaces)

    requests = operator_requests(cluster)
    denied = sorted({str(r) for r in requests if not allowed(objs, r)})
    assert denied == [], "the chart's RBAC would refuse these operator requests"
    # The audit saw the operator at work, not just its start.
    seen = {(r.verb, r.resource) for r in requests}
    route = "httproutes" if mode == "gateway" else "ingresses"
    # Children are made and changed by server-side apply: a PATCH, authorized as `patch`.
    expected = {("patch", "deployments"), ("delete", "deployments"), ("patch", "services"),
                ("patch", route), ("patch", "endpoints/status"), ("watch", "endpoints"), ("patch", "endpoints"),
                ("patch", "horizontalpodautoscalers"), ("patch", "poddisruptionbudgets")}  # fmt: skip
    assert expected <= seen, expected - seen
    if namespaces:
        assert {r.namespace for r in requests if r.resource.startswith(("endpoints", "deployments"))} == {NS}

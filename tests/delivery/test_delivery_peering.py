"""Two operator replicas, as the chart runs them with replicas: 2, elect one active operator.

kopf pauses every peer when two share the highest priority, so this fails if the replicas
start with equal priorities. The peering resources are registered in KMock from the chart's own
crds/kopf-peering.yaml and the peering object is the one the chart renders, so names cannot
drift from what kopf looks for.
"""

from __future__ import annotations

from collections.abc import Iterator

import helm_python as helm
import kmock
import pytest
import yaml
from berth_operator.settings import Settings

from tests.delivery.delivery_support import CHART_DIR, objects, one, operator_args, render
from tests.delivery.rbac_audit import allowed, operator_requests
from tests.operator.builders import children as children_of
from tests.operator.builders import config, endpoint, model, variant
from tests.support.kmockk8s import KMockCluster, OperatorThread, wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cluster() -> Iterator[KMockCluster]:
    cluster = KMockCluster()
    try:
        yield cluster
    finally:
        cluster.close()


def install_peering(cluster: KMockCluster, peering: dict) -> None:
    """The chart's kopf peering CRDs as KMock resources, and the chart's peering object."""
    for crd in yaml.safe_load_all((CHART_DIR / "crds" / "kopf-peering.yaml").read_text()):
        if not crd:
            continue
        spec = crd["spec"]
        version = spec["versions"][0]["name"]
        cluster.handler.resources[f"{spec['group']}/{version}/{spec['names']['plural']}"] = (
            kmock.ResourceInfo(
                kind=spec["names"]["kind"],
                singular=spec["names"]["singular"],
                namespaced=spec["scope"] == "Namespaced",
                verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
            )
        )
    cluster.http.post("/apis/kopf.dev/v1/clusterkopfpeerings", json=peering).raise_for_status()


def test_two_replicas_elect_one_active_operator(cluster: KMockCluster) -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        objs = objects(render(chart, {"replicas": 2}))
    args = operator_args(objs)
    peering_name = args[args.index("--peering") + 1]
    peering = one(objs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == peering_name
    install_peering(
        cluster, {k: v for k, v in peering.items() if k != "metadata"} | {"metadata": {"name": peering_name}}
    )

    replicas = []
    try:
        for _ in range(2):
            replica = OperatorThread(cluster, Settings())
            replica.options.standalone = False
            replica.options.peering_name = peering_name
            replicas.append(replica.start())
        path = f"/apis/kopf.dev/v1/clusterkopfpeerings/{peering_name}"
        wait_for(
            lambda: len(cluster.http.get(path).json().get("status") or {}) == 2,
            timeout=20,
            message="both replicas announced in the peering object",
        )
        cluster.create(model("m1"))
        cluster.create(config("cfg1", variant("blue", "m1")))
        cluster.create(endpoint("ep", "cfg1"))
        wait_for(lambda: children_of(cluster, "Deployment", "ep"), timeout=20, message="a replica reconciled")
        peers = cluster.http.get(path).json()["status"]
        assert len(peers) == 2
        assert len({peer["priority"] for peer in peers.values()}) == 2, "equal priorities pause both replicas"
    finally:
        for replica in replicas:
            replica.stop()

    requests = operator_requests(cluster)
    assert {(r.verb, r.resource) for r in requests if r.group == "kopf.dev"} >= {
        ("watch", "clusterkopfpeerings"),
        ("patch", "clusterkopfpeerings"),
    }
    denied = sorted({str(r) for r in requests if not allowed(objs, r)})
    assert denied == []

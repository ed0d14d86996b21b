"""Async inference on a real API server: the CRD's rules (CEL priced by the server itself), and the
operator making the front door, its routes, the worker sidecar and the autoscaler, with the backlog
of a real redis-server in the Endpoint's status."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from berth_serving.asyncinf.keys import CONSUMER_GROUP, ROUTES_FILE_KEY, Routes, stream_key

from tests.cluster.support import Cluster
from tests.cluster.test_admission import verdict
from tests.crds import test_async_admission as rows
from tests.operator.builders import config, endpoint, model, variant
from tests.support.envtest import Kube
from tests.support.redisserver import running_redis

pytestmark = pytest.mark.timeout(180)

BACKLOG = {"minReplicas": 0, "maxReplicas": 3, "targetBacklogPerInstance": 5}


@pytest.mark.parametrize("row", rows.GOOD, ids=lambda row: row.id)
def test_the_api_server_admits(kube: Kube, namespace: str, row: rows.Row) -> None:
    assert verdict(kube, row, namespace) is None


@pytest.mark.parametrize("row", rows.BAD, ids=lambda row: row.id)
def test_the_api_server_refuses_naming_the_field(kube: Kube, namespace: str, row: rows.Row) -> None:
    message = verdict(kube, row, namespace)
    assert message is not None, "admitted, but it must be refused"
    assert row.refused_with is not None and row.refused_with in message, message


def async_config(name: str, *variants: dict[str, Any]) -> dict[str, Any]:
    body = config(name, *variants)
    body["spec"]["asyncInferenceConfig"] = {
        "outputConfig": {"outputUri": "s3://bucket/out/"},
        "clientConfig": {"maxConcurrentInvocationsPerInstance": 2},
    }
    return body


@pytest.mark.usefixtures("needs_controller_manager")
def test_the_operator_builds_an_async_endpoint_and_shows_its_backlog(cluster: Cluster) -> None:
    with running_redis() as server:
        cluster.start_operator({"async": {"redis": {"url": server.url}}})
        cluster.create(model("m1"))
        cluster.create(async_config("cfg1", variant("blue", "m1", autoscaling=BACKLOG)))
        cluster.create(endpoint("ep", "cfg1", auth={"mode": "None"}))
        stream = stream_key(cluster.namespace, "ep", "cfg1", "blue")

        door = cluster.wait(lambda: cluster.get("Deployment", "ep-async"), "the front door Deployment")
        [front] = door["spec"]["template"]["spec"]["containers"]
        assert front["args"][0] == "async-frontdoor"
        assert {"name": "BERTH_REDIS_URL", "value": server.url} in front["env"]
        service = cluster.wait(lambda: cluster.get("Service", "ep-async"), "the front door Service")
        assert service["spec"]["ports"][0]["port"] == 80
        config_map = cluster.wait(lambda: cluster.get("ConfigMap", "ep-async-routes"), "the routes ConfigMap")
        routes = Routes.model_validate_json(config_map["data"][ROUTES_FILE_KEY])
        assert [(v.variant_name, v.stream, v.weight) for v in routes.variants] == [("blue", stream, 1000)]
        fleet = cluster.wait(lambda: cluster.get("Deployment", "ep-cfg1-blue"), "the variant Deployment")
        containers = {c["name"]: c for c in fleet["spec"]["template"]["spec"]["containers"]}
        assert list(containers) == ["server", "async-worker"]
        assert containers["async-worker"]["args"][:3] == ["async-worker", "--stream", stream]
        route = cluster.wait(lambda: cluster.get("HTTPRoute", "ep"), "the HTTPRoute")
        first = route["spec"]["rules"][0]
        assert first["backendRefs"][0]["name"] == "ep-async"

        if cluster.kube.serves("keda.sh/v1alpha1", "ScaledObject"):
            [scaled] = cluster.wait(
                lambda: (
                    cluster.kube.list("ScaledObject", cluster.namespace, api_version="keda.sh/v1alpha1")
                    or None
                ),
                "a ScaledObject",
            )
            assert scaled["spec"]["minReplicaCount"] == 0
            assert scaled["spec"]["triggers"][0]["metadata"]["stream"] == stream
        else:
            reason = cluster.wait(
                lambda: (r := cluster.status().get("failureReason") or "") and "install KEDA" in r and r,
                "the status says KEDA is missing",
            )
            assert "async variants scale on their queue with KEDA" in reason
            assert cluster.get("Deployment", "ep-cfg1-blue")["spec"]["replicas"] == 1  # type: ignore[index]
        cluster.wait_in_service(timeout=90)

        client = redis.Redis.from_url(server.url)
        try:
            for i in range(3):
                client.xadd(stream, {"id": f"m{i}"})
            client.xgroup_create(stream, CONSUMER_GROUP, id="0")
        finally:
            client.close()

        def backlog() -> dict[str, Any] | None:
            variants = cluster.status().get("productionVariants") or [{}]
            return variants[0] if variants[0].get("backlogSize") == 3 else None

        blue = cluster.wait(backlog, "backlogSize 3 in the Endpoint's status", timeout=60)
        assert blue["oldestMessageAgeSeconds"] >= 0
        assert cluster.condition("HasBacklogWithoutCapacity")["status"] in ("True", "False")
        # Deleting the Endpoint takes the front door and its routes with it.
        cluster.delete("Endpoint", "ep")
        cluster.wait(
            lambda: (
                cluster.get("ConfigMap", "ep-async-routes") is None
                and cluster.get("Deployment", "ep-async") is None
            ),
            "the front door and its routes gone with the Endpoint",
        )
        assert cluster.operator.forbidden() == []
        assert cluster.operator.errors() == []

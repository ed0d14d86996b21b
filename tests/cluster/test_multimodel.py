"""Multi-model endpoints on a real API server: the admission rows of
tests/crds/test_multimodel_admission.py refused with the same words; a MultiModel Endpoint's
Deployment makes pods (the Deployment controller's, not ours) that carry the multi-model env and
no storage-initializer, beside a headless Service selecting exactly them; a rollout records where
the new fleet warms from in a status the server keeps (the CRD's status schema would prune an
unknown field), and its pods are not replaced when the rollout ends; a TransformJob naming a
model under the prefix, and one that names none."""

from __future__ import annotations

import json
from typing import Any

import pytest
from berth_serving.config import DEFAULT_PORT, ENV

from tests.cluster.support import Cluster
from tests.cluster.test_admission import assert_refused_by_server, row_id, verdict
from tests.cluster.test_transform import transform_job
from tests.crds import test_multimodel_admission as rows
from tests.crds.test_crds_admission import Row
from tests.operator.builders import config, endpoint, model, variant
from tests.support.envtest import Kube, Manifest

PREFIX = "s3://models/customers/"
ENDPOINT_LABEL = "berth.dev/endpoint"
CONFIG_LABEL = "berth.dev/endpoint-config"
QUICK = {
    "blueGreen": {
        "trafficRouting": {"type": "AllAtOnce", "waitIntervalSeconds": 1},
        "terminationWaitSeconds": 0,
    }
}
needs_controller_manager = pytest.mark.usefixtures("needs_controller_manager")


def multi(name: str, **spec: Any) -> Manifest:
    found = model(name, uri=PREFIX)
    found["spec"].update({"mode": "MultiModel", **spec})
    return found


def server_env(pod_spec: Manifest) -> dict[str, Any]:
    [server] = [c for c in pod_spec["containers"] if c["name"] == "server"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in server.get("env", [])}


def old_fleet_gone(cluster: Cluster, config_name: str) -> bool:
    return not [
        obj
        for kind in ("Deployment", "Service", "Pod")
        for obj in cluster.list(kind)
        if (obj["metadata"].get("labels") or {}).get(CONFIG_LABEL) == config_name
    ]


def deployment_of(cluster: Cluster, config_name: str) -> Manifest:
    [found] = [
        d for d in cluster.children("Deployment") if d["metadata"]["labels"].get(CONFIG_LABEL) == config_name
    ]
    return found


# --------------------------------------------------------------------------- admission


@pytest.mark.timeout(60)
@pytest.mark.parametrize("row", rows.BAD, ids=row_id)
def test_refused_rows_are_refused_with_the_same_message(kube: Kube, namespace: str, row: Row) -> None:
    assert_refused_by_server(kube, namespace, row)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("row", rows.GOOD, ids=row_id)
def test_admitted_rows_are_admitted(kube: Kube, namespace: str, row: Row) -> None:
    assert verdict(kube, row, namespace) is None


# --------------------------------------------------------------------------- endpoints


@needs_controller_manager
@pytest.mark.timeout(180)
def test_multi_model_pods_headless_service_and_warm_rollout(cluster: Cluster) -> None:
    cluster.start_operator()
    deployments = cluster.watch("Deployment")
    cluster.create(
        multi("mm1", credentialsSecretRef={"name": "s3-creds"}, multiModel={"cacheBytes": 1_000_000_000})
    )
    cluster.create(multi("mm2", multiModel={"warmModels": 5}))
    cluster.create(config("cfg1", variant("blue", "mm1", count=2)))
    cluster.create(config("cfg2", variant("blue", "mm2", count=2)))
    cluster.create(endpoint("ep", "cfg1", deploymentConfig=QUICK))
    cluster.wait_in_service()

    deployment = deployment_of(cluster, "cfg1")
    name = deployment["metadata"]["name"]
    peers_name = f"{name}-peers"
    # The pods the ReplicaSet made from the template: what a kubelet would run.
    selector = deployment["spec"]["selector"]["matchLabels"]
    pods = cluster.list("Pod", selector)
    assert len(pods) == 2
    for pod in pods:
        spec = pod["spec"]
        assert not spec.get("initContainers")  # no storage-initializer: models are fetched on demand
        env = server_env(spec)
        assert env[ENV["multi_model"]] == "true"
        assert env[ENV["model_uri"]] == PREFIX
        assert env[ENV["cache_bytes"]] == "1000000000"
        assert env[ENV["peers"]] == f"dns:{peers_name}.{cluster.namespace}.svc:{DEFAULT_PORT}"
        assert env[ENV["pod_ip"]] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}
        [server] = [c for c in spec["containers"] if c["name"] == "server"]
        assert server["args"] == ["serve", "--multi-model", PREFIX]
        assert server["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]

    peers = cluster.get("Service", peers_name)
    assert peers is not None
    assert peers["spec"]["clusterIP"] == "None"
    assert peers["spec"].get("publishNotReadyAddresses", False) is False
    assert peers["spec"]["selector"] == selector
    # The Service selects exactly the variant's pods (the ones the kubelet made ready).
    assert {p["metadata"]["name"] for p in cluster.list("Pod", peers["spec"]["selector"])} == {
        p["metadata"]["name"] for p in pods
    }
    uid = cluster.get("Endpoint", "ep")["metadata"]["uid"]
    assert [(o["kind"], o["uid"]) for o in peers["metadata"]["ownerReferences"]] == [("Endpoint", uid)]
    [policy] = cluster.children("NetworkPolicy")
    assert {
        "from": [{"podSelector": {"matchLabels": {ENDPOINT_LABEL: "ep"}}}],
        "ports": [{"protocol": "TCP", "port": DEFAULT_PORT}],
    } in policy["spec"]["ingress"]

    # A rollout to cfg2, the same prefix: its pods warm from cfg1's replicas.
    warm_from = f"http://{peers_name}.{cluster.namespace}.svc:{DEFAULT_PORT}/models"
    cluster.patch("Endpoint", "ep", {"spec": {"endpointConfigName": "cfg2"}})
    recorded = cluster.wait(
        lambda: (cluster.status().get("rollout") or {}).get("warmFrom"), "status.rollout.warmFrom"
    )
    assert recorded == {"blue": warm_from}

    def completed() -> bool:
        s = cluster.status()
        return (
            s.get("endpointConfigName") == "cfg2" and not s.get("rollout") and s.get("phase") == "InService"
        )

    cluster.wait(completed, "rollout to cfg2 completed", timeout=90)
    assert cluster.status().get("warmFrom") == {"blue": warm_from}  # kept by the server's status schema
    new = deployment_of(cluster, "cfg2")
    env = server_env(new["spec"]["template"]["spec"])
    assert (env[ENV["warm_from"]], env[ENV["warm_models"]]) == (warm_from, "5")
    # The reconciles after the rollout ended (the old fleet's objects and pods going make them)
    # plan cfg2's pods from status.warmFrom: the template stays, no second ReplicaSet.
    cluster.wait(lambda: old_fleet_gone(cluster, "cfg1"), "cfg1's fleet and pods gone")
    assert cluster.get("Service", peers_name) is None
    # One more reconcile we can see end: a third replica, which changes no pod's template.
    cluster.patch(
        "Endpoint", "ep", {"spec": {"variantOverrides": [{"variantName": "blue", "desiredInstanceCount": 3}]}}
    )
    generation = cluster.get("Endpoint", "ep")["metadata"]["generation"]
    cluster.wait(
        lambda: (
            cluster.status().get("observedGeneration") == generation
            and deployment_of(cluster, "cfg2")["spec"]["replicas"] == 3
            and cluster.serving()
        ),
        "three cfg2 replicas InService",
    )
    templates = {
        json.dumps(obj["spec"]["template"], sort_keys=True)
        for kind, obj in deployments.history()
        if kind != "DELETED" and obj["metadata"]["name"] == new["metadata"]["name"]
    }
    assert len(templates) == 1
    replica_sets = cluster.list("ReplicaSet", new["spec"]["selector"]["matchLabels"])
    assert len(replica_sets) == 1, [r["metadata"]["name"] for r in replica_sets]
    assert cluster.serving()
    assert cluster.operator.forbidden() == []


@needs_controller_manager
@pytest.mark.timeout(120)
def test_transform_job_of_a_multi_model_model(cluster: Cluster) -> None:
    cluster.start_operator()
    cluster.create(multi("m1"))
    cluster.create(transform_job("untargeted"))
    cluster.create(transform_job("targeted", targetModel="eu/customer-17.tar.gz"))

    def failed() -> Manifest | None:
        status = cluster.status("TransformJob", "untargeted")
        return next(
            (c for c in status.get("conditions", []) if c["type"] == "Failed" and c["status"] == "True"), None
        )

    condition = cluster.wait(failed, "TransformJob untargeted Failed")
    assert condition["reason"] == "TargetModelRequired"
    assert "targetModel" in condition["message"]
    assert cluster.get("Job", "untargeted") is None

    job = cluster.wait(lambda: cluster.get("Job", "targeted"), "the Job of TransformJob targeted")
    [init] = job["spec"]["template"]["spec"]["initContainers"]
    assert init["args"][:2] == ["fetch-model", PREFIX + "eu/customer-17.tar.gz"]
    assert "--sha256-beside" in init["args"]
    assert cluster.operator.forbidden() == []

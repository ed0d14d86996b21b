"""autoscaling.scaler keda on a real API server: said in the status while KEDA is missing, then a
ScaledObject the server's own KEDA CRD schema admits once it is installed."""

from __future__ import annotations

import pytest

from tests.cluster.support import Cluster
from tests.operator.builders import config, endpoint, model, variant
from tests.support.crdcheck import load_crd
from tests.support.envtest import install_crds
from tests.support.testdata import KEDA_SCALEDOBJECT_CRD, data_file

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("needs_controller_manager")]

KEDA = {"autoscaling": {"scaler": "keda", "prometheusUrl": "http://prometheus.monitoring:9090"}}
BY_REQUESTS = {"minReplicas": 2, "maxReplicas": 5, "targetInvocationsPerReplica": 30}


def test_keda_missing_then_installed(cluster: Cluster) -> None:
    if cluster.kube.serves("keda.sh/v1alpha1", "ScaledObject"):
        pytest.fail("KEDA's CRD is installed before this test: it must see the cluster without it first")
    cluster.start_operator(KEDA)
    cluster.create(model("m1"))
    cluster.create(config("cfg1", variant("blue", "m1", autoscaling=BY_REQUESTS)))
    cluster.create(endpoint("ep", "cfg1"))

    def said() -> str | None:
        reason = cluster.status().get("failureReason") or ""
        return reason if "does not serve ScaledObject" in reason else None

    reason = cluster.wait(said, "the status says KEDA is missing")
    assert reason.startswith("variant blue: the autoscaler cannot scale (the operator settings say")
    [deployment] = cluster.children("Deployment")
    assert deployment["spec"]["replicas"] == 2  # nobody else holds the floor
    cluster.wait_in_service()
    assert cluster.children("HorizontalPodAutoscaler") == []

    install_crds(cluster.kube, [load_crd(data_file(KEDA_SCALEDOBJECT_CRD))])
    cluster.operator.stop()  # discovery is cached for a minute; a new process asks at once
    cluster.start_operator(KEDA)

    def scaled() -> list[dict[str, object]] | None:
        return cluster.kube.list("ScaledObject", cluster.namespace, api_version="keda.sh/v1alpha1") or None

    [scaled_object] = cluster.wait(scaled, "a ScaledObject")
    spec = scaled_object["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 5)
    assert spec["triggers"][0]["metadata"]["threshold"] == "30"
    cluster.wait(lambda: not cluster.status().get("failureReason"), "the KEDA problem cleared")
    [deployment] = cluster.children("Deployment")
    assert "berth-operator" not in [
        m.get("manager") for m in deployment["metadata"]["managedFields"] if "f:replicas" in str(m)
    ]  # the count is the autoscaler's now
    assert cluster.operator.forbidden() == []

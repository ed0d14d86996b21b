"""No write loops: an Endpoint left alone after InService is not written to, nor are its children."""

from __future__ import annotations

import time

import pytest

from tests.cluster.support import CHILD_KINDS, Cluster
from tests.operator.builders import config, endpoint, model, variant
from tests.support.envtest import Manifest, Watcher

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("needs_controller_manager")]
IDLE_SECONDS = 20
AUTOSCALED = {"autoscaling": {"minReplicas": 1, "maxReplicas": 4, "targetCPUUtilization": 70}}


def writers(obj: Manifest, since: float) -> list[str]:
    """Who wrote which fields of obj after `since` (from managedFields), for the failure message."""
    found = []
    for entry in obj["metadata"].get("managedFields") or []:
        stamp = time.mktime(time.strptime(entry["time"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        if stamp >= int(since):
            fields = sorted(k for k in (entry.get("fieldsV1") or {}) if k.startswith("f:"))
            found.append(f"{entry['manager']} {entry['operation']} {entry.get('subresource', '')} {fields}")
    return found


def test_idle_endpoint_is_not_rewritten(cluster: Cluster) -> None:
    operator = cluster.start_operator()
    cluster.create(model("m1"))
    cluster.create(config("cfg1", variant("blue", "m1", count=2), variant("green", "m1", **AUTOSCALED)))
    cluster.create(endpoint("ep", "cfg1"))
    cluster.wait_in_service()
    # The last news there is to tell: the HPA controller finds no metrics API (none here) and
    # the Endpoint says so. After that, nothing changes.
    cluster.wait(
        lambda: "the autoscaler cannot scale" in (cluster.status().get("failureReason") or ""),
        "the HPA's report on the Endpoint",
    )

    kinds = ["Endpoint", "EndpointConfig", "Model", *CHILD_KINDS]
    watchers: list[Watcher] = [cluster.watch(kind) for kind in kinds]
    writes_before = len(cluster.plane.audit_writes(cluster.install.user))
    assert writes_before > 0, (
        "the audit log holds none of the operator's writes: the check below would be blind"
    )
    began = time.time()
    time.sleep(IDLE_SECONDS)  # the observation window is the point of this test

    changes = [
        f"{kind} {obj['metadata']['name']} rv {obj['metadata']['resourceVersion']}: {writers(obj, began)}"
        for watcher in watchers
        for kind, obj in watcher.history()
        if kind != "ADDED"
    ]
    assert changes == [], "objects written while nothing changed:\n" + "\n".join(changes)
    requests = [described(e) for e in operator_writes(cluster)[writes_before:]]
    assert requests == [], "the operator wrote while nothing changed:\n" + "\n".join(requests)
    assert operator.alive()


def in_namespace(cluster: Cluster, event: Manifest) -> bool:
    return f"/namespaces/{cluster.namespace}/" in event["requestURI"]


def operator_writes(cluster: Cluster) -> list[Manifest]:
    """The operator's write requests in this test's namespace, from the API server's audit log."""
    return [e for e in cluster.plane.audit_writes(cluster.install.user) if in_namespace(cluster, e)]


def described(event: Manifest) -> str:
    return f"{event['verb']} {event['requestURI']} -> {event.get('responseStatus', {}).get('code')}"


CHILD_RESOURCES = {
    "deployments",
    "services",
    "horizontalpodautoscalers",
    "poddisruptionbudgets",
    "httproutes",
}


def child_versions(cluster: Cluster) -> dict[str, str]:
    return {
        f"{kind}/{obj['metadata']['name']}": obj["metadata"]["resourceVersion"]
        for kind in CHILD_KINDS
        for obj in cluster.children(kind)
    }


def test_a_change_no_child_carries_rewrites_no_child(cluster: Cluster) -> None:
    """Quantities spelled as a person writes them ("0.5", "1024Mi", 1000 invocations/s) come back from
    the API server as 500m, 1Gi and 1k. A change of the Endpoint that no child carries (the rollback
    threshold) makes the operator reconcile; it must find every child as it should be and write none."""
    cluster.start_operator()
    cluster.create(model("m1"))
    resources = {"requests": {"cpu": "0.5", "memory": "1024Mi"}, "limits": {"cpu": "0.5", "memory": "1024Mi"}}
    by_requests = {"autoscaling": {"minReplicas": 1, "maxReplicas": 4, "targetInvocationsPerReplica": 1000}}
    cluster.create(
        config(
            "cfg1",
            variant("blue", "m1", count=2, resources=resources),
            variant("green", "m1", resources=resources, **by_requests),
        )
    )
    cluster.create(endpoint("ep", "cfg1", deploymentConfig={"autoRollback": {"maxErrorRatePercent": 5}}))
    cluster.wait_in_service()
    versions = child_versions(cluster)
    writes_before = len(operator_writes(cluster))

    # Two changes, each seen in status.observedGeneration: reconciles of one Endpoint run one after
    # another, so when the second is observed every reconcile the first caused has finished.
    for generation, threshold in ((2, 6), (3, 7)):
        cluster.patch(
            "Endpoint",
            "ep",
            {"spec": {"deploymentConfig": {"autoRollback": {"maxErrorRatePercent": threshold}}}},
        )
        cluster.wait(
            lambda g=generation: cluster.status().get("observedGeneration") == g,
            f"observedGeneration {generation}",
        )
    assert cluster.serving()
    requests = [
        described(e)
        for e in operator_writes(cluster)[writes_before:]
        if e["objectRef"].get("resource") in CHILD_RESOURCES
    ]
    assert requests == [], "children written although none should change:\n" + "\n".join(requests)
    assert child_versions(cluster) == versions

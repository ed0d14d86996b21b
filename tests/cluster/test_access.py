"""Invoke auth and network policy on a real API server: what the operator creates under the chart's
RBAC, and that the identity it gives serving pods can really review tokens (and no more)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster.support import Cluster
from tests.operator.builders import config, endpoint, model, variant
from tests.support.envtest import KubeError

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("needs_controller_manager")]

RBAC = "rbac.authorization.k8s.io/v1"


def serving(cluster: Cluster, **spec: Any) -> None:
    cluster.create(model("m1"))
    cluster.create(config("cfg1", variant("blue", "m1")))
    cluster.create({**endpoint("ep", "cfg1"), "spec": {"endpointConfigName": "cfg1", **spec}})


def reviewer_role(cluster: Cluster) -> str:
    [role] = [
        o["metadata"]["name"]
        for o in cluster.install.objects
        if o["kind"] == "ClusterRole" and o["metadata"]["name"].endswith("-invoke-reviewer")
    ]
    return role


def review(cluster: Cluster, token: str, as_token: str) -> dict[str, Any]:
    """A TokenReview of token, made by the holder of as_token."""
    kube = cluster.kube.for_token(as_token)
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    answer: dict[str, Any] = kube.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body=body)
    return answer


def test_rbac_endpoints_get_a_policy_and_an_identity_that_can_review(cluster: Cluster) -> None:
    cluster.start_operator()
    serving(cluster)
    cluster.wait_in_service()
    ns = cluster.namespace

    [policy] = cluster.children("NetworkPolicy")
    peers = policy["spec"]["ingress"][0]["from"]
    assert {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in peers} >= {
        cluster.install.gateway_namespace,
        "monitoring",
    }
    assert policy["spec"]["podSelector"] == {"matchLabels": {"berth.dev/endpoint": "ep"}}

    [deployment] = cluster.children("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "berth-serving"
    account = cluster.get("ServiceAccount", "berth-serving")
    assert account is not None and account["automountServiceAccountToken"] is False
    role = reviewer_role(cluster)
    binding = cluster.kube.get("ClusterRoleBinding", None, f"{role}:{ns}:berth-serving", api_version=RBAC)
    assert binding is not None
    assert binding["roleRef"]["name"] == role
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "berth-serving", "namespace": ns}]

    # The serving pods' token may review a caller's token and ask about its rights...
    serving_token = cluster.kube.service_account_token(ns, "berth-serving")
    caller = cluster.kube.service_account_token(ns, "default")
    answer = review(cluster, caller, serving_token)
    assert answer["status"]["authenticated"] is True
    assert answer["status"]["user"]["username"] == f"system:serviceaccount:{ns}:default"
    # ...and nothing else: it cannot read the Endpoint, let alone change anything.
    with pytest.raises(KubeError) as refused:
        cluster.kube.for_token(serving_token).get("Endpoint", ns, "ep")
    assert refused.value.status == 403
    assert cluster.operator.forbidden() == []


def test_api_key_endpoints_mount_their_secret_and_need_no_identity(cluster: Cluster) -> None:
    cluster.start_operator()
    serving(cluster, auth={"mode": "APIKey", "secretRef": {"name": "ep-keys"}})
    cluster.wait_in_service()
    [deployment] = cluster.children("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert {"name": "api-keys", "secret": {"secretName": "ep-keys", "defaultMode": 420}} in pod["volumes"]
    assert "serviceAccountName" not in pod or pod["serviceAccountName"] == "default"
    assert cluster.get("ServiceAccount", "berth-serving") is None
    assert cluster.children("NetworkPolicy")
    server = pod["containers"][0]
    assert {"name": "api-keys", "mountPath": "/var/run/berth/api-keys", "readOnly": True} in server[
        "volumeMounts"
    ]
    assert {"name": "BERTH_AUTH_MODE", "value": "APIKey"} in server["env"]

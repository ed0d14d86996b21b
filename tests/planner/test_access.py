"""Who may reach and invoke the serving pods: auth settings, mounts, review identity, NetworkPolicy."""

from __future__ import annotations

from typing import Any

import pytest
from berth_operator.planner import Observed, Plan, PlanInput, plan_endpoint
from berth_operator.settings import NetworkPolicySettings, Routing, Settings

from .support import EPOCH, NAMESPACE, Cluster, config, endpoint, model, variant
from .validation import assert_admitted

KUBE_API = "/var/run/secrets/kubernetes.io/serviceaccount"


def plan_for(settings: Settings | None = None, model_spec: dict[str, Any] | None = None, **spec: Any) -> Plan:
    return plan_endpoint(
        PlanInput(
            endpoint=endpoint("cfg", **spec),
            configs={"cfg": config("cfg", variant("blue", "m"))},
            models={"m": model("m", **(model_spec or {}))},
            settings=settings or Settings(),
            observed=Observed(now=EPOCH),
        )
    )


def pod(plan: Plan) -> dict[str, Any]:
    (deployment,) = [o for o in plan.objects if o["kind"] == "Deployment"]
    return deployment["spec"]["template"]["spec"]


def container(plan: Plan, name: str) -> dict[str, Any]:
    spec = pod(plan)
    return next(c for c in spec["containers"] + spec["initContainers"] if c["name"] == name)


def env(plan: Plan) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container(plan, "server")["env"]}


def mounts(plan: Plan, name: str) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container(plan, name)["volumeMounts"]}


def policy(plan: Plan) -> dict[str, Any] | None:
    found = [o for o in plan.objects if o["kind"] == "NetworkPolicy"]
    return found[0] if found else None


def admitted_namespaces(plan: Plan) -> list[str]:
    found = policy(plan)
    assert found is not None
    (rule,) = found["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    return [peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in rule["from"]]


# --------------------------------------------------------------------------- KubernetesRBAC


def test_without_auth_a_cluster_reviews_tokens() -> None:
    plan = plan_for()
    assert env(plan)["BERTH_AUTH_MODE"] == "KubernetesRBAC"
    assert env(plan)["BERTH_AUTH_ENDPOINT"] == f"{NAMESPACE}/fraud"
    spec = pod(plan)
    assert spec["serviceAccountName"] == "berth-serving"
    assert spec["automountServiceAccountToken"] is False  # projected for the server container alone
    assert mounts(plan, "server")["kube-api-access"] == KUBE_API
    assert "kube-api-access" not in mounts(plan, "storage-initializer")
    (projected,) = [v["projected"] for v in spec["volumes"] if v["name"] == "kube-api-access"]
    assert {next(iter(source)) for source in projected["sources"]} == {
        "serviceAccountToken",
        "configMap",
        "downwardAPI",
    }
    assert_admitted(plan.objects)


def test_the_review_identity_is_shared_and_bound_to_the_reviewer_role() -> None:
    plan = plan_for()
    account, binding = plan.shared
    assert (account["kind"], account["metadata"]) == (
        "ServiceAccount",
        {"name": "berth-serving", "namespace": NAMESPACE, "labels": account["metadata"]["labels"]},
    )
    assert "ownerReferences" not in account["metadata"]  # shared by the namespace's Endpoints
    assert binding["kind"] == "ClusterRoleBinding"
    assert binding["metadata"]["name"] == f"berth-invoke-reviewer:{NAMESPACE}:berth-serving"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "berth-invoke-reviewer",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "berth-serving", "namespace": NAMESPACE}
    ]
    assert_admitted(plan.shared)


def test_a_models_own_account_reviews_and_stays_the_users() -> None:
    plan = plan_for(model_spec={"serviceAccountName": "fraud-reader"})
    assert pod(plan)["serviceAccountName"] == "fraud-reader"
    assert [o["kind"] for o in plan.shared] == ["ClusterRoleBinding"]  # no account of Berth's
    assert plan.shared[0]["subjects"][0]["name"] == "fraud-reader"


def test_the_reviewer_role_comes_from_the_settings() -> None:
    settings = Settings.model_validate({"auth": {"reviewerClusterRole": "team-reviewer"}})
    (_, binding) = plan_for(settings).shared
    assert binding["roleRef"]["name"] == "team-reviewer"
    assert binding["metadata"]["name"].startswith("team-reviewer:")


# --------------------------------------------------------------------------- APIKey and None


def test_api_keys_are_mounted_from_the_secret() -> None:
    plan = plan_for(auth={"mode": "APIKey", "secretRef": {"name": "fraud-keys"}})
    assert env(plan)["BERTH_AUTH_MODE"] == "APIKey"
    assert env(plan)["BERTH_API_KEYS_DIR"] == "/var/run/berth/api-keys"
    assert "BERTH_AUTH_ENDPOINT" not in env(plan)
    assert mounts(plan, "server")["api-keys"] == "/var/run/berth/api-keys"
    assert "api-keys" not in mounts(plan, "storage-initializer")
    (volume,) = [v for v in pod(plan)["volumes"] if v["name"] == "api-keys"]
    assert volume["secret"] == {"secretName": "fraud-keys"}
    assert "serviceAccountName" not in pod(plan)
    assert plan.shared == []
    assert_admitted(plan.objects)


def test_open_endpoints_say_so_and_mount_nothing() -> None:
    plan = plan_for(auth={"mode": "None"})
    assert env(plan)["BERTH_AUTH_MODE"] == "None"
    assert set(mounts(plan, "server")) == {"model", "tmp"}
    assert plan.shared == []


def test_a_models_env_cannot_open_the_endpoint() -> None:
    spec = {"env": [{"name": "BERTH_AUTH_MODE", "value": "None"}, {"name": "LOG", "value": "1"}]}
    plan = plan_for(model_spec=spec)
    names = [e["name"] for e in container(plan, "server")["env"]]
    assert names.count("BERTH_AUTH_MODE") == 1
    assert env(plan)["BERTH_AUTH_MODE"] == "KubernetesRBAC"
    assert env(plan)["LOG"] == "1"


# --------------------------------------------------------------------------- NetworkPolicy


def test_the_policy_selects_every_serving_pod_of_the_endpoint() -> None:
    plan = plan_for()
    found = policy(plan)
    assert found is not None
    assert found["spec"]["podSelector"] == {"matchLabels": {"berth.dev/endpoint": "fraud"}}
    assert found["spec"]["policyTypes"] == ["Ingress"]  # egress stays open: model downloads
    template_labels = [
        o["spec"]["template"]["metadata"]["labels"] for o in plan.objects if o["kind"] == "Deployment"
    ]
    assert all(labels["berth.dev/endpoint"] == "fraud" for labels in template_labels)
    assert found["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


@pytest.mark.parametrize(
    ("routing", "expected"),
    [
        ({"mode": "gateway", "gateway": {"namespace": "edge"}}, ["berth-system", "edge", "monitoring"]),
        ({"mode": "ingress"}, ["berth-system", "ingress-nginx", "monitoring"]),
        ({"mode": "none"}, ["berth-system", "monitoring", NAMESPACE]),
    ],
)
def test_the_callers_follow_the_routing_mode(routing: dict[str, Any], expected: list[str]) -> None:
    settings = Settings(routing=Routing.model_validate(routing))
    assert admitted_namespaces(plan_for(settings)) == sorted(expected)


def test_settings_name_the_monitoring_operator_and_extra_namespaces() -> None:
    settings = Settings(
        network_policy=NetworkPolicySettings.model_validate(
            {"monitoringNamespace": "obs", "operatorNamespace": "ops", "allowedNamespaces": ["batch"]}
        )
    )
    assert admitted_namespaces(plan_for(settings)) == ["batch", "berth-system", "obs", "ops"]


def test_a_disabled_policy_is_removed() -> None:
    cluster = Cluster(endpoint("cfg"), {"cfg": config("cfg", variant("blue", "m"))}, {"m": model("m")})
    cluster.step()
    assert cluster.names("NetworkPolicy") == ["fraud-serving"]
    cluster.settings = Settings(network_policy=NetworkPolicySettings(enabled=False))
    plan = cluster.step()
    assert [(ref.kind, ref.name) for ref in plan.delete] == [("NetworkPolicy", "fraud-serving")]
    assert cluster.names("NetworkPolicy") == []


def test_bad_namespaces_in_the_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="'Not A Namespace' is not a namespace name"):
        NetworkPolicySettings.model_validate({"allowedNamespaces": ["Not A Namespace"]})

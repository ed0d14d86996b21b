"""MultiModel variants in the planner: pods that serve a prefix (no storage-initializer, the
credentials on the server, the peers and the pod IP), the headless Service their replicas find
each other through, the NetworkPolicy between them, and rollouts whose new fleet warms from the
old one with a pod template that never changes once planned."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from berth_operator.api import EndpointConfig, Model
from berth_operator.planner import Plan
from berth_operator.planner import labels as L
from berth_operator.settings import Settings
from berth_serving.cli import serve
from berth_serving.config import DEFAULT_PORT, ENV

from .support import NAMESPACE, Cluster, config, endpoint, model, variant

PREFIX = "s3://models/customers/"
OBJECT = "fraud-cfg1-blue"
PEERS = "fraud-cfg1-blue-peers"
ALL_AT_ONCE = {
    "blueGreen": {
        "trafficRouting": {"type": "AllAtOnce", "waitIntervalSeconds": 0},
        "terminationWaitSeconds": 5,
    }
}


def multi(name: str, uri: str = PREFIX, **spec: Any) -> Model:
    return model(name, modelUri=uri, mode="MultiModel", **spec)


def cluster_of(
    *configs: Any, models: dict[str, Model] | None = None, settings: dict[str, Any] | None = None, **spec: Any
) -> Cluster:
    found = models or {"mm": multi("mm", credentialsSecretRef={"name": "s3-creds"}), "one": model("one")}
    return Cluster(
        endpoint(configs[0].name, **spec),
        {c.name: c for c in configs},
        found,
        settings=Settings.model_validate(settings or {}),
    )


def of(cluster: Cluster, kind: str, name: str) -> dict[str, Any]:
    return cluster.objects[(kind, name)]


def planned(plan: Plan, kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in plan.objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def server(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "server"]
    return container


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    """Literal values as strings, a valueFrom as its dict."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in server(deployment).get("env", [])}


def in_service(cluster: Cluster) -> Plan:
    plan = cluster.step()
    for _ in range(3):
        plan = cluster.step()
    assert plan.status.phase == "InService", plan.status.failure_reason
    return plan


# ---------------------------------------------------------------- pods


def test_a_multi_model_variant_serves_the_prefix_without_a_storage_initializer() -> None:
    models = {
        "mm": multi(
            "mm",
            credentialsSecretRef={"name": "s3-creds"},
            multiModel={"cacheBytes": 1_500_000_000, "maxLoadedModels": 40},
        )
    }
    cluster = cluster_of(config("cfg1", variant("blue", "mm", initialInstanceCount=3)), models=models)
    in_service(cluster)
    deployment = of(cluster, "Deployment", OBJECT)
    pod = deployment["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    container = server(deployment)
    assert container["command"] == ["berth"]
    assert container["args"] == ["serve", "--multi-model", PREFIX]
    env = env_of(deployment)
    assert env[ENV["model_uri"]] == PREFIX
    assert env[ENV["multi_model"]] == "true"
    assert env[ENV["cache_bytes"]] == "1500000000"
    assert env[ENV["max_loaded_models"]] == "40"
    assert env[ENV["peers"]] == f"dns:{PEERS}.{NAMESPACE}.svc:{DEFAULT_PORT}"
    assert env[ENV["pod_ip"]] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert ENV["warm_from"] not in env and ENV["warm_models"] not in env  # a first fleet starts cold
    # The server fetches every model itself: the storage credentials are its own.
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    # One scratch volume at /tmp, where the server fetches the models, as large as a single-model
    # pod's model and /tmp volumes together.
    assert pod["volumes"][0] == {"name": "tmp", "emptyDir": {"sizeLimit": "11Gi"}}
    assert "model" not in [v["name"] for v in pod["volumes"]]
    assert container["volumeMounts"][0] == {"name": "tmp", "mountPath": "/tmp"}
    assert container["resources"]["requests"]["ephemeral-storage"] == "11Gi"


def test_the_pods_command_line_and_env_parse_with_the_real_berth_serve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    models = {
        "mm": multi("mm", multiModel={"cacheBytes": 2_000_000_000, "maxLoadedModels": 9, "warmModels": 4})
    }
    cluster = cluster_of(
        config("cfg1", variant("blue", "mm")),
        config("cfg2", variant("blue", "mm")),
        models=models,
        deploymentConfig=ALL_AT_ONCE,
    )
    in_service(cluster)
    cluster.edit(endpointConfigName="cfg2")
    deployment = planned(cluster.step(), "Deployment", "fraud-cfg2-blue")
    for name, value in env_of(deployment).items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv(ENV["pod_ip"], "10.0.0.7")  # what the kubelet resolves status.podIP to
    params = serve.make_context("serve", server(deployment)["args"][1:]).params
    assert params["model_uri"] == PREFIX
    assert params["multi_model"] is True
    assert (params["cache_bytes"], params["max_loaded_models"]) == (2_000_000_000, 9)
    assert params["peers"] == f"dns:fraud-cfg2-blue-peers.{NAMESPACE}.svc:{DEFAULT_PORT}"
    assert params["pod_ip"] == "10.0.0.7"
    assert (params["warm_from"], params["warm_models"]) == (WARM_FROM, 4)


def test_unset_cache_settings_are_left_to_the_server() -> None:
    cluster = cluster_of(config("cfg1", variant("blue", "mm")))
    cluster.step()
    env = env_of(of(cluster, "Deployment", OBJECT))
    assert env[ENV["multi_model"]] == "true"
    assert ENV["cache_bytes"] not in env  # 80% of the memory limit, which the server reads itself
    assert ENV["max_loaded_models"] not in env


def test_a_pvc_prefix_is_mounted_into_the_server() -> None:
    models = {"mm": multi("mm", uri="pvc://model-store/customers/")}
    cluster = cluster_of(config("cfg1", variant("blue", "mm")), models=models)
    cluster.step()
    deployment = of(cluster, "Deployment", OBJECT)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["pvc"] == {
        "name": "pvc",
        "persistentVolumeClaim": {"claimName": "model-store", "readOnly": True},
    }
    mounts = {m["name"]: m for m in server(deployment)["volumeMounts"]}
    assert mounts["pvc"] == {"name": "pvc", "mountPath": "/mnt/pvc/model-store", "readOnly": True}
    assert server(deployment)["args"] == ["serve", "--multi-model", "pvc://model-store/customers/"]


def test_the_model_env_still_overrides_and_auth_still_wins() -> None:
    models = {
        "mm": multi(
            "mm",
            env=[
                {"name": ENV["max_loaded_models"], "value": "7"},
                {"name": ENV["auth_mode"], "value": "None"},
            ],
        )
    }
    cluster = cluster_of(config("cfg1", variant("blue", "mm")), models=models)
    cluster.step()
    deployment = of(cluster, "Deployment", OBJECT)
    names = [e["name"] for e in server(deployment)["env"]]
    assert len(names) == len(set(names))
    env = env_of(deployment)
    assert env[ENV["max_loaded_models"]] == "7"
    assert env[ENV["auth_mode"]] == "KubernetesRBAC"


def test_a_bring_your_own_image_keeps_its_entrypoint_and_gets_the_env() -> None:
    models = {"mm": multi("mm", image="ghcr.io/acme/server:1")}
    cluster = cluster_of(config("cfg1", variant("blue", "mm")), models=models)
    cluster.step()
    deployment = of(cluster, "Deployment", OBJECT)
    assert "command" not in server(deployment) and "args" not in server(deployment)
    assert env_of(deployment)[ENV["multi_model"]] == "true"


# ---------------------------------------------------------------- peers


def test_a_headless_service_selects_exactly_the_variants_pods() -> None:
    cluster = cluster_of(
        config("cfg1", variant("blue", "mm", initialInstanceCount=2), variant("green", "one"))
    )
    plan = in_service(cluster)
    peers = planned(plan, "Service", PEERS)
    deployment = of(cluster, "Deployment", OBJECT)
    spec = peers["spec"]
    assert spec["clusterIP"] == "None"
    assert spec["publishNotReadyAddresses"] is False  # only ready replicas are peers
    assert spec["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert L.selects(spec["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    other = of(cluster, "Deployment", "fraud-cfg1-green")
    assert not L.selects(spec["selector"], other["spec"]["template"]["metadata"]["labels"])
    assert spec["ports"] == [{"name": "http", "port": DEFAULT_PORT, "targetPort": "http", "protocol": "TCP"}]
    assert peers["metadata"]["ownerReferences"][0]["kind"] == "Endpoint"
    assert peers["metadata"]["labels"][L.ENDPOINT_CONFIG] == "cfg1"
    assert peers["metadata"]["labels"][L.BERTH_COMPONENT] == "peers"
    # The route still sends to the variant's ClusterIP Service, never to the headless one.
    assert PEERS not in cluster.weights()
    # A SingleModel variant beside it is as before.
    assert ("Service", "fraud-cfg1-green-peers") not in cluster.objects
    green = other["spec"]["template"]["spec"]
    assert [c["name"] for c in green["initContainers"]] == ["storage-initializer"]
    assert ENV["multi_model"] not in env_of(other)


def test_the_network_policy_admits_the_replicas_to_each_other() -> None:
    cluster = cluster_of(config("cfg1", variant("blue", "mm")))
    plan = cluster.step()
    [policy] = [o for o in plan.objects if o["kind"] == "NetworkPolicy"]
    rules = policy["spec"]["ingress"]
    own = {"podSelector": {"matchLabels": {L.ENDPOINT: "fraud"}}}
    assert {"from": [own], "ports": [{"protocol": "TCP", "port": DEFAULT_PORT}]} in rules
    assert policy["spec"]["podSelector"] == own["podSelector"]

    single = cluster_of(config("cfg1", variant("blue", "one")))
    [policy] = [o for o in single.step().objects if o["kind"] == "NetworkPolicy"]
    assert all("podSelector" not in f for rule in policy["spec"]["ingress"] for f in rule["from"])


def test_serverless_multi_model_variants_get_peers_too() -> None:
    cold = {"variantName": "blue", "modelName": "mm", "serverlessConfig": {"memorySizeInMB": 2048}}
    cluster = cluster_of(config("cfg1", cold))
    in_service(cluster)
    assert ("HTTPScaledObject", OBJECT) in cluster.objects
    assert of(cluster, "Service", PEERS)["spec"]["clusterIP"] == "None"
    assert env_of(of(cluster, "Deployment", OBJECT))[ENV["multi_model"]] == "true"


def test_an_async_config_refuses_a_multi_model_model() -> None:
    spec = {
        "productionVariants": [
            variant(
                "blue", "mm", autoscaling={"minReplicas": 1, "maxReplicas": 2, "targetBacklogPerInstance": 5}
            )
        ],
        "asyncInferenceConfig": {"outputConfig": {"outputUri": "s3://out/"}},
    }
    async_config = EndpointConfig.model_validate(
        {"kind": "EndpointConfig", "metadata": {"name": "cfg1", "namespace": NAMESPACE}, "spec": spec}
    )
    cluster = cluster_of(async_config)
    plan = cluster.step()
    assert plan.status.phase == "Failed"
    reason = plan.status.failure_reason or ""
    assert "Model mm is MultiModel" in reason and "X-Berth-Target-Model" in reason
    ready = next(c for c in plan.status.conditions if c.type == "Ready")
    assert ready.reason == "InvalidVariant"
    assert cluster.names("Deployment") == []


# ---------------------------------------------------------------- rollouts


def rollout(new_model: str = "mm2", old: str = "mm", **models: Model) -> Cluster:
    """InService on cfg1 (blue on old); cfg2 serves blue on new_model."""
    found = {
        "mm": multi("mm"),
        "mm2": multi("mm2", runtime={"maxBatchSize": 8}, multiModel={"warmModels": 25}),
        "other": multi("other", uri="s3://models/elsewhere/"),
        "cold": multi("cold", multiModel={"warmModels": 0}),
        "one": model("one"),
        **models,
    }
    cluster = cluster_of(
        config("cfg1", variant("blue", old)),
        config("cfg2", variant("blue", new_model)),
        models=found,
        deploymentConfig=ALL_AT_ONCE,
    )
    in_service(cluster)
    cluster.edit(endpointConfigName="cfg2")
    return cluster


WARM_FROM = f"http://{PEERS}.{NAMESPACE}.svc:{DEFAULT_PORT}/models"


def test_the_new_fleet_warms_from_the_old_one_and_its_pods_never_change() -> None:
    cluster = rollout()
    plan = cluster.step()
    assert plan.status.rollout is not None
    assert plan.status.rollout.warm_from == {"blue": WARM_FROM}
    new = planned(plan, "Deployment", "fraud-cfg2-blue")
    env = env_of(new)
    assert env[ENV["warm_from"]] == WARM_FROM
    assert env[ENV["warm_models"]] == "25"
    assert env[ENV["peers"]] == f"dns:fraud-cfg2-blue-peers.{NAMESPACE}.svc:{DEFAULT_PORT}"
    template = copy.deepcopy(new["spec"]["template"])
    phases = []
    for _ in range(20):
        cluster.advance(1)
        plan = cluster.step()
        phases.append(plan.status.phase)
        assert planned(plan, "Deployment", "fraud-cfg2-blue")["spec"]["template"] == template
    assert phases[-1] == "InService" and plan.status.rollout is None
    assert plan.status.endpoint_config_name == "cfg2"
    # The rollout ended and the old fleet is gone; the warm source stays recorded for cfg2's pods.
    assert plan.status.warm_from == {"blue": WARM_FROM}
    assert cluster.names("Deployment") == ["fraud-cfg2-blue"]
    assert cluster.names("Service") == ["fraud-cfg2-blue", "fraud-cfg2-blue-peers"]
    assert of(cluster, "Deployment", "fraud-cfg2-blue")["spec"]["template"] == template
    # And a reconcile later changes nothing either.
    cluster.advance(600)
    assert planned(cluster.step(), "Deployment", "fraud-cfg2-blue")["spec"]["template"] == template


def test_no_warm_up_from_another_prefix_a_single_model_fleet_or_with_warm_models_zero() -> None:
    for new_model, old in (("other", "mm"), ("mm2", "one"), ("cold", "mm"), ("one", "mm")):
        cluster = rollout(new_model, old)
        plan = cluster.step()
        assert plan.status.rollout is not None
        assert plan.status.rollout.warm_from == {}, (new_model, old)
        env = env_of(planned(plan, "Deployment", "fraud-cfg2-blue"))
        assert ENV["warm_from"] not in env and ENV["warm_models"] not in env


def test_the_source_of_the_same_name_wins_among_several() -> None:
    models = {"mm": multi("mm"), "mm2": multi("mm2")}
    cluster = cluster_of(
        config("cfg1", variant("blue", "mm"), variant("green", "mm")),
        config("cfg2", variant("green", "mm2"), variant("red", "mm2")),
        models=models,
        deploymentConfig=ALL_AT_ONCE,
    )
    in_service(cluster)
    cluster.edit(endpointConfigName="cfg2")
    plan = cluster.step()
    assert plan.status.rollout is not None
    assert plan.status.rollout.warm_from == {
        "green": f"http://fraud-cfg1-green-peers.{NAMESPACE}.svc:{DEFAULT_PORT}/models",
        "red": WARM_FROM,
    }


def test_a_rolled_back_fleet_leaves_the_serving_one_as_it_was() -> None:
    cluster = rollout()
    cluster.not_ready.add("fraud-cfg2-blue")
    before = copy.deepcopy(of(cluster, "Deployment", OBJECT)["spec"]["template"])
    plan = cluster.step()
    assert plan.status.rollout is not None and plan.status.rollout.warm_from
    cluster.advance(1900)  # past maximumExecutionTimeoutSeconds
    plan = cluster.step()
    assert plan.status.last_rollback is not None
    assert plan.status.warm_from == {}
    for _ in range(3):
        plan = cluster.step()
    assert cluster.names("Deployment") == [OBJECT]
    assert of(cluster, "Deployment", OBJECT)["spec"]["template"] == before
    assert cluster.names("Service") == [OBJECT, PEERS]


def test_a_superseded_fleet_keeps_its_warm_source_and_the_next_warms_from_it() -> None:
    models = {"mm": multi("mm"), "mm2": multi("mm2"), "mm3": multi("mm3")}
    slow = {
        "blueGreen": {
            "trafficRouting": {"type": "AllAtOnce", "waitIntervalSeconds": 0},
            "terminationWaitSeconds": 300,
        }
    }
    cluster = cluster_of(
        config("cfg1", variant("blue", "mm")),
        config("cfg2", variant("blue", "mm2")),
        config("cfg3", variant("blue", "mm3")),
        models=models,
        deploymentConfig=slow,
    )
    in_service(cluster)
    cluster.edit(endpointConfigName="cfg2")
    plan = cluster.step()
    template = copy.deepcopy(planned(plan, "Deployment", "fraud-cfg2-blue")["spec"]["template"])
    for _ in range(5):
        cluster.advance(1)
        plan = cluster.step()
    assert plan.status.rollout is not None and plan.status.rollout.state == "Terminating"
    cluster.edit(endpointConfigName="cfg3")  # all traffic is on cfg2: it serves, cfg3 starts from it
    plan = cluster.step()
    assert plan.status.endpoint_config_name == "cfg2"
    assert plan.status.warm_from == {"blue": WARM_FROM}
    assert plan.status.rollout is not None
    assert plan.status.rollout.warm_from == {
        "blue": f"http://fraud-cfg2-blue-peers.{NAMESPACE}.svc:{DEFAULT_PORT}/models"
    }
    for _ in range(3):  # the serving fleet's pods stay as they were planned
        cluster.advance(1)
        plan = cluster.step()
        assert plan.status.warm_from == {"blue": WARM_FROM}
        assert planned(plan, "Deployment", "fraud-cfg2-blue")["spec"]["template"] == template

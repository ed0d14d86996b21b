"""The objects of a fresh Endpoint: golden files, admission, and the rules behind each field."""

from __future__ import annotations

from typing import Any

import pytest
from berth_operator.planner import Observed, Plan, PlanInput, plan_endpoint
from berth_operator.planner import labels as L
from berth_operator.planner.names import dns_label, label_value, variant_object_name
from berth_operator.settings import GatewayRef, Images, Routing, Settings
from berth_serving.config import ENV

from .golden import assert_golden
from .support import EPOCH, NAMESPACE, config, endpoint, model, variant
from .validation import assert_admitted, problems


def plan_of(ep: Any, configs: list[Any], models: list[Any], settings: Settings | None = None) -> Plan:
    return plan_endpoint(
        PlanInput(
            endpoint=ep,
            configs={c.name: c for c in configs},
            models={m.name: m for m in models},
            settings=settings or Settings(),
            observed=Observed(now=EPOCH),
        )
    )


def by_kind(plan: Plan, kind: str) -> list[dict[str, Any]]:
    return [o for o in plan.objects if o["kind"] == kind]


def only(plan: Plan, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in by_kind(plan, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, [o["metadata"]["name"] for o in by_kind(plan, kind)]
    return found[0]


def server(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "server")


def init(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["initContainers"][0]


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


# --------------------------------------------------------------------------- golden


def two_variant_plan(settings: Settings | None = None) -> Plan:
    cfg = config(
        "fraud-config-v1",
        variant("champion", "fraud-v1", initialInstanceCount=2, initialVariantWeight=4),
        variant(
            "challenger",
            "fraud-v2",
            instanceType="cpu-large",
            initialVariantWeight=1,
            autoscaling={"minReplicas": 2, "maxReplicas": 6, "targetInvocationsPerReplica": 50},
        ),
        shadows=(variant("shadow", "fraud-v2"),),
    )
    models = [
        model("fraud-v1", sha256="a" * 64, credentialsSecretRef={"name": "s3-creds"}),
        model("fraud-v2", runtime={"maxBatchSize": 8, "graphOptimizationLevel": "basic"}),
    ]
    return plan_of(endpoint("fraud-config-v1"), [cfg], models, settings)


def test_golden_gateway() -> None:
    plan = two_variant_plan()
    assert_admitted(plan.objects)
    assert_golden("gateway-two-variants-and-shadow", plan.objects)


def test_golden_ingress() -> None:
    settings = Settings(routing=Routing(mode="ingress"))
    plan = two_variant_plan(settings)
    assert_admitted(plan.objects)
    assert_golden("ingress-two-variants-and-shadow", plan.objects)


def test_golden_gpu() -> None:
    cfg = config("gpu-config", variant("main", "resnet", instanceType="gpu-small"))
    plan = plan_of(endpoint("gpu-config", name="vision", uid=None), [cfg], [model("resnet")])
    assert plan.status.failure_reason is None
    assert_admitted(plan.objects)
    assert_golden("gpu-render-without-owner", plan.objects)


def test_validators_are_not_vacuous() -> None:
    deployment = only(two_variant_plan(), "Deployment", "fraud-fraud-config-v1-champion")
    deployment["spec"]["template"]["spec"]["bogus"] = 1
    assert problems(deployment)
    route = only(two_variant_plan(), "HTTPRoute")
    route["spec"]["rules"][0]["backendRefs"][0]["weight"] = 2_000_000
    assert problems(route)


# --------------------------------------------------------------------------- deployment


def test_deployment_shape() -> None:
    plan = two_variant_plan()
    deployment = only(plan, "Deployment", "fraud-fraud-config-v1-champion")
    meta = deployment["metadata"]
    assert meta["namespace"] == NAMESPACE
    assert meta["labels"] == {
        L.NAME: "berth-serving",
        L.INSTANCE: "fraud",
        L.COMPONENT: "variant",
        L.PART_OF: "berth",
        L.MANAGED_BY: "berth-operator",
        L.ENDPOINT: "fraud",
        L.ENDPOINT_CONFIG: "fraud-config-v1",
        L.VARIANT: "champion",
        L.MODEL: "fraud-v1",
    }
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "berth.dev/v1alpha1",
            "kind": "Endpoint",
            "name": "fraud",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["selector"]["matchLabels"] == {
        L.ENDPOINT: "fraud",
        L.ENDPOINT_CONFIG: "fraud-config-v1",
        L.VARIANT: "champion",
    }
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    assert all(c["whenUnsatisfiable"] == "ScheduleAnyway" for c in pod["topologySpreadConstraints"])
    fetch = init(deployment)
    assert fetch["name"] == "storage-initializer"
    assert fetch["command"] + fetch["args"] == [
        "berth",
        "fetch-model",
        "s3://models/fraud-v1/model.onnx",
        "/mnt/models",
        "--max-bytes",
        str(10 * 2**30),  # the model volume's sizeLimit: an unpack past it is refused, not evicted
        "--sha256",
        "a" * 64,
    ]
    assert fetch["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    main = server(deployment)
    assert main["command"] + main["args"] == ["berth", "serve", "/mnt/models"]
    assert main["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert main["readinessProbe"]["httpGet"]["path"] == "/ping"
    assert main["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    # Liveness waits until the model loaded: ten minutes for a large model, then restarts.
    startup = main["startupProbe"]
    assert startup["httpGet"]["path"] == "/ping"
    assert startup["periodSeconds"] * startup["failureThreshold"] == 600
    assert main["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert pod["terminationGracePeriodSeconds"] > 5
    assert {"name": "model", "mountPath": "/mnt/models", "readOnly": True} in main["volumeMounts"]
    # The scheduler needs room for both emptyDirs (model 10Gi, /tmp 1Gi), which have limits.
    assert main["resources"] == {
        "limits": {"cpu": "1", "memory": "2Gi"},
        "requests": {"cpu": "1", "ephemeral-storage": "11Gi", "memory": "2Gi"},
    }
    assert {v["name"]: v["emptyDir"] for v in pod["volumes"] if "emptyDir" in v} == {
        "model": {"sizeLimit": "10Gi"},
        "tmp": {"sizeLimit": "1Gi"},
    }
    assert (
        pod["securityContext"]["runAsUser"] == pod["securityContext"]["runAsGroup"] == 10001
    )  # the images' uid
    for container in (fetch, main):
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    variables = env(main)
    assert variables[ENV["variant"]] == "champion"
    assert variables[ENV["model_name"]] == "fraud-v1"
    assert variables[ENV["model_uri"]] == "/mnt/models"
    assert ENV["providers"] not in variables


def test_runtime_settings_reach_the_server_env() -> None:
    deployment = only(two_variant_plan(), "Deployment", "fraud-fraud-config-v1-challenger")
    variables = env(server(deployment))
    assert variables[ENV["max_batch_size"]] == "8"
    assert variables[ENV["graph_optimization_level"]] == "basic"


def test_autoscaling_gives_hpa_and_no_replicas() -> None:
    plan = two_variant_plan()
    deployment = only(plan, "Deployment", "fraud-fraud-config-v1-challenger")
    assert "replicas" not in deployment["spec"]
    hpa = only(plan, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "fraud-fraud-config-v1-challenger",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "berth_invocations_per_second"},
                "target": {"type": "AverageValue", "averageValue": "50"},
            },
        }
    ]
    assert hpa["spec"]["behavior"] == {
        "scaleDown": {"stabilizationWindowSeconds": 300},
        "scaleUp": {"stabilizationWindowSeconds": 60},
    }


def test_cpu_autoscaling() -> None:
    scaling = {"maxReplicas": 3, "targetCPUUtilization": 70, "scaleInCooldownSeconds": 30}
    cfg = config("c", variant("v", "m", autoscaling=scaling))
    plan = plan_of(endpoint("c"), [cfg], [model("m")])
    hpa = only(plan, "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 70},
    }
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 30
    assert not by_kind(plan, "PodDisruptionBudget")  # minReplicas 1
    assert_admitted(plan.objects)


def test_pdb_only_with_more_than_one_replica() -> None:
    plan = two_variant_plan()
    names = [o["metadata"]["name"] for o in by_kind(plan, "PodDisruptionBudget")]
    # champion: 2 replicas; challenger: HPA minReplicas 2; shadow: 1 replica
    assert names == ["fraud-fraud-config-v1-challenger", "fraud-fraud-config-v1-champion"]
    pdb = only(plan, "PodDisruptionBudget", "fraud-fraud-config-v1-champion")
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {
            "matchLabels": {L.ENDPOINT: "fraud", L.ENDPOINT_CONFIG: "fraud-config-v1", L.VARIANT: "champion"}
        },
    }


def test_service() -> None:
    svc = only(two_variant_plan(), "Service", "fraud-fraud-config-v1-champion")
    assert svc["spec"] == {
        "type": "ClusterIP",
        "selector": {L.ENDPOINT: "fraud", L.ENDPOINT_CONFIG: "fraud-config-v1", L.VARIANT: "champion"},
        "ports": [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}],
    }


def test_gpu_instance_type() -> None:
    settings = Settings(images=Images(cpu="reg/cpu:1", gpu="reg/gpu:1"))
    cfg = config("c", variant("v", "m", instanceType="gpu-small"))
    deployment = only(plan_of(endpoint("c"), [cfg], [model("m")], settings), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    main = server(deployment)
    assert main["image"] == "reg/gpu:1"
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert env(main)[ENV["providers"]] == "CUDAExecutionProvider,CPUExecutionProvider"
    assert init(deployment)["image"] == "reg/cpu:1"  # the fetcher needs no GPU


def test_catalog_node_selector_and_resource_override() -> None:
    settings = Settings.model_validate(
        {
            "instanceTypes": {
                "arm": {
                    "resources": {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"memory": "1Gi"}},
                    "nodeSelector": {"kubernetes.io/arch": "arm64"},
                }
            }
        }
    )
    cfg = config("c", variant("v", "m", instanceType="arm", resources={"limits": {"memory": "4Gi"}}))
    plan = plan_of(endpoint("c"), [cfg], [model("m")], settings)
    deployment = only(plan, "Deployment")
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
    assert server(deployment)["resources"] == {
        "limits": {"memory": "4Gi"},
        "requests": {"cpu": "2", "ephemeral-storage": "11Gi", "memory": "1Gi"},
    }
    assert_admitted(plan.objects)


def test_bring_your_own_image_keeps_its_entrypoint_and_user_env_wins() -> None:
    byo = model(
        "m",
        image="example.com/custom:2",
        env=[{"name": "BERTH_MAX_BATCH_SIZE", "value": "1"}, {"name": "EXTRA", "value": "x"}],
        serviceAccountName="reader",
    )
    deployment = only(plan_of(endpoint("c"), [config("c", variant("v", "m"))], [byo]), "Deployment")
    main = server(deployment)
    assert main["image"] == "example.com/custom:2"
    assert "command" not in main and "args" not in main
    names = [e["name"] for e in main["env"]]
    assert names.count("BERTH_MAX_BATCH_SIZE") == 1
    assert env(main)["BERTH_MAX_BATCH_SIZE"] == "1"
    assert env(main)["EXTRA"] == "x"
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "reader"
    assert init(deployment)["image"] == Settings().images.cpu


def test_pvc_model_is_mounted_read_only() -> None:
    deployment = only(
        plan_of(
            endpoint("c"),
            [config("c", variant("v", "m"))],
            [model("m", modelUri="pvc://models/fraud/v2.onnx")],
        ),
        "Deployment",
    )
    pod = deployment["spec"]["template"]["spec"]
    assert {"name": "pvc", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod[
        "volumes"
    ]
    fetch = init(deployment)
    assert {"name": "pvc", "mountPath": "/mnt/pvc/models", "readOnly": True} in fetch["volumeMounts"]
    assert fetch["args"][1] == "pvc://models/fraud/v2.onnx"  # fetch-model reads it under /mnt/pvc
    assert_admitted([deployment])


def test_render_without_uid_has_no_owner_references() -> None:
    plan = plan_of(endpoint("c", uid=None), [config("c", variant("v", "m"))], [model("m")])
    assert all("ownerReferences" not in o["metadata"] for o in plan.objects)
    assert all(o["metadata"]["namespace"] == NAMESPACE for o in plan.objects)


def test_objects_are_sorted_and_plans_deterministic() -> None:
    first, second = two_variant_plan(), two_variant_plan()
    assert first == second
    kinds = [o["kind"] for o in first.objects]
    order = [
        "NetworkPolicy",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "HTTPRoute",
    ]
    assert kinds == sorted(kinds, key=order.index)


def test_gateway_settings_reach_the_parent_ref() -> None:
    settings = Settings(
        routing=Routing(gateway=GatewayRef(name="edge", namespace="infra", sectionName="https"))
    )
    route = only(
        plan_of(endpoint("c"), [config("c", variant("v", "m"))], [model("m")], settings), "HTTPRoute"
    )
    assert route["spec"]["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "edge",
            "namespace": "infra",
            "sectionName": "https",
        }
    ]


# --------------------------------------------------------------------------- names


def test_short_names_are_readable() -> None:
    assert variant_object_name("fraud", "cfg-v1", "blue") == "fraud-cfg-v1-blue"


@pytest.mark.parametrize(
    ("endpoint_name", "config_name", "variant_name"),
    [
        ("a" * 60, "config-" + "b" * 50, "blue"),
        ("fraud.detection", "v1", "blue"),  # dots are not allowed in DNS-1035 labels
        ("1st-endpoint", "v1", "blue"),  # must start with a letter
        ("x" * 253, "y" * 253, "z" * 63),
    ],
)
def test_long_or_odd_names_are_cut_and_hashed(
    endpoint_name: str, config_name: str, variant_name: str
) -> None:
    name = variant_object_name(endpoint_name, config_name, variant_name)
    assert len(name) <= 63
    assert name[0].isalpha() and name[-1].isalnum()
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert name == variant_object_name(endpoint_name, config_name, variant_name)  # stable
    assert name != variant_object_name(endpoint_name, config_name, "other")


def test_hash_keeps_long_names_apart() -> None:
    base = "e" * 70
    assert variant_object_name(base, "c", "one") != variant_object_name(base, "c", "two")
    assert dns_label(base + "1") != dns_label(base + "2")


def test_long_names_give_valid_labels_and_admitted_objects() -> None:
    long_endpoint = "endpoint-" + "x" * 100
    long_config = "config-" + "y" * 200
    long_model = "model-" + "z" * 100
    plan = plan_of(
        endpoint(long_config, name=long_endpoint),
        [config(long_config, variant("v", long_model))],
        [model(long_model)],
    )
    assert_admitted(plan.objects)
    deployment = only(plan, "Deployment")
    assert deployment["metadata"]["labels"][L.ENDPOINT] == label_value(long_endpoint)
    assert len(label_value(long_endpoint)) <= 63
    assert L.endpoint_selector(long_endpoint) == f"berth.dev/endpoint={label_value(long_endpoint)}"


def test_quantities_are_written_as_the_api_server_stores_them() -> None:
    from berth_operator.quantity import canonical

    # As kube-apiserver 1.36 stored them: a planned "0.5" read back as 500m was patched forever.
    written = [1, 2.0, 0.5, "0.5", "1000m", "1024Mi", "1536Mi", "1.5Gi", "1000", "1500", "2Gi", "100m", "0"]
    stored = ["1", "2", "500m", "500m", "1", "1Gi", "1536Mi", "1536Mi", "1k", "1500", "2Gi", "100m", "0"]
    assert [canonical(q) for q in written] == stored
    assert canonical("not a quantity") == "not a quantity"  # the API server refuses it, naming the field
    cfg = config("c", variant("v", "m", instanceType="gpu-small", resources={"requests": {"cpu": 3}}))
    main = server(only(plan_of(endpoint("c"), [cfg], [model("m")]), "Deployment"))
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert main["resources"]["requests"]["cpu"] == "3"

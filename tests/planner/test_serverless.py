"""Serverless variants in the planner: the KEDA HTTP add-on's objects, the route through its
interceptor, status at zero replicas, the fallbacks when the cluster cannot hold requests, and
rollouts to and from serverless configs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from berth_operator.api import EndpointConfig
from berth_operator.planner import Plan, serverless
from berth_operator.render import render_objects
from berth_operator.settings import Settings

from .support import NAMESPACE, Cluster, config, endpoint, header_rules, model, variant
from .validation import assert_admitted

COLD = {"memorySizeInMB": 2048, "maxConcurrency": 20}
OBJECT = "fraud-cfg1-blue"
INTERCEPTOR = "keda-add-ons-http-interceptor-proxy"
ALL_AT_ONCE = {"blueGreen": {"trafficRouting": {"type": "AllAtOnce"}, "terminationWaitSeconds": 0}}


def cold(name: str, model_name: str, **fields: Any) -> dict[str, Any]:
    return {"variantName": name, "modelName": model_name, "serverlessConfig": {**COLD, **fields}}


def cluster_of(*configs: EndpointConfig, settings: dict[str, Any] | None = None, **spec: Any) -> Cluster:
    return Cluster(
        endpoint(configs[0].name, **spec),
        {c.name: c for c in configs},
        {"m1": model("m1"), "m2": model("m2")},
        settings=Settings.model_validate(settings or {}),
    )


def of(cluster: Cluster, kind: str, name: str) -> dict[str, Any]:
    return cluster.objects[(kind, name)]


def scale_to_zero(cluster: Cluster, name: str) -> None:
    """What KEDA does after scaledownPeriod without requests."""
    deployment = of(cluster, "Deployment", name)
    deployment["spec"]["replicas"] = 0
    deployment["status"] = {"observedGeneration": deployment["metadata"]["generation"], "replicas": 0}


def in_service(cluster: Cluster, steps: int = 3) -> Plan:
    plan = cluster.step()
    for _ in range(steps):
        plan = cluster.step()
    return plan


def test_a_serverless_variant_gets_an_http_scaled_object_and_no_replica_count() -> None:
    cluster = cluster_of(config("cfg1", cold("blue", "m1", provisionedConcurrency=0, idleSeconds=120)))
    plan = cluster.step()
    [deployment] = [o for o in plan.objects if o["kind"] == "Deployment"]
    scaled = of(cluster, "HTTPScaledObject", OBJECT)
    assert "replicas" not in deployment["spec"]  # the add-on owns the count
    resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"]["cpu"] == "1" and resources["limits"]["memory"] == "2Gi"
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"]
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": OBJECT,
        "service": OBJECT,
        "port": 8080,
    }
    assert spec["headers"] == [{"name": serverless.TARGET_HEADER, "value": f"{NAMESPACE}/{OBJECT}"}]
    # 1 CPU takes 4 in flight: maxConcurrency 20 is 5 replicas; a new fleet keeps one until it served.
    assert spec["replicas"] == {"min": 1, "max": 5}
    assert spec["scaledownPeriod"] == 120
    assert spec["scalingMetric"] == {"concurrency": {"targetValue": 4}}
    assert spec["timeouts"] == {"conditionWait": "180s"}
    assert scaled["metadata"]["annotations"][serverless.MAX_HELD_ANNOTATION] == "100"
    assert cluster.names("HorizontalPodAutoscaler") == [] and cluster.names("ScaledObject") == []


def test_the_route_sends_the_variant_through_the_interceptor() -> None:
    cluster = cluster_of(config("cfg1", cold("blue", "m1"), variant("warm", "m2", initialVariantWeight=3)))
    plan = cluster.step()
    route = cluster.route()
    assert route is not None
    default = route["spec"]["rules"][-1]["backendRefs"]
    by_name = {serverless.routed_service(ref): ref for ref in default}
    through = by_name[OBJECT]
    assert (through["name"], through["namespace"], through["port"]) == (INTERCEPTOR, "keda", 8080)
    assert through["filters"][0]["requestHeaderModifier"]["set"] == [
        {"name": serverless.TARGET_HEADER, "value": f"{NAMESPACE}/{OBJECT}"}
    ]
    assert (through["weight"], by_name["fraud-cfg1-warm"]["weight"]) == (250, 750)
    assert "namespace" not in by_name["fraud-cfg1-warm"]  # the provisioned variant: its own Service
    [blue_rule] = [r for r in header_rules(route) if r["matches"][0]["headers"][0]["value"] == "blue"]
    assert blue_rule["backendRefs"][0]["name"] == INTERCEPTOR
    assert cluster.weights() == {INTERCEPTOR: 250, "fraud-cfg1-warm": 750}
    # The interceptor's namespace lets this namespace's routes send to it.
    [grant] = [o for o in plan.shared if o["kind"] == serverless.REFERENCE_GRANT_KIND]
    assert grant["metadata"] == {
        "name": f"berth-routes-from-{NAMESPACE}",
        "namespace": "keda",
        "labels": {"app.kubernetes.io/part-of": "berth", "app.kubernetes.io/managed-by": "berth-operator"},
    }
    assert grant["spec"]["from"] == [
        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": NAMESPACE}
    ]
    assert grant["spec"]["to"] == [{"group": "", "kind": "Service", "name": INTERCEPTOR}]
    # The interceptor's pods forward the traffic: the NetworkPolicy admits their namespace.
    [policy] = [o for o in plan.objects if o["kind"] == "NetworkPolicy"]
    sources = [f["namespaceSelector"]["matchLabels"] for f in policy["spec"]["ingress"][0]["from"]]
    assert {"kubernetes.io/metadata.name": "keda"} in sources
    assert_admitted(plan.objects)


def test_at_zero_replicas_the_variant_is_in_service() -> None:
    cluster = cluster_of(config("cfg1", cold("blue", "m1")))
    plan = in_service(cluster)
    assert plan.status.phase == "InService"
    # Served once: the floor goes back to provisionedConcurrency, and KEDA may scale to zero.
    assert of(cluster, "HTTPScaledObject", OBJECT)["spec"]["replicas"]["min"] == 0
    scale_to_zero(cluster, OBJECT)
    plan = cluster.step()
    assert plan.status.phase == "InService"
    [status] = plan.status.production_variants
    assert (status.current_instance_count, status.ready_instance_count) == (0, 0)
    assert status.desired_instance_count == 0
    assert status.current_weight == 1.0
    ready = next(c for c in plan.status.conditions if c.type == "Ready")
    assert ready.status == "True"


def test_a_first_fleet_that_never_loads_is_not_in_service() -> None:
    cluster = cluster_of(config("cfg1", cold("blue", "m1")))
    cluster.not_ready.add(OBJECT)
    for _ in range(3):
        plan = cluster.step()
    assert plan.status.phase == "Creating"
    assert of(cluster, "HTTPScaledObject", OBJECT)["spec"]["replicas"]["min"] == 1


def test_provisioned_concurrency_keeps_replicas_warm() -> None:
    cluster = cluster_of(config("cfg1", cold("blue", "m1", memorySizeInMB=1024, provisionedConcurrency=5)))
    in_service(cluster)
    # 1024 MB is half a CPU: 2 in flight per replica, so 5 requests need 3 warm replicas.
    spec = of(cluster, "HTTPScaledObject", OBJECT)["spec"]
    assert spec["replicas"] == {"min": 3, "max": 10}
    assert cluster.names("PodDisruptionBudget") == [OBJECT]


@pytest.mark.parametrize(
    ("settings", "unavailable", "message"),
    [
        ({}, frozenset({serverless.HTTP_SCALED_OBJECT_KIND}), serverless.MSG_NO_HTTP_ADDON),
        ({"routing": {"mode": "ingress"}}, frozenset(), serverless.MSG_NEEDS_GATEWAY),
    ],
    ids=["no-http-add-on", "ingress"],
)
def test_without_the_add_on_the_variant_stays_warm_and_the_status_says_why(
    settings: dict[str, Any], unavailable: frozenset[str], message: str
) -> None:
    cluster = cluster_of(config("cfg1", cold("blue", "m1")), settings=settings)
    cluster.unavailable_kinds = unavailable
    plan = in_service(cluster)
    assert cluster.names("HTTPScaledObject") == []
    assert of(cluster, "Deployment", OBJECT)["spec"]["replicas"] == 1  # nothing would start it at zero
    assert plan.status.phase == "InService"
    assert plan.status.failure_reason == message
    degraded = next(c for c in plan.status.conditions if c.type == "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "ServerlessScalerMissing")
    assert not [o for o in plan.shared if o["kind"] == serverless.REFERENCE_GRANT_KIND]
    if settings == {}:
        assert cluster.weights() == {OBJECT: 1000}  # straight to its Service


def test_no_reference_grant_crd_is_named() -> None:
    cluster = cluster_of(config("cfg1", cold("blue", "m1")))
    cluster.unavailable_kinds = frozenset({serverless.REFERENCE_GRANT_KIND})
    plan = in_service(cluster)
    assert plan.status.failure_reason == serverless.MSG_NO_REFERENCE_GRANT
    assert not [o for o in plan.shared if o["kind"] == serverless.REFERENCE_GRANT_KIND]


def test_a_rollout_to_a_serverless_config_proves_it_with_one_replica_first() -> None:
    cluster = cluster_of(
        config("cfg1", variant("blue", "m1")),
        config("cfg2", cold("blue", "m2")),
        deploymentConfig=ALL_AT_ONCE,
    )
    in_service(cluster)
    cluster.not_ready.add("fraud-cfg2-blue")
    cluster.edit(endpointConfigName="cfg2")
    for _ in range(3):
        plan = cluster.step()
    assert plan.status.phase == "Updating"
    assert of(cluster, "HTTPScaledObject", "fraud-cfg2-blue")["spec"]["replicas"]["min"] == 1
    assert cluster.weights() == {"fraud-cfg1-blue": 1000}  # nothing moves to an unproven fleet
    cluster.not_ready.clear()
    for _ in range(10):  # ready, shifted, baked (waitIntervalSeconds), old fleet gone
        plan = cluster.step()
        cluster.advance(61)
    assert plan.status.phase == "InService" and plan.status.endpoint_config_name == "cfg2"
    assert cluster.weights() == {INTERCEPTOR: 1000}
    assert of(cluster, "HTTPScaledObject", "fraud-cfg2-blue")["spec"]["replicas"]["min"] == 0
    assert "fraud-cfg1-blue" not in cluster.names("Deployment")


def test_render_gives_the_same_objects(tmp_path: Any) -> None:
    manifest = tmp_path / "serverless.yaml"
    manifest.write_text(
        f"""
apiVersion: berth.dev/v1alpha1
kind: Model
metadata: {{name: m1, namespace: {NAMESPACE}}}
spec: {{modelUri: "s3://models/m1/model.onnx"}}
---
apiVersion: berth.dev/v1alpha1
kind: EndpointConfig
metadata: {{name: cfg1, namespace: {NAMESPACE}}}
spec:
  productionVariants:
    - {{variantName: blue, modelName: m1, serverlessConfig: {{memorySizeInMB: 2048}}}}
---
apiVersion: berth.dev/v1alpha1
kind: Endpoint
metadata: {{name: fraud, namespace: {NAMESPACE}}}
spec: {{endpointConfigName: cfg1}}
"""
    )
    objects = render_objects([manifest], Settings())
    kinds = sorted({o["kind"] for o in objects})
    assert serverless.HTTP_SCALED_OBJECT_KIND in kinds and serverless.REFERENCE_GRANT_KIND in kinds
    assert_admitted([o for o in objects if o["kind"] != serverless.REFERENCE_GRANT_KIND])


def test_warmup_requests_and_the_model_cache_reach_the_pod() -> None:
    sha = "a" * 64
    warm = model(
        "m1", sha256=sha, warmupRequests=[{"body": "[[1.0]]"}, {"contentType": "text/csv", "body": "1"}]
    )
    settings = {"modelCache": {"volume": {"hostPath": {"path": "/var/cache/berth"}}}}
    cluster = cluster_of(config("cfg1", cold("blue", "m1")), settings=settings)
    cluster.models["m1"] = warm
    plan = cluster.step()
    [deployment] = [o for o in plan.objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert json.loads(env["BERTH_WARMUP_REQUESTS"]) == [
        {"contentType": "application/json", "body": "[[1.0]]"},
        {"contentType": "text/csv", "body": "1"},
    ]
    [init] = pod["initContainers"]
    assert init["args"][-2:] == ["--cache-dir", "/var/cache/berth/models"]
    assert {"name": "model-cache", "mountPath": "/var/cache/berth/models"} in init["volumeMounts"]
    assert {
        "name": "model-cache",
        "hostPath": {"path": "/var/cache/berth", "type": "DirectoryOrCreate"},
    } in pod["volumes"]
    assert_admitted(plan.objects)
    # Without a sha256 there is nothing to key the cache on: the init container downloads.
    cluster = cluster_of(config("cfg1", cold("blue", "m1")), settings=settings)
    plan = cluster.step()
    [deployment] = [o for o in plan.objects if o["kind"] == "Deployment"]
    assert "--cache-dir" not in deployment["spec"]["template"]["spec"]["initContainers"][0]["args"]

"""Async inference in the planner: front door, worker sidecar, KEDA on the stream, status, rollouts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from berth_operator.api import EndpointConfig
from berth_operator.planner import Observed, Plan
from berth_operator.planner import labels as L
from berth_operator.planner.asyncinf import (
    MSG_NO_ADDRESS_KEY,
    MSG_NO_REDIS,
    WORKER_CONTAINER,
    streams_to_observe,
)
from berth_operator.planner.types import QueueState
from berth_operator.render import RenderError, render_objects
from berth_operator.settings import Settings, SettingsError, load_settings
from berth_serving.asyncinf.keys import CONSUMER_GROUP, ROUTES_FILE_KEY, Routes, stream_key

from .support import NAMESPACE, Cluster, endpoint, model, variant
from .validation import assert_admitted

REPO = Path(__file__).resolve().parents[2]
REDIS = {"async": {"redis": {"url": "redis://redis.queues:6379"}}}
OUTPUT = {"outputConfig": {"outputUri": "s3://bucket/out/"}}
BACKLOG = {"minReplicas": 0, "maxReplicas": 4, "targetBacklogPerInstance": 10, "scaleInCooldownSeconds": 120}
OLD, NEW = "fraud-cfg1-blue", "fraud-cfg2-blue"


def async_config(name: str, *variants: dict[str, Any], **async_fields: Any) -> EndpointConfig:
    spec = {"productionVariants": list(variants), "asyncInferenceConfig": {**OUTPUT, **async_fields}}
    return EndpointConfig.model_validate(
        {"kind": "EndpointConfig", "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}
    )


@dataclass
class QueueCluster(Cluster):
    """The planner's fake cluster, and the queues the operator would have read from Redis."""

    queues: dict[str, QueueState] = field(default_factory=dict)
    queue_error: str | None = None

    def observed(self) -> Observed:
        return replace(super().observed(), queues=dict(self.queues), queue_error=self.queue_error)

    def of(self, kind: str, name: str) -> dict[str, Any]:
        return self.objects[(kind, name)]

    def routes(self) -> Routes:
        data = self.of("ConfigMap", "fraud-async-routes")["data"][ROUTES_FILE_KEY]
        return Routes.model_validate_json(data)


def cluster_of(
    *configs: EndpointConfig, settings: dict[str, Any] | None = None, **endpoint_spec: Any
) -> QueueCluster:
    return QueueCluster(
        endpoint(configs[0].name, **endpoint_spec),
        {c.name: c for c in configs},
        {"m1": model("m1"), "m2": model("m2")},
        settings=Settings.model_validate(REDIS if settings is None else settings),
    )


def containers(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def condition(plan: Plan, type_: str) -> Any:
    return next(c for c in plan.status.conditions if c.type == type_)


def test_the_worker_sidecar_follows_the_contract() -> None:
    notify = {"notification": {"successWebhook": "https://hooks/ok", "errorWebhook": "https://hooks/err"}}
    cfg = async_config(
        "cfg1",
        variant("blue", "m1", initialInstanceCount=2),
        outputConfig={**OUTPUT["outputConfig"], **notify},
        clientConfig={"maxConcurrentInvocationsPerInstance": 7},
    )
    cluster = cluster_of(cfg)
    cluster.step()
    pod = containers(cluster.of("Deployment", OLD))
    worker = pod[WORKER_CONTAINER]
    stream = stream_key(NAMESPACE, "fraud", "cfg1", "blue")
    assert worker["args"] == [
        "async-worker",
        "--stream",
        stream,
        "--consumer",
        "$(POD_NAME)",
        "--invoke-url",
        "http://127.0.0.1:8080/invocations",
        "--max-concurrency",
        "7",
        "--variant",
        "blue",
        "--endpoint-config",
        "cfg1",
        "--success-webhook",
        "https://hooks/ok",
        "--error-webhook",
        "https://hooks/err",
    ]
    assert worker["image"] == pod["server"]["image"] and worker["command"] == ["berth"]
    env = env_of(worker)
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["BERTH_REDIS_URL"] == "redis://redis.queues:6379"
    assert worker["ports"] == [{"name": "async-metrics", "containerPort": 9091, "protocol": "TCP"}]
    assert env_of(pod["server"])["BERTH_AUTH_TRUST_LOOPBACK"] == "1"
    # A message may ask for up to an hour; the replica must not cut it at its 60 s default,
    # and the worker gets the default invocation timeout to finish its messages on SIGTERM.
    assert env_of(pod["server"])["BERTH_TIMEOUT_SECONDS"] == "3600"
    pod_spec = cluster.of("Deployment", OLD)["spec"]["template"]["spec"]
    assert pod_spec["terminationGracePeriodSeconds"] == 910
    ports = {p["name"]: p for p in cluster.of("Service", OLD)["spec"]["ports"]}
    assert ports["async-metrics"] == {
        "name": "async-metrics",
        "port": 9091,
        "targetPort": "async-metrics",
        "protocol": "TCP",
    }
    # Without autoscaling the Deployment keeps initialInstanceCount.
    assert cluster.of("Deployment", OLD)["spec"]["replicas"] == 2


def test_realtime_variants_get_neither_sidecar_nor_loopback_trust() -> None:
    from .support import config

    cluster = QueueCluster(
        endpoint("rt"), {"rt": config("rt", variant("blue", "m1"))}, {"m1": model("m1")}, settings=Settings()
    )
    plan = cluster.step()
    deployment = cluster.of("Deployment", "fraud-rt-blue")
    assert list(containers(deployment)) == ["server"]
    assert "BERTH_AUTH_TRUST_LOOPBACK" not in env_of(containers(deployment)["server"])
    assert "BERTH_TIMEOUT_SECONDS" not in env_of(containers(deployment)["server"])
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 70
    assert {o["kind"] for o in plan.objects} == {"Deployment", "Service", "HTTPRoute", "NetworkPolicy"}
    assert not any(c.type == "HasBacklogWithoutCapacity" for c in plan.status.conditions)


def test_the_front_door_queues_by_the_route_and_checks_callers_like_a_server() -> None:
    m1 = model(
        "m1", credentialsSecretRef={"name": "s3-creds"}, env=[{"name": "AWS_REGION", "value": "eu-west-1"}]
    )
    cluster = cluster_of(
        async_config("cfg1", variant("blue", "m1", initialVariantWeight=3), variant("green", "m2")),
        auth={"mode": "APIKey", "secretRef": {"name": "fraud-keys"}},
    )
    cluster.models["m1"] = m1
    cluster.step()
    plan = cluster.step()
    assert plan.status.phase == "InService", plan.status.failure_reason
    door = cluster.of("Deployment", "fraud-async")
    server = containers(cluster.of("Deployment", OLD))["server"]
    [front] = containers(door).values()
    assert front["args"][:3] == ["async-frontdoor", "--routes", "/etc/berth/async/routes.json"]
    env = env_of(front)
    assert env["BERTH_REDIS_URL"] == "redis://redis.queues:6379"
    assert env["AWS_REGION"] == "eu-west-1"
    assert front["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    # The same invoke-auth env and key volume as the serving container.
    auth = {k: v for k, v in env_of(server).items() if k.startswith("BERTH_AUTH_MODE") or "API_KEYS" in k}
    assert auth and all(env[k] == v for k, v in auth.items())
    key_mount = next(m for m in server["volumeMounts"] if m["name"] == "api-keys")
    assert key_mount in front["volumeMounts"]
    volumes = {v["name"]: v for v in door["spec"]["template"]["spec"]["volumes"]}
    assert volumes["api-keys"] == {"name": "api-keys", "secret": {"secretName": "fraud-keys"}}
    assert volumes["async-routes"]["configMap"]["name"] == "fraud-async-routes"
    assert door["spec"]["replicas"] == 1
    assert front["readinessProbe"]["httpGet"]["path"] == "/ping"
    assert front["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}
    # Service 80 -> 8080; the NetworkPolicy admits the front door's pods as it does serving pods.
    service = cluster.of("Service", "fraud-async")
    assert service["spec"]["ports"][0]["port"] == 80 and service["spec"]["ports"][0]["targetPort"] == "http"
    pod_labels = door["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[L.BERTH_COMPONENT] == "async-frontdoor"
    assert L.selects(service["spec"]["selector"], pod_labels)
    policy = cluster.of("NetworkPolicy", "fraud-serving")
    assert L.selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    assert {p["port"] for p in policy["spec"]["ingress"][0]["ports"]} == {8080, 9091}
    # No variant Service selects the front door, and the front door selects no serving pod.
    variant_pod = cluster.of("Deployment", OLD)["spec"]["template"]["metadata"]["labels"]
    assert not L.selects(cluster.of("Service", OLD)["spec"]["selector"], pod_labels)
    assert not L.selects(service["spec"]["selector"], variant_pod)
    # routes.json: every variant with the weight the HTTPRoute carries.
    routes = cluster.routes()
    weights = cluster.weights()
    assert [(v.variant_name, v.weight) for v in routes.variants] == [
        ("blue", weights[OLD]),
        ("green", weights["fraud-cfg1-green"]),
    ]
    assert routes.variants[0].failure_uri == "s3://bucket/out/failures/"
    assert routes.variants[0].stream == stream_key(NAMESPACE, "fraud", "cfg1", "blue")
    # The HTTPRoute's first rule sends /async-invocations to the front door.
    first = cluster.route()["spec"]["rules"][0]  # type: ignore[index]
    assert first["matches"] == [
        {"path": {"type": "PathPrefix", "value": "/endpoints/prod/fraud/async-invocations"}}
    ]
    assert first["backendRefs"] == [{"name": "fraud-async", "port": 80, "weight": 1}]
    rewrite = first["filters"][0]["urlRewrite"]["path"]
    assert rewrite == {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/async-invocations"}


def test_a_front_door_that_is_not_ready_keeps_the_endpoint_out_of_service() -> None:
    cluster = cluster_of(async_config("cfg1", variant("blue", "m1")))
    cluster.not_ready.add("fraud-async")
    cluster.step()
    plan = cluster.step()
    assert plan.status.phase == "Creating"
    cluster.not_ready.clear()
    cluster.make_ready()
    assert cluster.step().status.phase == "InService"


def test_scale_to_zero_with_keda_on_the_stream() -> None:
    cluster = cluster_of(async_config("cfg1", variant("blue", "m1", autoscaling=BACKLOG)))
    plan = cluster.step()
    scaled = cluster.of("ScaledObject", OLD)
    assert_admitted([scaled])  # KEDA's CRD, schema and CEL
    spec = scaled["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["cooldownPeriod"]) == (0, 4, 120)
    assert spec["scaleTargetRef"]["envSourceContainerName"] == WORKER_CONTAINER
    stream = stream_key(NAMESPACE, "fraud", "cfg1", "blue")
    lag, pending = spec["triggers"]
    common = {"address": "redis.queues:6379", "stream": stream, "consumerGroup": CONSUMER_GROUP}
    assert lag == {
        "type": "redis-streams",
        "metricType": "AverageValue",
        "metadata": {**common, "lagCount": "10", "activationLagCount": "0"},
    }
    assert pending["metadata"] == {**common, "pendingEntriesCount": "4"}
    [planned] = [o for o in plan.objects if o["kind"] == "Deployment" and o["metadata"]["name"] == OLD]
    assert "replicas" not in planned["spec"]  # KEDA's HPA owns the count
    assert plan.status.failure_reason is None
    # At zero replicas with nothing queued the variant is in service.
    cluster.of("Deployment", OLD)["spec"]["replicas"] = 0
    cluster.make_ready()
    assert cluster.step().status.phase == "InService"


def test_without_keda_an_async_fleet_keeps_one_replica_and_says_why() -> None:
    cluster = cluster_of(async_config("cfg1", variant("blue", "m1", autoscaling=BACKLOG)))
    cluster.unavailable_kinds = frozenset({"ScaledObject"})
    plan = cluster.step()
    assert cluster.names("ScaledObject") == []
    assert cluster.of("Deployment", OLD)["spec"]["replicas"] == 1
    assert plan.status.failure_reason and "install KEDA" in plan.status.failure_reason


def test_passwords_reach_keda_through_the_workers_env_never_the_scaled_object() -> None:
    url = "rediss://app:s3cret@redis.queues:6380/2"
    cluster = cluster_of(
        async_config("cfg1", variant("blue", "m1", autoscaling=BACKLOG)),
        settings={"async": {"redis": {"url": url}}},
    )
    cluster.step()
    scaled = cluster.of("ScaledObject", OLD)
    assert "s3cret" not in json.dumps(scaled)
    metadata = scaled["spec"]["triggers"][0]["metadata"]
    assert metadata["address"] == "redis.queues:6380"
    assert (metadata["passwordFromEnv"], metadata["usernameFromEnv"]) == (
        "BERTH_REDIS_PASSWORD",
        "BERTH_REDIS_USERNAME",
    )
    assert (metadata["enableTLS"], metadata["databaseIndex"]) == ("true", "2")
    env = env_of(containers(cluster.of("Deployment", OLD))[WORKER_CONTAINER])
    assert (env["BERTH_REDIS_PASSWORD"], env["BERTH_REDIS_USERNAME"]) == ("s3cret", "app")
    assert_admitted([scaled])


def test_a_secret_ref_gives_the_url_and_keda_its_parts() -> None:
    ref = {"name": "queue", "key": "url", "addressKey": "address", "passwordKey": "password"}
    cluster = cluster_of(
        async_config("cfg1", variant("blue", "m1", autoscaling=BACKLOG)),
        settings={"async": {"redis": {"secretRef": ref}}},
    )
    cluster.step()
    env = env_of(containers(cluster.of("Deployment", OLD))[WORKER_CONTAINER])
    assert env["BERTH_REDIS_URL"] == {"secretKeyRef": {"name": "queue", "key": "url"}}
    assert env["BERTH_REDIS_ADDRESS"] == {"secretKeyRef": {"name": "queue", "key": "address"}}
    assert env_of(containers(cluster.of("Deployment", "fraud-async"))["frontdoor"])["BERTH_REDIS_URL"] == {
        "secretKeyRef": {"name": "queue", "key": "url"}
    }
    metadata = cluster.of("ScaledObject", OLD)["spec"]["triggers"][1]["metadata"]
    assert (metadata["addressFromEnv"], metadata["passwordFromEnv"]) == (
        "BERTH_REDIS_ADDRESS",
        "BERTH_REDIS_PASSWORD",
    )
    assert "address" not in metadata


def test_a_secret_ref_without_an_address_cannot_scale_and_says_so() -> None:
    cluster = cluster_of(
        async_config("cfg1", variant("blue", "m1", autoscaling=BACKLOG)),
        settings={"async": {"redis": {"secretRef": {"name": "queue", "key": "url"}}}},
    )
    plan = cluster.step()
    assert cluster.names("ScaledObject") == []
    assert cluster.of("Deployment", OLD)["spec"]["replicas"] == 1
    assert plan.status.failure_reason and MSG_NO_ADDRESS_KEY in plan.status.failure_reason


def test_no_queue_in_the_settings_is_a_condition_not_a_crash_loop() -> None:
    cluster = cluster_of(async_config("cfg1", variant("blue", "m1")), settings={})
    plan = cluster.step()
    assert cluster.names("ConfigMap") == [] and "fraud-async" not in cluster.names("Deployment")
    assert list(containers(cluster.of("Deployment", OLD))) == ["server"]  # no worker to crash loop
    ready, degraded = condition(plan, "Ready"), condition(plan, "Degraded")
    assert (ready.status, ready.reason) == ("False", "AsyncQueueNotConfigured")
    assert (degraded.status, degraded.reason) == ("True", "AsyncQueueNotConfigured")
    assert plan.status.failure_reason == MSG_NO_REDIS
    assert condition(plan, "HasBacklogWithoutCapacity").status == "Unknown"


def test_backlog_in_status_and_backlog_without_capacity() -> None:
    cluster = cluster_of(async_config("cfg1", variant("blue", "m1", autoscaling=BACKLOG)))
    stream = stream_key(NAMESPACE, "fraud", "cfg1", "blue")
    cluster.step()
    cluster.of("Deployment", OLD)["spec"]["replicas"] = 0
    cluster.make_ready()
    cluster.queues[stream] = QueueState(size=5, pending=0, oldest_age_seconds=12.5)
    plan = cluster.step()
    [blue] = plan.status.production_variants
    assert (blue.backlog_size, blue.backlog_per_instance, blue.oldest_message_age_seconds) == (5, 5.0, 12.5)
    waiting = condition(plan, "HasBacklogWithoutCapacity")
    assert (waiting.status, waiting.reason) == ("True", "NoReadyReplica") and "cfg1/blue" in waiting.message
    assert plan.status.phase == "InService"  # a fleet at zero is in service; KEDA brings one up
    wire = plan.status.to_wire()["productionVariants"][0]
    assert wire["backlogSize"] == 5 and wire["oldestMessageAgeSeconds"] == 12.5
    # One replica ready: capacity for the backlog.
    cluster.of("Deployment", OLD)["spec"]["replicas"] = 2
    cluster.make_ready()
    cluster.queues[stream] = QueueState(size=6, pending=2, oldest_age_seconds=1.0)
    plan = cluster.step()
    assert plan.status.production_variants[0].backlog_per_instance == 3.0
    assert condition(plan, "HasBacklogWithoutCapacity").status == "False"


def test_an_unreachable_queue_is_a_condition() -> None:
    cluster = cluster_of(async_config("cfg1", variant("blue", "m1")))
    cluster.step()
    cluster.queue_error = "Error 111 connecting to redis.queues:6379. Connection refused."
    plan = cluster.step()
    assert condition(plan, "HasBacklogWithoutCapacity").status == "Unknown"
    degraded = condition(plan, "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "AsyncQueueUnreachable")
    assert "Connection refused" in degraded.message
    assert plan.status.production_variants[0].backlog_size is None
    assert plan.status.phase == "InService"  # the fleet still answers what it has


def rollout_cluster(**policy: Any) -> QueueCluster:
    deployment_config = {
        "blueGreen": {
            "trafficRouting": policy.pop(
                "routing", {"type": "Canary", "waitIntervalSeconds": 10, "canarySize": {"value": 20}}
            ),
            "terminationWaitSeconds": 5,
        },
        "autoRollback": {"maxErrorRatePercent": 10},
    }
    cluster = cluster_of(
        async_config("cfg1", variant("blue", "m1")),
        async_config("cfg2", variant("blue", "m2")),
        deploymentConfig=deployment_config,
    )
    cluster.step()
    assert cluster.step().status.phase == "InService"
    return cluster


def test_new_messages_follow_the_traffic_share_during_a_rollout() -> None:
    cluster = rollout_cluster()
    cluster.edit(endpointConfigName="cfg2")
    seen = []
    for _ in range(40):
        cluster.step()
        cluster.advance(1)
        shares = {(v.endpoint_config_name, v.weight) for v in cluster.routes().variants}
        weights = cluster.weights()
        assert shares == {("cfg1", weights.get(OLD, 0)), ("cfg2", weights.get(NEW, 0))} or shares == {
            ("cfg2", 1000)
        }, (shares, weights)
        seen.append(tuple(sorted(shares)))
    assert (("cfg1", 800), ("cfg2", 200)) in seen
    assert seen[-1] == (("cfg2", 1000),)
    assert cluster.endpoint.status is not None and cluster.endpoint.status.endpoint_config_name == "cfg2"


def test_the_old_fleet_drains_its_stream_before_it_goes() -> None:
    cluster = rollout_cluster(routing={"type": "AllAtOnce", "waitIntervalSeconds": 0})
    old_stream = stream_key(NAMESPACE, "fraud", "cfg1", "blue")
    cluster.queues[old_stream] = QueueState(size=3, pending=1, oldest_age_seconds=30)
    cluster.edit(endpointConfigName="cfg2")
    for _ in range(20):
        cluster.step()
        cluster.advance(1)
    status = cluster.endpoint.status
    assert status is not None and status.endpoint_config_name == "cfg2" and status.rollout is None
    assert status.draining_endpoint_config_names == ["cfg1"]
    assert OLD in cluster.names("Deployment") and cluster.of("Deployment", OLD)["spec"]["replicas"] >= 1
    assert [v.endpoint_config_name for v in cluster.routes().variants] == ["cfg2"]  # nothing new queued there
    assert cluster.weights() == {NEW: 1000}
    # The operator reads the draining stream too.
    assert old_stream in streams_to_observe(cluster.endpoint, cluster.configs)
    plan = cluster.step()
    assert plan.requeue_after is not None and plan.requeue_after <= 10
    cluster.queues[old_stream] = QueueState()
    cluster.step()
    assert OLD not in cluster.names("Deployment")
    assert (
        cluster.endpoint.status is not None and cluster.endpoint.status.draining_endpoint_config_names == []
    )


def test_auto_rollback_on_the_new_fleets_failure_share() -> None:
    cluster = rollout_cluster()
    cluster.edit(endpointConfigName="cfg2")
    new_stream = stream_key(NAMESPACE, "fraud", "cfg2", "blue")
    for _ in range(5):
        cluster.step()
        cluster.advance(1)
    assert cluster.endpoint.status is not None and cluster.endpoint.status.rollout is not None
    cluster.queues[new_stream] = QueueState(size=2, counts={"succeeded": 8, "failed": 4, "expired": 1})
    plan = cluster.step()
    status = plan.status
    assert status.last_rollback is not None, status
    assert "failed 33.3% > 10%" in status.last_rollback.reason
    # The rolled-back fleet still has two messages: it drains them, the route is all on cfg1.
    cluster.step()
    assert cluster.endpoint.status is not None
    assert cluster.endpoint.status.draining_endpoint_config_names == ["cfg2"]
    assert [v.endpoint_config_name for v in cluster.routes().variants] == ["cfg1"]


def test_ingress_mode_gives_the_front_door_its_own_ingress() -> None:
    settings = {**REDIS, "routing": {"mode": "ingress"}}
    cluster = cluster_of(async_config("cfg1", variant("blue", "m1")), settings=settings)
    cluster.step()
    ingress = cluster.of("Ingress", "fraud-async-invocations")
    [path] = ingress["spec"]["rules"][0]["http"]["paths"]
    assert path["path"] == "/endpoints/prod/fraud/async-invocations(/|$)(.*)"
    assert path["backend"]["service"]["name"] == "fraud-async"
    assert (
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/rewrite-target"]
        == "/async-invocations$1$2"
    )


def test_streams_to_observe_are_the_async_configs_variants() -> None:
    cluster = cluster_of(async_config("cfg1", variant("blue", "m1"), variant("green", "m2")))
    assert streams_to_observe(cluster.endpoint, cluster.configs) == sorted(
        stream_key(NAMESPACE, "fraud", "cfg1", name) for name in ("blue", "green")
    )


def test_render_prints_the_example_and_every_object_is_admitted() -> None:
    example = REPO / "examples" / "async"
    settings = load_settings(example / "cluster-settings.yaml")
    objects = render_objects([example], settings)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Deployment",
        "HTTPRoute",
        "NetworkPolicy",
        "ScaledObject",
        "Service",
        "Service",
    ]
    assert_admitted(objects)
    pods = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] != "iris-async-async"]
    assert [c["name"] for c in pods[0]["spec"]["template"]["spec"]["containers"]] == [
        "server",
        WORKER_CONTAINER,
    ]
    with pytest.raises(RenderError, match="asyncInferenceConfig needs a queue"):
        render_objects([example], Settings())


def test_settings_file_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(
        yaml.safe_dump({"async": {"redis": {"url": "redis://a:1", "secretRef": {"name": "s", "key": "k"}}}})
    )
    with pytest.raises(SettingsError, match=r"async\.redis: .*give url or secretRef, not both"):
        load_settings(path)
    path.write_text(yaml.safe_dump({"async": {"redis": {"url": "http://a:1"}}}))
    with pytest.raises(SettingsError, match=r"async\.redis\.url"):
        load_settings(path)


def test_long_names_stay_valid_and_distinct() -> None:
    from berth_operator.planner.names import async_frontdoor_name, async_ingress_name, async_routes_name

    long = "a" * 200 + ".fraud"
    names = {async_frontdoor_name(long), async_routes_name(long), async_ingress_name(long)}
    assert len(names) == 3 and all(len(n) <= 63 for n in names)
    cfg = async_config("c" * 200, variant("v" * 60, "m1"))
    cluster = QueueCluster(
        endpoint(cfg.name, name=long),
        {cfg.name: cfg},
        {"m1": model("m1")},
        settings=Settings.model_validate(REDIS),
    )
    plan = cluster.step()
    assert_admitted(plan.objects)
    assert plan.status.failure_reason is None


@pytest.mark.parametrize(
    ("policy", "seed"),
    [
        ({"type": "AllAtOnce", "waitIntervalSeconds": 2}, 11),
        ({"type": "Canary", "waitIntervalSeconds": 3, "canarySize": {"value": 20}}, 12),
        ({"type": "Linear", "waitIntervalSeconds": 1, "linearStepSize": {"value": 34}}, 13),
    ],
)
def test_random_walk_never_drops_queued_messages(policy: dict[str, Any], seed: int) -> None:
    """Edits, readiness, queue contents and outages at random; at every step: the plan is pure, the
    front door's weights are the route's, and no async fleet holding messages loses its Deployment."""
    import copy
    import random

    from berth_operator.planner import PlanInput, plan_endpoint

    from .support import config as realtime_config

    rng = random.Random(seed)
    configs = {
        "cfg1": async_config("cfg1", variant("blue", "m1", autoscaling=BACKLOG)),
        "cfg2": async_config("cfg2", variant("blue", "m2"), variant("green", "m2", initialVariantWeight=2)),
        "cfg3": realtime_config("cfg3", variant("red", "m1")),
    }
    deployment_config = {
        "blueGreen": {
            "trafficRouting": policy,
            "terminationWaitSeconds": 3,
            "maximumExecutionTimeoutSeconds": 60,
        },
        "autoRollback": {"maxErrorRatePercent": 20},
    }
    cluster = QueueCluster(
        endpoint("cfg1", deploymentConfig=deployment_config),
        configs,
        {"m1": model("m1"), "m2": model("m2")},
        settings=Settings.model_validate(REDIS),
    )
    streams = [
        stream_key(NAMESPACE, "fraud", name, v.variant_name)
        for name, cfg in configs.items()
        if cfg.spec.async_inference_config is not None
        for v in cfg.spec.production_variants
    ]
    seen: set[str] = set()
    for _ in range(200):
        action = rng.random()
        if action < 0.07:
            cluster.edit(endpointConfigName=rng.choice(sorted(configs)))
        elif action < 0.30:
            stream = rng.choice(streams)
            size = rng.choice([0, 0, 1, 5])
            counts = {"succeeded": rng.choice([0, 20]), "failed": rng.choice([0, 0, 10])}
            cluster.queues[stream] = QueueState(size=size, pending=min(size, 1), counts=counts)
        elif action < 0.33:
            cluster.queue_error = rng.choice([None, None, "Connection refused"])
        elif action < 0.38:
            names = sorted(n for k, n in cluster.objects if k == "Deployment")
            if names:
                cluster.objects[("Deployment", rng.choice(names))]["status"] = {"readyReplicas": 0}
        cluster.advance(rng.choice([0.5, 1, 2, 4]))

        observed = cluster.observed()
        inp = PlanInput(cluster.endpoint, cluster.configs, cluster.models, cluster.settings, observed)
        untouched = copy.deepcopy(observed)
        plan = plan_endpoint(inp)
        assert plan_endpoint(inp) == plan and inp.observed == untouched
        deleted = {(ref.kind, ref.name) for ref in plan.delete}
        for name, cfg in configs.items():
            if cfg.spec.async_inference_config is None:
                continue
            for v in cfg.spec.production_variants:
                stream = stream_key(NAMESPACE, "fraud", name, v.variant_name)
                holds = observed.queue_error is not None or observed.queues.get(stream, QueueState()).size > 0
                deployment = ("Deployment", f"fraud-{name}-{v.variant_name}")
                if holds and deployment in cluster.objects:
                    assert deployment not in deleted, f"{deployment} deleted with messages on {stream}"
        cluster.apply(plan)
        cluster.make_ready()
        seen.update(e.reason for e in plan.events)
        if plan.status.draining_endpoint_config_names:
            seen.add("Draining")
        weights = cluster.weights()
        assert not weights or sum(weights.values()) == 1000
        if ("ConfigMap", "fraud-async-routes") in cluster.objects:
            for route in cluster.routes().variants:
                service = f"fraud-{route.endpoint_config_name}-{route.variant_name}"
                assert route.weight == weights.get(service, 0), (route, weights)
    assert_admitted(list(cluster.objects.values()))
    assert {"RolloutStarted", "TrafficShifted", "Draining"} <= seen, seen


def test_a_front_door_that_cannot_start_is_named_in_the_status() -> None:
    cluster = cluster_of(async_config("cfg1", variant("blue", "m1")))
    cluster.step()
    door = cluster.of("Deployment", "fraud-async")
    cluster.pods = [
        {
            "metadata": {"name": "fraud-async-1", "labels": door["spec"]["template"]["metadata"]["labels"]},
            "status": {
                "containerStatuses": [
                    {
                        "name": "frontdoor",
                        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such tag"}},
                    }
                ]
            },
        }
    ]
    plan = cluster.step()
    assert plan.status.failure_reason == "async front door: frontdoor: ImagePullBackOff: no such tag"
    assert plan.status.rollout is None and plan.status.last_rollback is None


def test_a_rollout_in_ingress_mode_reads_the_split_without_the_front_doors_ingress() -> None:
    settings = {**REDIS, "routing": {"mode": "ingress"}}
    policy = {
        "blueGreen": {
            "trafficRouting": {"type": "Canary", "waitIntervalSeconds": 5, "canarySize": {"value": 20}}
        }
    }
    cluster = cluster_of(
        async_config("cfg1", variant("blue", "m1")),
        async_config("cfg2", variant("blue", "m2")),
        settings=settings,
        deploymentConfig=policy,
    )
    cluster.step()
    cluster.step()
    cluster.edit(endpointConfigName="cfg2")
    shares = []
    for _ in range(80):
        plan = cluster.step()
        cluster.advance(1)
        if plan.status.rollout is not None:
            shares.append(plan.status.rollout.traffic_shifted_percent)
        assert not any(e.reason == "RolloutResumed" for e in plan.events), plan.events
    assert 20 in shares and shares == sorted(shares)
    status = cluster.endpoint.status
    assert status is not None and status.endpoint_config_name == "cfg2"
    assert [v.endpoint_config_name for v in cluster.routes().variants] == ["cfg2"]
    assert "fraud-async-invocations" in cluster.names("Ingress")


def test_the_observed_split_leaves_the_front_doors_ingress_out() -> None:
    from berth_operator.planner.observe import observed_split

    settings = {**REDIS, "routing": {"mode": "ingress"}}
    cluster = cluster_of(async_config("cfg1", variant("blue", "m1")), settings=settings)
    cluster.step()
    ingresses = [o for (kind, _), o in sorted(cluster.objects.items()) if kind == "Ingress"]
    assert [i["metadata"]["name"] for i in ingresses] == ["fraud", "fraud-async-invocations"]
    assert observed_split(ingresses) == {OLD: 1000}
    assert observed_split(ingresses[::-1]) == {OLD: 1000}

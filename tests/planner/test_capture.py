"""Data capture in the planner: every variant's server is told BERTH_CAPTURE from the
EndpointConfig's dataCapture, marked realtime, shadow or async, and a Model's env cannot
silence it; CaptureDegraded says when the serving fleet drops captured events."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from berth_operator.api import EndpointConfig
from berth_operator.planner.capture import CAPTURE_ENV, capture_settings
from berth_operator.planner.fleet import VariantPlan
from berth_operator.planner.fleetmetrics import fleets_to_scrape, from_texts
from berth_operator.planner.types import FleetMetrics

from .support import NAMESPACE, Cluster, endpoint, model, variant

CAPTURE = {
    "samplingPercentage": 20,
    "destinationUri": "s3://bucket/capture/",
    "captureModes": ["Input"],
    "textContentTypes": ["text/csv"],
}


def capturing_config(capture: dict[str, Any] | None = CAPTURE, **extra: Any) -> EndpointConfig:
    spec: dict[str, Any] = {
        "productionVariants": [variant("blue", "m1")],
        "shadowProductionVariants": [variant("shade", "m1")],
        **extra,
    }
    if capture is not None:
        spec["dataCapture"] = capture
    return EndpointConfig.model_validate(
        {"kind": "EndpointConfig", "metadata": {"name": "cfg1", "namespace": NAMESPACE}, "spec": spec}
    )


def server_env(cluster: Cluster, name: str) -> dict[str, str]:
    pod = cluster.objects[("Deployment", name)]["spec"]["template"]["spec"]
    [server] = [c for c in pod["containers"] if c["name"] == "server"]
    return {e["name"]: e.get("value", "") for e in server.get("env", [])}


def planned(config: EndpointConfig, **model_spec: Any) -> Cluster:
    cluster = Cluster(endpoint("cfg1"), {"cfg1": config}, {"m1": model("m1", **model_spec)})
    for _ in range(3):
        cluster.step()
    return cluster


def test_every_variant_is_told_what_to_capture_and_where_its_traffic_came_from() -> None:
    cluster = planned(capturing_config())
    blue = json.loads(server_env(cluster, "fraud-cfg1-blue")[CAPTURE_ENV])
    shade = json.loads(server_env(cluster, "fraud-cfg1-shade")[CAPTURE_ENV])
    assert blue == {
        "destinationUri": "s3://bucket/capture/",
        "endpoint": "fraud",
        "variant": "blue",
        "samplingPercentage": 20.0,
        "captureModes": ["Input"],
        "textContentTypes": ["text/csv"],
        "source": "realtime",
        "maxFileBytes": 16 * 1024 * 1024,
        "maxFileAgeSeconds": 60,
    }
    assert shade == {**blue, "variant": "shade", "source": "shadow"}


def test_no_data_capture_or_zero_percent_tells_the_server_nothing() -> None:
    for config in (capturing_config(None), capturing_config({**CAPTURE, "samplingPercentage": 0})):
        cluster = planned(config)
        assert CAPTURE_ENV not in server_env(cluster, "fraud-cfg1-blue")


def server_env_from(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    pod = cluster.objects[("Deployment", name)]["spec"]["template"]["spec"]
    [server] = [c for c in pod["containers"] if c["name"] == "server"]
    return list(server.get("envFrom") or [])


def test_the_captures_secret_is_the_servers_environment_only_while_it_captures() -> None:
    with_secret = {**CAPTURE, "credentialsSecretRef": {"name": "capture-s3"}}
    cluster = planned(capturing_config(with_secret))
    for name in ("fraud-cfg1-blue", "fraud-cfg1-shade"):
        assert server_env_from(cluster, name) == [{"secretRef": {"name": "capture-s3"}}]
    # The Model's own Secret stays with the storage-initializer of a single-model server.
    cluster = planned(capturing_config(with_secret), credentialsSecretRef={"name": "models-s3"})
    assert server_env_from(cluster, "fraud-cfg1-blue") == [{"secretRef": {"name": "capture-s3"}}]
    cluster = planned(capturing_config({**with_secret, "samplingPercentage": 0}))
    assert server_env_from(cluster, "fraud-cfg1-blue") == []


def test_a_models_env_cannot_silence_the_configs_capture() -> None:
    cluster = planned(capturing_config(), env=[{"name": CAPTURE_ENV, "value": "{}"}])
    env = server_env(cluster, "fraud-cfg1-blue")
    assert json.loads(env[CAPTURE_ENV])["samplingPercentage"] == 20.0


def test_an_async_fleets_replicas_mark_their_captures_async() -> None:
    # Every request an async replica answers was taken off the queue by the worker beside it.
    config = capturing_config(shadowProductionVariants=[])
    plan = VariantPlan(
        endpoint="fraud",
        config="cfg1",
        spec=config.spec.production_variants[0],
        model=model("m1"),
        instance_type=None,  # type: ignore[arg-type]  # capture settings do not read it
        shadow=False,
        weight=1.0,
        replicas=1,
        autoscaling=None,
        data_capture=config.spec.data_capture,
    )
    assert (capture_settings(plan) or {})["source"] == "realtime"
    async_config = EndpointConfig.model_validate(
        {
            "kind": "EndpointConfig",
            "metadata": {"name": "a", "namespace": NAMESPACE},
            "spec": {
                "productionVariants": [variant("blue", "m1")],
                "asyncInferenceConfig": {"outputConfig": {"outputUri": "s3://bucket/out/"}},
            },
        }
    ).spec.async_inference_config
    assert (capture_settings(replace(plan, async_config=async_config)) or {})["source"] == "async"


def degraded(cluster: Cluster) -> tuple[str, str] | None:
    status = cluster.endpoint.status
    assert status is not None
    found = next((c for c in status.conditions if c.type == "CaptureDegraded"), None)
    return (found.status, found.reason) if found is not None else None


def test_capture_degraded_while_the_serving_fleets_drops_grow() -> None:
    cluster = planned(capturing_config())
    assert degraded(cluster) is None  # not scraped yet: nothing to say
    cluster.metrics = {"cfg1": FleetMetrics(requests=100, capture_dropped=0)}
    cluster.step()
    assert degraded(cluster) == ("False", "AsExpected")
    cluster.metrics = {"cfg1": FleetMetrics(requests=200, capture_dropped=7)}
    plan = cluster.step()
    assert degraded(cluster) == ("True", "EventsDropped")
    assert plan.status.capture_dropped_total == 7
    message = next(c.message for c in plan.status.conditions if c.type == "CaptureDegraded")
    assert message.startswith("7 captured events dropped")
    cluster.step()  # the same count: no new drop since the last look
    assert degraded(cluster) == ("False", "AsExpected")
    cluster.metrics = {"cfg1": FleetMetrics(requests=10, capture_dropped=2)}  # replicas restarted
    cluster.step()
    assert degraded(cluster) == ("True", "EventsDropped")
    cluster.metrics = {}  # not scraped this time: the status keeps what it said
    cluster.step()
    assert degraded(cluster) == ("True", "EventsDropped")


def test_no_capture_degraded_condition_without_data_capture() -> None:
    cluster = planned(capturing_config(None))
    cluster.metrics = {"cfg1": FleetMetrics(requests=100, capture_dropped=5)}
    cluster.step()
    assert degraded(cluster) is None


def test_the_serving_fleet_is_scraped_only_while_it_captures() -> None:
    cluster = planned(capturing_config())
    assert fleets_to_scrape(cluster.endpoint.status, {"cfg1": capturing_config()}) == ["cfg1"]
    assert fleets_to_scrape(cluster.endpoint.status, {"cfg1": capturing_config(None)}) == []


def test_drops_are_summed_over_the_replicas_metrics() -> None:
    text = (
        'berth_capture_dropped_total{variant="blue",reason="buffer_full"} 3.0\n'
        'berth_capture_dropped_total{variant="blue",reason="upload_failed"} 4.0\n'
    )
    assert from_texts([text, text]).capture_dropped == 14

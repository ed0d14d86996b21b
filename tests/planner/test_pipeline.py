"""Inference pipelines in the planner: a pipeline Model's pods (a storage-initializer per ONNX stage
into its own directory, the server told BERTH_PIPELINE, each image stage a native sidecar with its
share of the instance type), the same pods for async, serverless and batch transform, rollouts to
and from a pipeline, and failures that name the stage."""

from __future__ import annotations

import random
from typing import Any

import pytest
from berth_operator.api import EndpointConfig, Model
from berth_operator.planner import Plan
from berth_operator.planner import labels as L
from berth_operator.planner import pipeline as P
from berth_operator.planner.asyncinf import WORKER_CONTAINER
from berth_operator.planner.transform import TransformObserved, plan_transform_job
from berth_operator.quantity import to_bytes
from berth_operator.settings import Settings
from berth_serving.cli import serve
from berth_serving.config import ENV, PipelineStage, pipeline_from_json
from berth_serving.transform.cli import transform as transform_command

from .support import EPOCH, NAMESPACE, Cluster, config, endpoint, model, variant
from .validation import assert_admitted

SHA = "ab" * 32
OBJECT = "fraud-cfg1-blue"
SCALER = {"modelUri": "s3://models/risk/scaler.onnx", "sha256": SHA}
CLASSIFIER = {
    "name": "classify",
    "modelUri": "s3://models/risk/classifier.tar.gz",
    "outputs": ["probabilities"],
}
POSTPROCESS = {
    "name": "post",
    "image": "registry.example.com/postprocess:1",
    "port": 8081,
    "env": [{"name": "MODE", "value": "percent"}],
}
ALL_AT_ONCE = {
    "blueGreen": {
        "trafficRouting": {"type": "AllAtOnce", "waitIntervalSeconds": 0},
        "terminationWaitSeconds": 0,
    }
}


def risk(*stages: dict[str, Any], **spec: Any) -> Model:
    return Model.model_validate(
        {
            "kind": "Model",
            "metadata": {"name": "risk", "namespace": NAMESPACE},
            "spec": {"pipeline": list(stages or (SCALER, CLASSIFIER, POSTPROCESS)), **spec},
        }
    )


def cluster_of(
    *configs: EndpointConfig,
    models: dict[str, Model] | None = None,
    settings: dict[str, Any] | None = None,
    **spec: Any,
) -> Cluster:
    return Cluster(
        endpoint(configs[0].name, **spec),
        {c.name: c for c in configs},
        models or {"risk": risk(credentialsSecretRef={"name": "s3-creds"}), "m1": model("m1")},
        settings=Settings.model_validate(settings or {}),
    )


def in_service(cluster: Cluster) -> Plan:
    plan = cluster.step()
    for _ in range(3):
        plan = cluster.step()
    assert plan.status.phase == "InService", plan.status.failure_reason
    return plan


def pod_of(cluster: Cluster, name: str = OBJECT) -> dict[str, Any]:
    return cluster.objects[("Deployment", name)]["spec"]["template"]["spec"]


def named(containers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in containers}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# ---------------------------------------------------------------- serving pods


def test_a_pipeline_variant_fetches_each_onnx_stage_and_runs_the_image_stage_beside_the_server() -> None:
    cluster = cluster_of(config("cfg1", variant("blue", "risk")))
    in_service(cluster)
    pod = pod_of(cluster)
    init = pod["initContainers"]
    assert [c["name"] for c in init] == [
        "storage-initializer-stage-1",
        "storage-initializer-classify",
        "stage-post",
    ]
    scale, classify, post = init
    size = str(to_bytes("10Gi"))
    assert scale["args"] == [
        "fetch-model",
        SCALER["modelUri"],
        "/mnt/models/stage-1",
        "--max-bytes",
        size,
        "--sha256",
        SHA,
    ]
    assert classify["args"] == [
        "fetch-model",
        CLASSIFIER["modelUri"],
        "/mnt/models/classify",
        "--max-bytes",
        size,
    ]
    for fetch in (scale, classify):  # each with the Model's storage credentials, as a model's
        assert fetch["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
        assert "restartPolicy" not in fetch
    # The image stage: a native sidecar, started before the server and stopped after it.
    assert post["image"] == POSTPROCESS["image"]
    assert post["restartPolicy"] == "Always"
    assert post["ports"] == [{"containerPort": 8081, "protocol": "TCP"}]
    assert env_of(post) == {"MODE": "percent"}  # its own env only: no credentials, no BERTH_*
    assert "envFrom" not in post
    for probe in ("startupProbe", "readinessProbe"):
        assert post[probe]["httpGet"] == {"path": "/ping", "port": 8081}
    assert post["startupProbe"]["failureThreshold"] * post["startupProbe"]["periodSeconds"] == 600
    assert "livenessProbe" not in post
    [server] = pod["containers"]
    assert (server["name"], server["command"], server["args"]) == ("server", ["berth"], ["serve"])
    env = env_of(server)
    assert ENV["model_uri"] not in env and ENV["sha256"] not in env
    assert env[ENV["model_name"]] == "risk"
    # The fetched directories (already checked against their sha256) and the sidecar on loopback.
    assert pipeline_from_json(env[ENV["pipeline"]]) == (
        PipelineStage("stage-1", model_uri="/mnt/models/stage-1"),
        PipelineStage("classify", model_uri="/mnt/models/classify", outputs=("probabilities",)),
        PipelineStage("post", url="http://127.0.0.1:8081"),
    )
    assert {"name": "model", "mountPath": "/mnt/models", "readOnly": True} in server["volumeMounts"]


def test_the_pods_command_line_and_env_parse_with_the_real_berth_serve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = cluster_of(config("cfg1", variant("blue", "risk")))
    in_service(cluster)
    [server] = pod_of(cluster)["containers"]
    for name, value in env_of(server).items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    params = serve.make_context("serve", server["args"][1:]).params
    assert params["model_uri"] == ""  # with --pipeline the MODEL_URI argument must be empty
    assert [s.name for s in pipeline_from_json(params["pipeline"])] == ["stage-1", "classify", "post"]
    assert params["model_name"] == "risk"


def test_a_pipeline_of_onnx_stages_has_no_sidecar_and_the_server_keeps_the_whole_type() -> None:
    models = {"risk": risk(SCALER, CLASSIFIER)}
    cluster = cluster_of(config("cfg1", variant("blue", "risk")), models=models)
    in_service(cluster)
    pod = pod_of(cluster)
    assert [c["name"] for c in pod["initContainers"]] == [
        "storage-initializer-stage-1",
        "storage-initializer-classify",
    ]
    [server] = pod["containers"]
    assert server["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}


def test_image_stages_share_the_instance_type_with_the_server() -> None:
    stages = (SCALER, POSTPROCESS, {"name": "explain", "image": "acme/explain:1", "port": 9000})
    models = {"risk": risk(*stages)}
    cluster = cluster_of(config("cfg1", variant("blue", "risk", instanceType="cpu-large")), models=models)
    in_service(cluster)
    pod = pod_of(cluster)
    sidecars = [c for c in pod["initContainers"] if c.get("restartPolicy") == "Always"]
    [server] = pod["containers"]
    # cpu-large is 4 CPUs and 8Gi: a third each, the server's share covering its one ONNX stage.
    for sidecar in sidecars:
        assert sidecar["resources"] == {
            "requests": {"cpu": "1333m", "memory": "2730Mi"},
            "limits": {"cpu": "1333m", "memory": "2730Mi"},
        }
    assert server["resources"]["requests"] == {
        "cpu": "1334m",
        "ephemeral-storage": "11Gi",
        "memory": "2732Mi",
    }
    assert server["resources"]["limits"] == {"cpu": "1334m", "memory": "2732Mi"}


def test_a_gpu_stays_with_the_server_and_the_variants_override_is_shared() -> None:
    models = {"risk": risk(SCALER, POSTPROCESS)}
    resources = {"requests": {"cpu": "3", "memory": "6Gi"}, "limits": {"memory": "6Gi", "nvidia.com/gpu": 1}}
    cluster = cluster_of(
        config("cfg1", variant("blue", "risk", instanceType="gpu-small", resources=resources)), models=models
    )
    in_service(cluster)
    pod = pod_of(cluster)
    [post] = [c for c in pod["initContainers"] if c["name"] == "stage-post"]
    [server] = pod["containers"]
    assert post["resources"] == {"requests": {"cpu": "1500m", "memory": "3Gi"}, "limits": {"memory": "3Gi"}}
    assert server["resources"]["limits"] == {"memory": "3Gi", "nvidia.com/gpu": "1"}
    assert server["resources"]["requests"]["cpu"] == "1500m"
    assert server["image"] == Settings().images.gpu


@pytest.mark.parametrize("seed", range(5))
def test_shares_add_up_and_no_request_exceeds_its_limit(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        count = rng.randint(2, 15)
        images = rng.randint(1, count - 1)
        stages = [{"modelUri": "s3://m/0.onnx"}] + [
            {"image": "acme/x:1", "port": 10000 + i} if i <= images else {"modelUri": f"s3://m/{i}.onnx"}
            for i in range(1, count)
        ]
        spec = risk(*stages).spec
        request_cpu, limit_cpu = sorted(rng.randint(1, 64_000) for _ in range(2))
        request_memory, limit_memory = sorted(rng.randint(1, 64 * 1024**3) for _ in range(2))
        quantities = {
            "requests": {"cpu": f"{request_cpu}m", "memory": request_memory},
            "limits": {"cpu": f"{limit_cpu}m", "memory": limit_memory},
        }
        share = P.stage_quantities(quantities, spec)
        server = P.server_quantities(quantities, spec)
        for part, totals in (
            ("requests", (request_cpu, request_memory)),
            ("limits", (limit_cpu, limit_memory)),
        ):
            cpu = _milli(server[part]["cpu"]) + images * _milli(share[part]["cpu"])
            memory = to_bytes(server[part]["memory"]) + images * to_bytes(share[part]["memory"])
            assert cpu <= totals[0] and memory <= totals[1]
            assert _milli(share[part]["cpu"]) >= 0 and to_bytes(share[part]["memory"]) >= 0
        for key, amount in (("cpu", _milli), ("memory", to_bytes)):
            assert amount(server["requests"][key]) <= amount(server["limits"][key])
            assert amount(share["requests"][key]) <= amount(share["limits"][key])


def _milli(value: Any) -> int:
    text = str(value)
    return int(text[:-1]) if text.endswith("m") else int(text) * 1000


def test_stages_on_two_claims_and_the_node_cache() -> None:
    stages = (
        {"modelUri": "pvc://store-a/scaler.onnx", "sha256": SHA},
        {"name": "classify", "modelUri": "pvc://store-b/classifier.onnx"},
        {"name": "again", "modelUri": "pvc://store-a/other.onnx"},
    )
    settings = {"modelCache": {"volume": {"hostPath": {"path": "/var/cache/berth"}}}}
    cluster = cluster_of(
        config("cfg1", variant("blue", "risk")), models={"risk": risk(*stages)}, settings=settings
    )
    in_service(cluster)
    pod = pod_of(cluster)
    volumes = named(pod["volumes"])
    assert volumes["pvc"]["persistentVolumeClaim"] == {"claimName": "store-a", "readOnly": True}
    assert volumes["pvc-2"]["persistentVolumeClaim"] == {"claimName": "store-b", "readOnly": True}
    assert "model-cache" in volumes
    init = named(pod["initContainers"])
    mounts = {name: {m["name"]: m["mountPath"] for m in c["volumeMounts"]} for name, c in init.items()}
    assert mounts["storage-initializer-stage-1"]["pvc"] == "/mnt/pvc/store-a"
    assert mounts["storage-initializer-classify"]["pvc-2"] == "/mnt/pvc/store-b"
    assert mounts["storage-initializer-again"]["pvc"] == "/mnt/pvc/store-a"
    # The node-local cache is keyed by sha256: only the stage that has one uses it.
    assert init["storage-initializer-stage-1"]["args"][-2:] == ["--cache-dir", "/var/cache/berth/models"]
    assert "model-cache" in mounts["storage-initializer-stage-1"]
    assert "--cache-dir" not in init["storage-initializer-classify"]["args"]
    assert "model-cache" not in mounts["storage-initializer-classify"]


# ---------------------------------------------------------------- one model to everything else


def test_a_rollout_from_a_model_to_a_pipeline_and_back() -> None:
    cluster = cluster_of(
        config("cfg1", variant("blue", "m1")),
        config("cfg2", variant("blue", "risk")),
        deploymentConfig=ALL_AT_ONCE,
    )
    in_service(cluster)
    cluster.edit(endpointConfigName="cfg2")
    for _ in range(6):
        plan = cluster.step()
        cluster.advance(1)
    assert (plan.status.phase, plan.status.endpoint_config_name) == ("InService", "cfg2")
    assert "fraud-cfg2-blue" in cluster.names("Deployment") and OBJECT not in cluster.names("Deployment")
    assert "stage-post" in named(pod_of(cluster, "fraud-cfg2-blue")["initContainers"])
    assert (
        cluster.objects[("Deployment", "fraud-cfg2-blue")]["spec"]["template"]["metadata"]["labels"][L.MODEL]
        == "risk"
    )


def test_an_async_variant_of_a_pipeline_has_its_worker_and_its_stages() -> None:
    spec = {
        "productionVariants": [variant("blue", "risk")],
        "asyncInferenceConfig": {"outputConfig": {"outputUri": "s3://bucket/out/"}},
    }
    cfg = EndpointConfig.model_validate(
        {"kind": "EndpointConfig", "metadata": {"name": "cfg1", "namespace": NAMESPACE}, "spec": spec}
    )
    cluster = cluster_of(cfg, settings={"async": {"redis": {"url": "redis://redis.queues:6379"}}})
    in_service(cluster)
    pod = pod_of(cluster)
    assert [c["name"] for c in pod["containers"]] == ["server", WORKER_CONTAINER]
    assert "stage-post" in named(pod["initContainers"])
    assert ENV["pipeline"] in env_of(pod["containers"][0])


def test_a_serverless_variant_of_a_pipeline_scales_like_any_model() -> None:
    serverless = {"variantName": "blue", "modelName": "risk", "serverlessConfig": {"memorySizeInMB": 2048}}
    cluster = cluster_of(config("cfg1", serverless))
    plan = in_service(cluster)
    assert any(o["kind"] == "HTTPScaledObject" for o in plan.objects)
    pod = pod_of(cluster)
    [post] = [c for c in pod["initContainers"] if c["name"] == "stage-post"]
    # 2048 MB buys one CPU (planner/serverless.py), shared by three stages.
    assert post["resources"]["limits"] == {"cpu": "333m", "memory": "682Mi"}


# ---------------------------------------------------------------- failures name the stage


def failing_pod(**status: Any) -> dict[str, Any]:
    labels = {L.ENDPOINT: "fraud", L.ENDPOINT_CONFIG: "cfg1", L.VARIANT: "blue", L.MODEL: "risk"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p1", "namespace": NAMESPACE, "labels": labels},
        "status": status,
    }


def test_a_stage_that_cannot_be_fetched_is_named() -> None:
    cluster = cluster_of(config("cfg1", variant("blue", "risk")))
    cluster.auto_ready = False
    cluster.pods = [
        failing_pod(
            initContainerStatuses=[
                {"name": "storage-initializer-stage-1", "state": {"terminated": {"exitCode": 0}}},
                {
                    "name": "storage-initializer-classify",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {
                        "terminated": {"exitCode": 1, "message": "403 Forbidden from s3://models/risk"}
                    },
                },
            ]
        )
    ]
    plan = cluster.step()
    assert (
        plan.status.failure_reason
        == "model risk: download failed: stage classify: 403 Forbidden from s3://models/risk"
    )


def test_a_wiring_that_cannot_work_and_a_crashing_image_stage_are_said() -> None:
    wiring = (
        "stage 'classify' cannot feed stage 'widen': dimension 1 is 3, not 5;"
        " 'classify' gives probabilities float32[N,3], 'widen' takes probabilities float32[N,5]"
    )
    cluster = cluster_of(config("cfg1", variant("blue", "risk")))
    cluster.auto_ready = False
    cluster.pods = [
        failing_pod(
            containerStatuses=[
                {
                    "name": "server",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "message": wiring}},
                }
            ]
        )
    ]
    plan = cluster.step()
    assert plan.status.failure_reason == f"variant blue (model risk): server: CrashLoopBackOff: {wiring}"
    cluster.pods = [
        failing_pod(
            initContainerStatuses=[
                {"name": "storage-initializer-stage-1", "state": {"terminated": {"exitCode": 0}}},
                {"name": "storage-initializer-classify", "state": {"terminated": {"exitCode": 0}}},
                {
                    "name": "stage-post",
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}},
                },
            ]
        )
    ]
    plan = cluster.step()
    assert plan.status.failure_reason == "variant blue (model risk): stage-post: ImagePullBackOff: not found"


# ---------------------------------------------------------------- batch transform


def transform_job(**spec: Any) -> Any:
    from berth_operator.api import TransformJob

    body = {
        "modelName": "risk",
        "input": {"uri": "s3://data/in/"},
        "output": {"uri": "s3://data/out/"},
        "instanceType": "cpu-small",
        **spec,
    }
    return TransformJob.model_validate(
        {
            "kind": "TransformJob",
            "metadata": {"name": "score", "namespace": NAMESPACE, "uid": "u1", "generation": 1},
            "spec": body,
        }
    )


def test_a_transform_job_of_a_pipeline_has_the_same_fetches_and_sidecars() -> None:
    plan = plan_transform_job(transform_job(), risk(), Settings(), TransformObserved(now=EPOCH))
    assert plan.job is not None
    assert_admitted([plan.job])
    pod = plan.job["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == [
        "storage-initializer-stage-1",
        "storage-initializer-classify",
        "stage-post",
    ]
    assert pod["initContainers"][2]["restartPolicy"] == "Always"  # the pod completes with the transform
    [container] = pod["containers"]
    assert container["resources"]["limits"] == {"cpu": "667m", "memory": "1366Mi"}
    args = container["args"]
    assert args[:2] == ["transform", "--pipeline"] and "--model" not in args
    params = transform_command.make_context("transform", list(args[1:])).params
    assert params["model_uri"] == ""
    assert pipeline_from_json(params["pipeline"]) == (
        PipelineStage("stage-1", model_uri="/mnt/models/stage-1"),
        PipelineStage("classify", model_uri="/mnt/models/classify", outputs=("probabilities",)),
        PipelineStage("post", url="http://127.0.0.1:8081"),
    )


def test_a_transform_job_cannot_target_a_model_of_a_pipeline() -> None:
    plan = plan_transform_job(
        transform_job(targetModel="x.onnx"), risk(), Settings(), TransformObserved(now=EPOCH)
    )
    assert plan.job is None
    [failed] = [c for c in plan.status.conditions if c.type == "Failed"]
    assert failed.reason == "TargetModelUnexpected"
    assert "Model risk is a pipeline" in failed.message


def test_the_transform_pod_failure_names_the_stage() -> None:
    from berth_operator.planner.transform.status import pod_problem

    pod = {
        "status": {
            "initContainerStatuses": [
                {"name": "storage-initializer-stage-1", "state": {"terminated": {"exitCode": 0}}},
                {
                    "name": "storage-initializer-classify",
                    "state": {"terminated": {"exitCode": 1, "message": "no .onnx file"}},
                },
            ]
        }
    }
    assert pod_problem([pod], "risk") == "model risk: download failed: stage classify: no .onnx file"

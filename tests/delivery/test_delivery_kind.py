"""The kind quickstart and the e2e pipeline agree with each other, the chart and the API.

They cannot run here (no Docker, no cluster): these checks catch what would break them first.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import helm_python as helm
import pytest
import yaml
from berth_operator.api import RESOURCE_KINDS
from berth_operator.settings import load_settings

from tests.delivery.delivery_support import (
    CHART_DIR,
    REPO,
    by_kind,
    objects,
    one,
    render,
    rendered_settings,
    validate,
)

KIND_DIR = REPO / "examples" / "kind"
SCRIPTS = REPO / ".github" / "scripts"
WORKFLOWS = REPO / ".github" / "workflows"


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(KIND_DIR.glob("*.yaml"))
        if path.name != "values.yaml"
        for doc in load_all(path)
    ]


@pytest.fixture(scope="module")
def kind_values() -> dict[str, Any]:
    return dict(yaml.safe_load((KIND_DIR / "values.yaml").read_text()))


@pytest.fixture(scope="module")
def kind_chart(kind_values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART_DIR) as chart:
        return objects(render(chart, kind_values))


def test_kind_manifests_are_valid(manifests: list[dict[str, Any]]) -> None:
    kinds = set()
    for doc in manifests:
        kinds.add(doc["kind"])
        if doc["apiVersion"] == "berth.dev/v1alpha1":
            RESOURCE_KINDS[doc["kind"]].model_validate(doc)  # the same parsing as the operator
        elif doc["apiVersion"].startswith("gateway."):
            assert doc["kind"] in ("EnvoyProxy", "GatewayClass")
        else:
            validate(doc)
    assert {"Model", "EndpointConfig", "Endpoint", "Deployment", "Service", "Namespace"} <= kinds


def test_kind_values_render_and_load(kind_chart: list[dict[str, Any]], tmp_path: Path) -> None:
    for obj in kind_chart:
        validate(obj)
    path = tmp_path / "settings.yaml"
    path.write_text(rendered_settings(kind_chart))
    settings = load_settings(path)
    assert "kind-small" in settings.instance_types
    gateway = one(kind_chart, "Gateway")
    assert (gateway["metadata"]["name"], gateway["metadata"]["namespace"]) == (
        settings.routing.gateway.name,
        settings.routing.gateway.namespace,
    )


def test_configs_use_instance_types_of_the_kind_catalog(
    manifests: list[dict[str, Any]], kind_chart: list[dict[str, Any]], tmp_path: Path
) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(rendered_settings(kind_chart))
    catalog = load_settings(path).instance_types
    kind_config = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    worker_labels = next(n for n in kind_config["nodes"] if n["role"] == "worker")["labels"]
    for config in by_kind(manifests, "EndpointConfig"):
        for variant in config["spec"]["productionVariants"]:
            if "serverlessConfig" in variant:  # sized by its memory, placed anywhere
                continue
            instance = catalog[variant["instanceType"]]
            # Schedulable: the selector matches the kind worker's labels.
            assert instance.node_selector.items() <= worker_labels.items()


def test_models_point_at_the_model_store(manifests: list[dict[str, Any]]) -> None:
    spec = importlib.util.spec_from_file_location(
        "build_model", REPO / "examples" / "quickstart" / "build_model.py"
    )
    assert spec and spec.loader
    build_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_model)
    built = {f"{name}.onnx" for name in build_model.MODELS}

    store = next(d for d in by_kind(manifests, "Service") if d["metadata"]["name"] == "model-store")
    deployment = next(d for d in by_kind(manifests, "Deployment") if d["metadata"]["name"] == "model-store")
    port = store["spec"]["ports"][0]["port"]
    assert f"{port}" in deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    # The pipeline's stages: what e2e-pipeline.sh builds and adds to the store's ConfigMap.
    stages = {"scaler.onnx", "classifier.onnx", "postprocess.onnx"}
    pipeline_script = (SCRIPTS / "e2e-pipeline.sh").read_text()
    assert "examples/pipeline/build_models.py --out-dir /tmp/berth-pipeline" in pipeline_script
    assert all(f"--from-file=/tmp/berth-pipeline/{name}" in pipeline_script for name in sorted(stages))
    for model in by_kind(manifests, "Model"):
        for stage in model["spec"].get("pipeline") or []:
            assert urlsplit(stage["modelUri"]).path.lstrip("/") in stages, stage["modelUri"]
    for model in by_kind(manifests, "Model"):
        if "pipeline" in model["spec"]:
            uri = urlsplit(model["spec"]["pipeline"][0]["modelUri"])
            assert uri.hostname == f"model-store.{store['metadata']['namespace']}.svc.cluster.local"
            assert uri.port == port
            continue
        uri = urlsplit(model["spec"]["modelUri"])
        assert uri.scheme == "http"
        assert uri.hostname == f"model-store.{store['metadata']['namespace']}.svc.cluster.local"
        assert uri.port == port
        if model["spec"].get("mode") == "MultiModel":  # the store itself is the prefix
            assert uri.path == "/"
            script = (SCRIPTS / "e2e-multimodel.sh").read_text()
            assert all(f"invoke {name}" in script for name in sorted(built))
        else:
            assert uri.path.lstrip("/") in built
        assert model["metadata"]["namespace"] == store["metadata"]["namespace"]


def test_endpoint_references_resolve(manifests: list[dict[str, Any]]) -> None:
    models = {m["metadata"]["name"] for m in by_kind(manifests, "Model")}
    configs = {c["metadata"]["name"]: c for c in by_kind(manifests, "EndpointConfig")}
    for config in configs.values():
        assert {v["modelName"] for v in config["spec"]["productionVariants"]} <= models
    endpoints = by_kind(manifests, "Endpoint")
    assert {e["metadata"]["name"] for e in endpoints} == {
        "iris",
        "iris-async",
        "iris-serverless",
        "iris-many",
        "iris-watched",
        "risk-pipeline",
    }
    for endpoint in endpoints:
        assert endpoint["spec"]["endpointConfigName"] in configs
    scripts = "".join(
        (SCRIPTS / f"e2e-{name}.sh").read_text()
        for name in ("test", "async", "serverless", "multimodel", "monitoring", "pipeline")
    )
    for name in configs:
        assert name in scripts


def test_the_async_endpoint_has_its_queue_keda_and_storage(
    kind_values: dict[str, Any], manifests: list[dict[str, Any]]
) -> None:
    """The async e2e needs the chart's Valkey, KEDA (installed by e2e-install.sh) and an S3 the
    Model's Secret points the front door and the workers at."""
    assert kind_values["async"]["redis"]["deploy"]["enabled"] is True
    assert "kedacore/keda" in (SCRIPTS / "e2e-install.sh").read_text()
    model = next(m for m in by_kind(manifests, "Model") if m["metadata"]["name"] == "iris-async")
    secret = next(s for s in by_kind(manifests, "Secret") if s["metadata"]["name"] == "async-s3")
    assert model["spec"]["credentialsSecretRef"]["name"] == "async-s3"
    s3 = next(s for s in by_kind(manifests, "Service") if s["metadata"]["name"] == "s3")
    endpoint_url = urlsplit(secret["stringData"]["AWS_ENDPOINT_URL"])
    assert endpoint_url.hostname == f"s3.{s3['metadata']['namespace']}.svc.cluster.local"
    assert endpoint_url.port == s3["spec"]["ports"][0]["port"]
    config = next(c for c in by_kind(manifests, "EndpointConfig") if "asyncInferenceConfig" in c["spec"])
    bucket = urlsplit(config["spec"]["asyncInferenceConfig"]["outputConfig"]["outputUri"]).hostname
    assert f"Bucket='{bucket}'" in (SCRIPTS / "e2e-async.sh").read_text()
    workflow = (WORKFLOWS / "e2e.yml").read_text()
    assert workflow.index("e2e-async.sh") < workflow.index("e2e-test.sh")  # before the uninstall


def test_the_serverless_endpoint_goes_through_the_http_add_on(manifests: list[dict[str, Any]]) -> None:
    """e2e-install.sh installs the KEDA HTTP add-on whose interceptor the chart's default settings
    name; the serverless e2e runs before the uninstall."""
    from berth_operator.settings import Settings

    install = (SCRIPTS / "e2e-install.sh").read_text()
    assert "kedacore/keda-add-ons-http" in install
    interceptor = Settings().serverless.interceptor
    assert f"-n {interceptor.namespace} get service {interceptor.name}" in install
    config = next(
        c for c in by_kind(manifests, "EndpointConfig") if c["metadata"]["name"] == "iris-serverless-v1"
    )
    assert "serverlessConfig" in config["spec"]["productionVariants"][0]
    workflow = (WORKFLOWS / "e2e.yml").read_text()
    assert (
        workflow.index("e2e-async.sh") < workflow.index("e2e-serverless.sh") < workflow.index("e2e-test.sh")
    )


def test_gateway_port_path(kind_values: dict[str, Any], manifests: list[dict[str, Any]]) -> None:
    """NodePort of the Envoy Service -> kind extraPortMapping -> the host port in publicUrl."""
    proxy = one(manifests, "EnvoyProxy")
    service = proxy["spec"]["provider"]["kubernetes"]["envoyService"]
    node_port = service["patch"]["value"]["spec"]["ports"][0]["nodePort"]
    assert service["type"] == "NodePort" and service["externalTrafficPolicy"] == "Cluster"
    assert service["patch"]["value"]["spec"]["ports"][0]["port"] == kind_values["gateway"]["port"]
    kind_config = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    control_plane = next(n for n in kind_config["nodes"] if n["role"] == "control-plane")
    assert control_plane["labels"]["ingress-ready"] == "true"
    mapping = next(m for m in control_plane["extraPortMappings"] if m["containerPort"] == node_port)
    public = urlsplit(kind_values["settings"]["routing"]["publicUrl"])
    assert (public.hostname, public.port) == ("localhost", mapping["hostPort"])
    gateway_class = one(manifests, "GatewayClass")
    assert gateway_class["metadata"]["name"] == kind_values["gateway"]["className"]
    assert gateway_class["spec"]["parametersRef"]["name"] == proxy["metadata"]["name"]


def test_workflows_build_the_images_the_values_use(kind_values: dict[str, Any]) -> None:
    e2e = yaml.safe_load((WORKFLOWS / "e2e.yml").read_text())
    steps = e2e["jobs"]["kind"]["steps"]
    built = {step["with"]["tags"] for step in steps if "docker/build-push-action" in step.get("uses", "")}
    operator_image = f"{kind_values['image']['repository']}:{kind_values['image']['tag']}"
    assert {operator_image, kind_values["settings"]["images"]["cpu"]} <= built
    loads = "\n".join(step.get("run", "") for step in steps)
    for image in built:
        assert f"kind load docker-image --name berth {image}" in loads
    kind_step = next(step for step in steps if "helm/kind-action" in step.get("uses", ""))
    assert kind_step["with"]["config"] == "kind-config.yaml"
    assert (
        kind_step["with"]["cluster_name"] == yaml.safe_load((REPO / "kind-config.yaml").read_text())["name"]
    )
    model_store = load_all(KIND_DIR / "model-store.yaml")[0]
    assert model_store["spec"]["template"]["spec"]["containers"][0]["image"] in built


def test_workflow_scripts_exist_and_parse() -> None:
    for workflow in ("ci.yml", "e2e.yml"):
        doc = yaml.safe_load((WORKFLOWS / workflow).read_text())
        assert doc["jobs"]
        for job in doc["jobs"].values():
            for step in job["steps"]:
                for word in step.get("run", "").split():
                    if word.startswith(".github/scripts/"):
                        script = REPO / word
                        assert script.exists() and os.access(script, os.X_OK), word
    for script in SCRIPTS.glob("*.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)
        assert script.read_text().startswith("#!/usr/bin/env bash\n")


# ---------------------------------------------------------------- the e2e load generator, for real


class Answer(BaseHTTPRequestHandler):
    fail_every = 0
    count = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with Answer.lock:
            Answer.count += 1
            failing = Answer.fail_every and Answer.count % Answer.fail_every == 0
        body = b'{"error": {"code": 503, "message": "draining"}}' if failing else b'{"predictions": [0]}'
        self.send_response(503 if failing else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Berth-Variant", "champion")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Answer.count, Answer.fail_every = 0, 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/endpoints/berth-demo/iris/invocations"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def run_load(url: str, tmp_path: Path) -> tuple[int, dict[str, Any]]:
    stop = tmp_path / "stop"
    summary = tmp_path / "load.json"
    stop.touch()  # stop as soon as 20 requests were made: no fixed wait that a loaded machine outlasts
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "constant_load.py"), "--url", url, "--stop-file", str(stop),
         "--summary", str(summary), "--workers", "2", "--min-requests", "20"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        code = process.wait(timeout=40)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return code, json.loads(summary.read_text())


@pytest.mark.timeout(60)
def test_load_generator_passes_when_every_request_succeeds(server: str, tmp_path: Path) -> None:
    code, summary = run_load(server, tmp_path)
    assert code == 0
    assert summary["requests"] > 0 and summary["failed"] == 0
    assert summary["variants"] == {"champion": summary["requests"]}


@pytest.mark.timeout(60)
def test_load_generator_fails_on_any_failed_request(server: str, tmp_path: Path) -> None:
    Answer.fail_every = 5
    code, summary = run_load(server, tmp_path)
    assert code == 1
    assert summary["failed"] == summary["statuses"]["503"] > 0
    assert "HTTP 503" in summary["first_failures"][0]


@pytest.mark.timeout(60)
def test_load_generator_counts_refused_connections(tmp_path: Path) -> None:
    code, summary = run_load("http://127.0.0.1:9/invocations", tmp_path)
    assert code == 1 and summary["statuses"].get("error", 0) == summary["failed"] > 0


def test_the_monitoring_scenario_uses_the_async_s3_and_runs_before_the_uninstall(
    manifests: list[dict[str, Any]],
) -> None:
    """e2e-monitoring.sh makes the bucket the capture, baseline and schedule name, with the S3 and
    Secret e2e-async.sh made, and runs before e2e-test.sh uninstalls the chart."""
    [schedule] = by_kind(manifests, "MonitoringSchedule")
    [job] = [j for j in by_kind(manifests, "Job") if j["metadata"]["name"] == "iris-baseline"]
    config = next(
        c for c in by_kind(manifests, "EndpointConfig") if c["metadata"]["name"] == "iris-watched-v1"
    )
    capture = config["spec"]["dataCapture"]
    uris = [
        capture["destinationUri"],
        schedule["spec"]["baseline"]["statisticsUri"],
        schedule["spec"]["outputUri"],
        *[a for a in job["spec"]["template"]["spec"]["containers"][0]["args"] if a.startswith("s3://")],
    ]
    buckets = {urlsplit(uri).netloc for uri in uris}
    script = (SCRIPTS / "e2e-monitoring.sh").read_text()
    assert buckets == {"berth-monitoring"} and "Bucket='berth-monitoring'" in script
    secrets = {d["metadata"]["name"] for d in by_kind(manifests, "Secret")}
    assert capture["credentialsSecretRef"]["name"] in secrets
    assert schedule["spec"]["credentialsSecretRef"]["name"] in secrets
    assert "Key='train/iris.csv'" in script and "s3://berth-monitoring/train/iris.csv" in uris
    workflow = (WORKFLOWS / "e2e.yml").read_text()
    assert (
        workflow.index("e2e-async.sh") < workflow.index("e2e-monitoring.sh") < workflow.index("e2e-test.sh")
    )

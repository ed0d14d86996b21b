"""`berth render`: the objects for a fresh cluster, as YAML or JSON, deterministic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from berth_operator.render import render_command
from click.testing import CliRunner

from .validation import assert_admitted

MANIFESTS = """\
apiVersion: berth.dev/v1alpha1
kind: Model
metadata: {name: fraud-v1, namespace: prod}
spec: {modelUri: "s3://models/fraud/v1.onnx"}
---
apiVersion: berth.dev/v1alpha1
kind: EndpointConfig
metadata: {name: fraud-config-v1, namespace: prod}
spec:
  productionVariants:
    - {variantName: blue, modelName: fraud-v1, instanceType: cpu-small, initialInstanceCount: 2, initialVariantWeight: 3}
    - {variantName: green, modelName: fraud-v1, instanceType: cpu-small}
---
apiVersion: berth.dev/v1alpha1
kind: Endpoint
metadata: {name: fraud, namespace: prod}
spec: {endpointConfigName: fraud-config-v1}
---
apiVersion: berth.dev/v1alpha1
kind: Endpoint
metadata: {name: another, namespace: prod}
spec: {endpointConfigName: fraud-config-v1}
"""


def manifests(tmp_path: Path, text: str = MANIFESTS) -> Path:
    path = tmp_path / "berth.yaml"
    path.write_text(text)
    return path


def test_yaml_output(tmp_path: Path) -> None:
    result = CliRunner().invoke(render_command, ["-f", str(manifests(tmp_path))])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.output))
    assert result.output.startswith("---\n")
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert names == [
        # The serving pods' review identity (KubernetesRBAC, the default), shared by the namespace.
        ("ClusterRoleBinding", "berth-invoke-reviewer:prod:berth-serving"),
        ("ServiceAccount", "berth-serving"),
        ("NetworkPolicy", "another-serving"),
        ("Deployment", "another-fraud-config-v1-blue"),
        ("Deployment", "another-fraud-config-v1-green"),
        ("Service", "another-fraud-config-v1-blue"),
        ("Service", "another-fraud-config-v1-green"),
        ("PodDisruptionBudget", "another-fraud-config-v1-blue"),
        ("HTTPRoute", "another"),
        ("NetworkPolicy", "fraud-serving"),
        ("Deployment", "fraud-fraud-config-v1-blue"),
        ("Deployment", "fraud-fraud-config-v1-green"),
        ("Service", "fraud-fraud-config-v1-blue"),
        ("Service", "fraud-fraud-config-v1-green"),
        ("PodDisruptionBudget", "fraud-fraud-config-v1-blue"),
        ("HTTPRoute", "fraud"),
    ]
    assert all("ownerReferences" not in d["metadata"] for d in docs)  # GitOps output
    route = docs[-1]
    assert [r["weight"] for r in route["spec"]["rules"][-1]["backendRefs"]] == [750, 250]
    assert_admitted(docs)


def test_output_is_deterministic_and_json_matches(tmp_path: Path) -> None:
    path = str(manifests(tmp_path))
    runner = CliRunner()
    first = runner.invoke(render_command, ["-f", path]).output
    assert runner.invoke(render_command, ["-f", path]).output == first
    as_json = runner.invoke(render_command, ["-f", path, "-o", "json"])
    assert as_json.exit_code == 0
    body = json.loads(as_json.output)
    assert body["kind"] == "List"
    assert body["items"] == list(yaml.safe_load_all(first))


def test_settings_file(tmp_path: Path) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("routing: {mode: none}\nimages: {cpu: registry.example/berth:9}\n")
    result = CliRunner().invoke(render_command, ["-f", str(manifests(tmp_path)), "--settings", str(settings)])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.output))
    assert {d["kind"] for d in docs} == {
        "ClusterRoleBinding",
        "ServiceAccount",
        "NetworkPolicy",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }
    images = {
        c["image"]
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"registry.example/berth:9"}


def test_bad_manifest_exits_1_with_the_message(tmp_path: Path) -> None:
    path = manifests(
        tmp_path, MANIFESTS.replace("instanceType: cpu-small}", "instanceType: cpu-small, oops: 1}", 1)
    )
    result = CliRunner().invoke(render_command, ["-f", str(path)])
    assert result.exit_code == 1
    assert (
        f"{path}:document 2: EndpointConfig/fraud-config-v1: spec.productionVariants[1].oops: "
        in result.output
    )


def test_missing_model_exits_1(tmp_path: Path) -> None:
    text = MANIFESTS.split("---\n", 1)[1]  # no Model
    result = CliRunner().invoke(render_command, ["-f", str(manifests(tmp_path, text))])
    assert result.exit_code == 1
    assert (
        "Endpoint prod/fraud: EndpointConfig fraud-config-v1: variant blue: Model fraud-v1 not found"
        in result.output
    )


def test_unknown_instance_type_exits_1(tmp_path: Path) -> None:
    text = MANIFESTS.replace(
        "instanceType: cpu-small, initialInstanceCount", "instanceType: gpu-huge, initialInstanceCount"
    )
    result = CliRunner().invoke(render_command, ["-f", str(manifests(tmp_path, text))])
    assert result.exit_code == 1
    assert 'variant blue: unknown instanceType "gpu-huge"' in result.output


def test_berth_render_through_the_cli(tmp_path: Path) -> None:
    berth = Path(sys.executable).parent / "berth"
    done = subprocess.run(
        [str(berth), "render", "-f", str(manifests(tmp_path))], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert len(list(yaml.safe_load_all(done.stdout))) == 16


MONITORING_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "monitoring"


def test_a_monitoring_schedule_renders_its_cron_job_admitted_strict() -> None:
    result = CliRunner().invoke(render_command, ["-f", str(MONITORING_EXAMPLE)])
    assert result.exit_code == 0, result.output
    objects = list(yaml.safe_load_all(result.output))
    assert_admitted(objects)
    [cron] = [o for o in objects if o["kind"] == "CronJob"]
    [container] = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["args"][:4] == ["monitor", "run", "--captures", "s3://bucket/capture/fraud/"]
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    [server] = deployment["spec"]["template"]["spec"]["containers"]
    assert any(e["name"] == "BERTH_CAPTURE" for e in server["env"])


def test_a_monitoring_schedule_of_an_endpoint_that_captures_nothing_exits_1(tmp_path: Path) -> None:
    text = (MONITORING_EXAMPLE / "endpoint.yaml").read_text()
    start = text.index("  dataCapture:")
    end = text.index("---", start)
    (tmp_path / "all.yaml").write_text(text[:start] + text[end:])
    result = CliRunner().invoke(render_command, ["-f", str(tmp_path)])
    assert result.exit_code == 1
    assert "MonitoringSchedule default/fraud-drift" in result.output
    assert "captures nothing: set dataCapture" in result.output

"""The manifest loader: files, directories, multi-document YAML, and its error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from berth_operator.api import Endpoint, EndpointConfig, Model
from berth_operator.manifests import ManifestError, load_manifests, resolve_file_uri

MODEL = """\
apiVersion: berth.dev/v1alpha1
kind: Model
metadata: {name: m1}
spec: {modelUri: file://model.onnx}
"""
CONFIG = """\
apiVersion: berth.dev/v1alpha1
kind: EndpointConfig
metadata: {name: c1}
spec:
  productionVariants:
    - {variantName: blue, modelName: m1, instanceType: cpu-small}
"""
ENDPOINT = """\
apiVersion: berth.dev/v1alpha1
kind: Endpoint
metadata: {name: ep, namespace: team-a}
spec: {endpointConfigName: c1}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_multi_document_file(tmp_path: Path) -> None:
    other = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"
    path = write(tmp_path / "all.yaml", "---\n".join([MODEL, CONFIG, other, ENDPOINT]) + "---\n")
    loaded = load_manifests([path])
    assert [i.resource.name for i in loaded.models] == ["m1"]
    assert isinstance(loaded.configs[0].resource, EndpointConfig)
    assert loaded.endpoints[0].document == 4
    assert loaded.endpoints[0].resource.namespace == "team-a"
    assert loaded.models[0].resource.namespace == "default"
    assert loaded.notes == [f"{path}:document 3: ignored v1 ConfigMap (not a Berth kind)"]
    assert list(loaded.models_in("default")) == ["m1"]
    assert loaded.models_in("team-a") == {}
    assert [e.name for e in loaded.endpoint_resources()] == ["ep"]


def test_directory_recursive_and_sorted(tmp_path: Path) -> None:
    write(tmp_path / "b" / "model.yml", MODEL)
    write(tmp_path / "a" / "config.yaml", CONFIG)
    write(tmp_path / "c.yaml", ENDPOINT)
    write(tmp_path / "notes.txt", "not yaml: [")
    loaded = load_manifests([tmp_path])
    in_file_order = sorted(loaded.models + loaded.configs + loaded.endpoints, key=lambda i: str(i.source))
    assert [type(i.resource) for i in in_file_order] == [EndpointConfig, Model, Endpoint]
    assert loaded.models[0].source == tmp_path / "b" / "model.yml"
    assert loaded.models[0].base_dir == tmp_path / "b"  # relative file:// URIs resolve from here


def test_several_paths(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", MODEL)
    b = write(tmp_path / "b.yaml", CONFIG)
    loaded = load_manifests([a, b])
    assert (len(loaded.models), len(loaded.configs)) == (1, 1)


def test_error_names_file_document_object_and_field(tmp_path: Path) -> None:
    bad = CONFIG.replace("variantName: blue", "variantName: Blue_1").replace(
        "cpu-small}", "cpu-small, weight: 2}"
    )
    path = write(tmp_path / "bad.yaml", MODEL + "---\n" + bad)
    with pytest.raises(ManifestError) as caught:
        load_manifests([path])
    lines = str(caught.value).splitlines()
    assert lines == [
        f"{path}:document 2: EndpointConfig/c1: spec.productionVariants[0].variantName: "
        "String should match pattern '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
        f"{path}:document 2: EndpointConfig/c1: spec.productionVariants[0].weight: Extra inputs are not permitted",
    ]


def test_model_level_rules_are_reported_on_their_object(tmp_path: Path) -> None:
    doubled = CONFIG + "    - {variantName: blue, modelName: m1, instanceType: cpu-small}\n"
    path = write(tmp_path / "dup.yaml", doubled)
    with pytest.raises(
        ManifestError, match=r"document 1: EndpointConfig/c1: spec: variantName must be unique"
    ):
        load_manifests([path])


def test_camel_case_locations(tmp_path: Path) -> None:
    text = ENDPOINT.replace(
        "{endpointConfigName: c1}",
        "{endpointConfigName: c1, deploymentConfig: {blueGreen: {trafficRouting: {canarySize: {value: 101}}}}}",
    )
    with pytest.raises(ManifestError) as caught:
        load_manifests([write(tmp_path / "ep.yaml", text)])
    assert "Endpoint/ep: spec.deploymentConfig.blueGreen.trafficRouting.canarySize.value: " in str(
        caught.value
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: [", "cannot read YAML"),
        ("- just\n- a list\n", "document 1: not a mapping"),
        ("apiVersion: berth.dev/v1alpha1\nmetadata: {name: x}\n", "document 1: missing kind"),
        (
            MODEL.replace("v1alpha1", "v1"),
            "document 1: Model/m1: apiVersion: must be berth.dev/v1alpha1, not berth.dev/v1",
        ),
        (
            MODEL.replace("metadata: {name: m1}", "metadata: {}"),
            "document 1: Model/?: metadata.name: Field required",
        ),
        (MODEL + "---\n" + MODEL, "document 2: Model/m1: defined twice (first in "),
    ],
)
def test_refusals(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "x.yaml", text)
    with pytest.raises(ManifestError, match=None) as caught:
        load_manifests([path])
    assert message in str(caught.value)
    assert str(caught.value).startswith(str(path))


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such file or directory"):
        load_manifests([tmp_path / "nope.yaml"])


def test_resolve_file_uri(tmp_path: Path) -> None:
    assert resolve_file_uri("file://model.onnx", tmp_path) == f"file://{tmp_path}/model.onnx"
    assert resolve_file_uri("file://sub/../m.onnx", tmp_path) == f"file://{tmp_path}/m.onnx"
    assert resolve_file_uri("file:///abs/m.onnx", tmp_path) == "file:///abs/m.onnx"
    assert resolve_file_uri("s3://b/m.onnx", tmp_path) == "s3://b/m.onnx"


def test_quickstart_examples_load() -> None:
    examples = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
    if not examples.exists():
        pytest.skip("examples/quickstart not written yet")
    loaded = load_manifests([examples])
    assert loaded.endpoints and loaded.configs and loaded.models


def test_directory_skips_yaml_that_is_not_a_kubernetes_object(tmp_path: Path) -> None:
    write(tmp_path / "values.yaml", "replicas: 2\nimage: {tag: dev}\n")  # Helm values beside the manifests
    write(tmp_path / "model.yaml", MODEL)
    loaded = load_manifests([tmp_path])
    assert [item.resource.name for item in loaded.models] == ["m1"]
    assert any("values.yaml:document 1: ignored (not a Kubernetes object)" in note for note in loaded.notes)
    with pytest.raises(ManifestError, match="document 1: missing kind"):
        load_manifests([tmp_path / "values.yaml"])  # named directly, it must be an object

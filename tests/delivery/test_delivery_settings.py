"""The chart's ConfigMap is a settings file the operator loads: chart and operator cannot drift."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import helm_python as helm
import pytest
from berth_operator.settings import Settings, SettingsError, load_settings

from tests.delivery.delivery_support import (
    CHART_DIR,
    NAMESPACE,
    VALUE_SETS,
    objects,
    render,
    rendered_settings,
)


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def load_rendered(chart: helm.Chart, values: dict[str, object], tmp_path: Path) -> Settings:
    path = tmp_path / "settings.yaml"
    path.write_text(rendered_settings(objects(render(chart, values))))
    return load_settings(path)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_settings_load(chart: helm.Chart, tmp_path: Path, name: str) -> None:
    settings = load_rendered(chart, VALUE_SETS[name], tmp_path)
    assert settings.instance_types, "an empty catalog would make every EndpointConfig fail"


def test_default_values_are_the_operator_defaults(chart: helm.Chart, tmp_path: Path) -> None:
    """With default values (installed in the default namespace) the chart changes nothing."""
    assert load_rendered(chart, {}, tmp_path) == Settings()
    assert Settings().routing.gateway.namespace == NAMESPACE


def test_values_reach_the_operator(chart: helm.Chart, tmp_path: Path) -> None:
    settings = load_rendered(chart, VALUE_SETS["custom-instance-types"], tmp_path)
    assert sorted(settings.instance_types) == ["a100", "cpu-large", "kind-tiny"]
    tiny = settings.instance_types["kind-tiny"]
    assert tiny.accelerator is None
    assert tiny.node_selector == {"berth.dev/inference": "true"}
    assert tiny.resources.requests == {"cpu": "100m", "memory": "256Mi"}
    assert settings.instance_types["a100"].accelerator == "nvidia"
    assert settings.images.cpu == "registry.example.com/berth-serving:dev"
    assert settings.images.gpu == "ghcr.io/berth-dev/berth-serving-gpu:0.1.0"  # follows appVersion
    assert settings.images.pull_policy == "Always"

    settings = load_rendered(chart, VALUE_SETS["monitoring-netpol-gateway"], tmp_path)
    gateway = settings.routing.gateway
    assert (gateway.name, gateway.namespace, gateway.section_name) == ("inference", "gateways", "web")
    assert settings.rollback.prometheus_url == "http://prometheus-operated.monitoring:9090"

    settings = load_rendered(chart, VALUE_SETS["namespaced"], tmp_path)
    assert settings.namespaces == ["team-a", "team-b"]

    settings = load_rendered(chart, VALUE_SETS["ingress-two-replicas"], tmp_path)
    assert (settings.routing.mode, settings.routing.public_url) == ("ingress", "https://ml.example.com")


def test_gateway_namespace_follows_the_release(chart: helm.Chart, tmp_path: Path) -> None:
    rendered = chart.render({}, name="ml", namespace="platform")
    path = tmp_path / "settings.yaml"
    path.write_text(rendered_settings(objects(rendered)))
    assert load_settings(path).routing.gateway.namespace == "platform"


def test_operator_refuses_what_the_schema_would_miss(tmp_path: Path) -> None:
    """The loader is strict too: a settings file with an unknown key fails with its name."""
    path = tmp_path / "settings.yaml"
    path.write_text("routing: {mode: gateway, gatway: {}}\n")
    with pytest.raises(SettingsError, match="gatway"):
        load_settings(path)


# (values under settings.instanceTypes.t, accepted?) -- the chart's schema and the operator's
# loader must give the same answer for each: `cpu: 0.5` once passed the schema and then
# crash-looped the operator.
INSTANCE_TYPE_CASES = [
    ({"resources": {"requests": {"cpu": 0.5}}}, True),
    ({"resources": {"requests": {"cpu": 2, "memory": "2Gi"}}}, True),
    ({"resources": {"requests": {"cpu": "500m"}, "limits": {"nvidia.com/gpu": 1}}}, True),
    ({"resources": {"requests": {"cpu": "lots"}}}, False),
    ({"resources": {"requests": {"cpu": -1}}}, False),
    ({"resources": {"requests": {"cpu": "-1"}}}, False),
    ({"resources": {"requests": {"cpu": True}}}, False),
    ({"resources": {"request": {"cpu": 1}}}, False),
    ({"modelVolumeSizeLimit": "40Gi"}, True),
    ({"modelVolumeSizeLimit": "forty"}, False),
    ({"accelerator": "nvidia"}, True),
    ({"accelerator": "tpu"}, False),
    ({"nodeSelector": {"pool": "gpu"}}, True),
    ({"nodeSelector": {"pool": 1}}, False),
    ({"tolerations": [{"key": "k", "operator": "Exists"}]}, True),
    ({"gpus": 1}, False),
]


@pytest.mark.parametrize(("instance_type", "accepted"), INSTANCE_TYPE_CASES)
def test_schema_and_loader_agree(instance_type: dict[str, object], accepted: bool) -> None:
    import json

    import jsonschema

    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    values = {"settings": {"instanceTypes": {"t": instance_type}}}
    schema_says = jsonschema.Draft7Validator(schema).is_valid(values)
    try:
        Settings.model_validate({"instanceTypes": {"t": instance_type}})
        loader_says = True
    except ValueError:
        loader_says = False
    assert (schema_says, loader_says) == (accepted, accepted)


def test_the_schema_spells_quantities_as_the_operator_does() -> None:
    import json

    from berth_operator.quantity import QUANTITY_PATTERN

    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    instance = schema["properties"]["settings"]["properties"]["instanceTypes"]["additionalProperties"][
        "anyOf"
    ][0]
    requests = instance["properties"]["resources"]["properties"]["requests"]["additionalProperties"]
    assert {"type": "string", "pattern": QUANTITY_PATTERN} in requests["anyOf"]
    assert instance["properties"]["modelVolumeSizeLimit"]["pattern"] == QUANTITY_PATTERN


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_a_values_file_gives_what_the_chart_gives(chart: helm.Chart, tmp_path: Path, name: str) -> None:
    """`berth render --settings values.yaml` and `berth up` read a chart values file as Helm would."""
    import yaml

    from_chart = load_rendered(chart, VALUE_SETS[name], tmp_path)
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(VALUE_SETS[name]))
    assert load_settings(values) == from_chart


def test_the_kind_example_values_work_for_render(tmp_path: Path) -> None:
    # `berth render -f examples/kind --settings examples/kind/values.yaml` was refused (`image:`).
    settings = load_settings(CHART_DIR.parent.parent / "examples" / "kind" / "values.yaml")
    assert "kind-small" in settings.instance_types and "cpu-small" in settings.instance_types

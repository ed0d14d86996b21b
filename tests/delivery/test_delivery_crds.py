"""The chart ships exactly the generated CRDs (plus kopf's peering CRDs)."""

from __future__ import annotations

import helm_python as helm
import yaml

from tests.delivery.delivery_support import CHART_DIR, REPO, validate

TOP_LEVEL_CRDS = REPO / "crds"
CHART_CRDS = CHART_DIR / "crds"
KOPF_PEERING = "kopf-peering.yaml"


def test_chart_crds_equal_the_generated_ones() -> None:
    """`make crds` writes crds/; the chart's copy must be byte for byte the same (copy it over)."""
    generated = {path.name: path.read_bytes() for path in TOP_LEVEL_CRDS.glob("*.yaml")}
    shipped = {
        path.name: path.read_bytes() for path in CHART_CRDS.glob("*.yaml") if path.name != KOPF_PEERING
    }
    assert generated, "crds/ is empty: run `make crds`"
    assert sorted(shipped) == sorted(generated), "copy crds/*.yaml into charts/berth/crds/"
    stale = [name for name in generated if shipped[name] != generated[name]]
    assert stale == [], f"charts/berth/crds/ differs from crds/ in {stale}: cp crds/*.yaml charts/berth/crds/"


def test_chart_crds_cover_the_berth_kinds() -> None:
    kinds = set()
    for path in CHART_CRDS.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                validate(doc)
                kinds.add((doc["spec"]["group"], doc["spec"]["names"]["kind"]))
    assert {("berth.dev", "Model"), ("berth.dev", "EndpointConfig"), ("berth.dev", "Endpoint")} <= kinds
    assert {("kopf.dev", "ClusterKopfPeering"), ("kopf.dev", "KopfPeering")} <= kinds


def test_helm_installs_the_crds_before_the_templates() -> None:
    """Helm applies crds/ first, so the peering object in templates/ finds its CRD."""
    with helm.Chart.load(CHART_DIR) as chart:
        names = {crd["name"] for crd in chart.crds}
        templates = chart.templates
    assert "crds/kopf-peering.yaml" in names
    assert not [t["name"] for t in templates if "kind: CustomResourceDefinition" in t["data"]]


def schema_defaults(schema: object, path: str = "") -> list[str]:
    """Paths of every `default:` in an OpenAPI schema (a field *named* default is not one)."""
    if isinstance(schema, list):
        return [hit for i, item in enumerate(schema) for hit in schema_defaults(item, f"{path}[{i}]")]
    if not isinstance(schema, dict):
        return []
    found = [path] if "default" in schema else []
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            for name, sub in value.items():
                found += schema_defaults(sub, f"{path}.{name}")
        elif key != "default":
            found += schema_defaults(value, path)
    return found


def test_crds_write_no_defaults_into_specs() -> None:
    """docs/gitops.md promises no drift: the API server must not add defaults to a stored object."""
    assert schema_defaults({"properties": {"default": {"type": "string"}, "x": {"default": 1}}}) == [".x"]
    for path in sorted(TOP_LEVEL_CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            assert schema_defaults(version["schema"]["openAPIV3Schema"]) == [], path.name
    templates = (CHART_DIR / "templates").glob("*")
    assert not [t.name for t in templates if "MutatingWebhookConfiguration" in t.read_text()]

"""The generated CRDs: up to date in crds/, structural, explained, and acceptable to the API server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from berth_operator import api, crdgen
from berth_operator.cli import main
from click.testing import CliRunner

from tests.support import celk8s
from tests.support.crdcheck import berth_crds, load_crd

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
CRDS = berth_crds()
FILES = {
    "Model": "berth.dev_models.yaml",
    "EndpointConfig": "berth.dev_endpointconfigs.yaml",
    "Endpoint": "berth.dev_endpoints.yaml",
    "TransformJob": "berth.dev_transformjobs.yaml",
    "MonitoringSchedule": "berth.dev_monitoringschedules.yaml",
}
Schema = dict[str, Any]


def root_schema(crd: Schema) -> Schema:
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def nodes(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every schema node with its path (`[]` for list items, `{}` for map values)."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}{{}}")


def all_nodes() -> Iterator[tuple[str, str, Schema]]:
    for kind, crd in CRDS.items():
        for path, node in nodes(root_schema(crd)):
            yield kind, path, node


# --------------------------------------------------------------------------- (a) crds/ is current


def test_checked_in_crds_are_current() -> None:
    for name, text in crdgen.crd_documents().items():
        path = CRD_DIR / name
        assert path.exists() and path.read_text() == text, (
            f"{path} is stale: run `make crds` and commit crds/"
        )
    assert sorted(p.name for p in CRD_DIR.glob("*.yaml")) == sorted(FILES.values()), "run `make crds`"


def test_stdout_is_cat_of_the_files() -> None:
    result = CliRunner().invoke(main, ["crds"])
    assert result.exit_code == 0, result.output
    assert result.output == "".join(p.read_text() for p in sorted(CRD_DIR.glob("*.yaml")))
    assert result.output.startswith("---\n") and result.output.count("---\n") == len(FILES)


def test_output_dir_writes_one_file_per_kind(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["crds", "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    written = {p.name: p.read_text() for p in (tmp_path / "out").iterdir()}
    assert set(written) == set(FILES.values())
    for kind, name in FILES.items():
        assert load_crd(tmp_path / "out" / name) == CRDS[kind]


# --------------------------------------------------------------------------- (b) kubectl explain


def test_every_property_has_a_description() -> None:
    missing = [
        f"{kind}{path}.{name}"
        for kind, path, node in all_nodes()
        for name, prop in node.get("properties", {}).items()
        if not str(prop.get("description", "")).strip() and not (path == "" and name == "metadata")
    ]
    assert missing == []
    assert all(root_schema(crd)["description"] for crd in CRDS.values())


# --------------------------------------------------------------------------- (c) names, columns, subresources


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_names_and_version(kind: str) -> None:
    spec = CRDS[kind]["spec"]
    resource = api.RESOURCE_KINDS[kind]
    assert CRDS[kind]["metadata"]["name"] == f"{resource.PLURAL}.berth.dev"
    assert spec["group"] == "berth.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == [
        {
            "Model": "bm",
            "EndpointConfig": "bec",
            "Endpoint": "bep",
            "TransformJob": "btj",
            "MonitoringSchedule": "bms",
        }[kind]
    ]
    assert spec["names"]["categories"] == ["berth"]
    assert spec["names"]["kind"] == kind and spec["names"]["plural"] == resource.PLURAL
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def columns(kind: str) -> list[tuple[str, str, int]]:
    return [
        (c["name"].upper(), c["jsonPath"], c.get("priority", 0))
        for c in CRDS[kind]["spec"]["versions"][0]["additionalPrinterColumns"]
    ]


def test_printer_columns() -> None:
    ready = '.status.conditions[?(@.type=="Ready")].status'
    age = ".metadata.creationTimestamp"
    assert columns("Model") == [("URI", ".spec.modelUri", 0), ("READY", ready, 0), ("AGE", age, 0)]
    assert columns("EndpointConfig") == [
        ("VARIANTS", ".spec.productionVariants[*].variantName", 0),
        ("READY", ready, 0),
        ("AGE", age, 0),
    ]
    assert columns("Endpoint") == [
        ("PHASE", ".status.phase", 0),
        ("CONFIG", ".status.endpointConfigName", 0),
        ("URL", ".status.url", 0),
        ("AGE", age, 0),
        ("PENDING", ".status.pendingEndpointConfigName", 1),
        ("SHIFTED", ".status.rollout.trafficShiftedPercent", 1),
    ]


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_printer_columns_point_at_fields_of_the_schema(kind: str) -> None:
    paths = {path for path, _ in nodes(root_schema(CRDS[kind]))}
    for _, json_path, _ in columns(kind):
        if json_path.startswith(".metadata"):
            continue
        field_path = re.sub(r'\[\?\(@\.type=="\w+"\)\]', "[]", json_path.replace("[*]", "[]"))
        assert field_path in paths, json_path


# --------------------------------------------------------------------------- structural schema rules


def test_schemas_are_structural() -> None:
    for kind, path, node in all_nodes():
        where = f"{kind}{path}"
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{where} has no type"
        assert "default" not in node, f"{where}: defaults live in pydantic, not in the CRD"
        assert not {"$ref", "anyOf", "oneOf", "allOf", "not", "nullable", "title"} & set(node), where
        assert not ("properties" in node and "additionalProperties" in node), where
        if node.get("type") == "object" and path.count(".") > 1:
            has_shape = {"properties", "additionalProperties", "x-kubernetes-preserve-unknown-fields"} & set(
                node
            )
            assert has_shape, f"{where}: an object without properties would be pruned empty"


def test_only_spec_and_status_are_described() -> None:
    for crd in CRDS.values():
        schema = root_schema(crd)
        assert list(schema["properties"]) == ["apiVersion", "kind", "metadata", "spec", "status"]
        # kube-apiserver refuses a root metadata schema with anything but its type in it.
        assert schema["properties"]["metadata"] == {"type": "object"}
        assert schema["required"] == ["spec"]


def test_type_mapping() -> None:
    """Optional, int | str, free-form maps, Literal and number types map as the API server needs."""
    config = root_schema(CRDS["EndpointConfig"])["properties"]["spec"]
    pv = config["properties"]["productionVariants"]["items"]["properties"]
    assert pv["resources"]["properties"]["limits"]["additionalProperties"] == {
        "x-kubernetes-int-or-string": True
    }
    assert pv["initialVariantWeight"]["type"] == "number" and pv["initialInstanceCount"]["type"] == "integer"
    assert pv["autoscaling"]["type"] == "object" and "autoscaling" not in pv.get("required", [])
    model = root_schema(CRDS["Model"])["properties"]["spec"]["properties"]
    assert model["env"]["items"]["properties"]["valueFrom"]["x-kubernetes-preserve-unknown-fields"] is True
    assert model["runtime"]["properties"]["graphOptimizationLevel"]["enum"] == [
        "disable",
        "basic",
        "extended",
        "all",
    ]
    assert model["modelUri"]["pattern"] == api.MODEL_URI
    status = root_schema(CRDS["Endpoint"])["properties"]["status"]["properties"]
    assert status["rollout"]["properties"]["retainedInstanceCounts"]["additionalProperties"] == {
        "type": "integer"
    }


def test_rules_come_from_the_api_classes() -> None:
    def rules(kind: str, path: str) -> list[Schema]:
        return dict(nodes(root_schema(CRDS[kind])))[path].get("x-kubernetes-validations", [])

    assert rules("Model", ".spec") == api.ModelSpec.x_kubernetes_validations
    assert rules("EndpointConfig", ".spec") == api.EndpointConfigSpec.x_kubernetes_validations
    assert rules("Endpoint", ".spec") == api.EndpointSpec.x_kubernetes_validations
    for lists in ("productionVariants", "shadowProductionVariants"):
        assert (
            rules("EndpointConfig", f".spec.{lists}[].autoscaling")
            == api.Autoscaling.x_kubernetes_validations
        )


# --------------------------------------------------------------------------- (f) valid CRDs


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_valid_custom_resource_definition(kind: str) -> None:
    """kubernetes-validate's apiextensions/v1 schema, strict: unknown keys anywhere are refused."""
    kubernetes_validate.validate(CRDS[kind], "1.37", strict=True)


def test_kubernetes_validate_is_strict_about_schema_keys() -> None:
    broken = yaml.safe_load(yaml.safe_dump(CRDS["Model"]))
    root_schema(broken)["properties"]["spec"]["properties"]["modelUri"]["maxLenght"] = 10  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.37", strict=True)


def test_every_rule_compiles() -> None:
    rules = [rule for _, _, node in all_nodes() for rule in node.get("x-kubernetes-validations", [])]
    assert len(rules) >= 6
    for rule in rules:
        assert set(rule) <= {"rule", "message", "messageExpression", "reason", "fieldPath", "optionalOldSelf"}
        assert rule["message"], rule
        celk8s.program(rule["rule"])  # raises CELParseError on a rule the API server would refuse


def bounded(node: Schema) -> bool:
    if node.get("type") == "string":
        return "maxLength" in node or "enum" in node
    if node.get("type") == "array":
        return "maxItems" in node
    if node.get("type") == "object" and "properties" not in node:
        return "maxProperties" in node
    return True


def test_values_under_rules_are_bounded() -> None:
    """The API server estimates each rule's cost from maxItems/maxLength/maxProperties; unbounded
    lists, strings or maps under a rule make the estimate too high and the CRD is refused."""
    unbounded = [
        f"{kind}{path}{sub_path}"
        for kind, path, node in all_nodes()
        if node.get("x-kubernetes-validations")
        for sub_path, sub in nodes(node)
        if not bounded(sub)
    ]
    assert unbounded == []


def test_generator_on_a_synthetic_model() -> None:
    """The pydantic -> structural mapping on the shapes api.py may grow into."""
    from typing import ClassVar, Literal

    from pydantic import BaseModel, Field

    class Inner(BaseModel):
        """Inner docstring."""

        n: int = Field(gt=0, lt=10, description="Exclusive bounds.")
        x_kubernetes_validations: ClassVar[list[dict[str, str]]] = [
            {"rule": "self.n != 5", "message": "not 5"}
        ]

    class Outer(BaseModel):
        inner: Inner | None = Field(default=None, description="Field text wins over the docstring.")
        items: list[Inner] = Field(default_factory=list, max_length=3, description="Items.")
        quantity: int | str = Field(default=1, description="Int or string.")
        free: dict[str, Any] = Field(default_factory=dict, description="Anything.")
        labels: dict[str, str] = Field(default_factory=dict, description="Strings.")
        unit: Literal["Percent"] = Field(default="Percent", description="One value.")
        ratio: float = Field(default=0.5, ge=0, le=1, description="A number.")

    schema = Outer.model_json_schema(by_alias=True)
    converter = crdgen.StructuralSchema(schema, crdgen.model_classes(Outer))
    props = converter.convert({k: v for k, v in schema.items() if k != "$defs"})["properties"]
    inner = {
        "type": "object",
        "properties": {
            "n": {
                "description": "Exclusive bounds.",
                "type": "integer",
                "minimum": 0,
                "exclusiveMinimum": True,
                "maximum": 10,
                "exclusiveMaximum": True,
            }
        },
        "required": ["n"],
        "x-kubernetes-validations": [{"rule": "self.n != 5", "message": "not 5"}],
    }
    assert props["inner"] == {"description": "Field text wins over the docstring.", **inner}
    assert props["items"] == {
        "description": "Items.",
        "type": "array",
        "maxItems": 3,
        "items": {"description": "Inner docstring.", **inner},
    }
    assert props["quantity"] == {"description": "Int or string.", "x-kubernetes-int-or-string": True}
    assert props["free"] == {
        "description": "Anything.",
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    assert props["labels"] == {
        "description": "Strings.",
        "type": "object",
        "additionalProperties": {"type": "string"},
    }
    assert props["unit"] == {"description": "One value.", "type": "string", "enum": ["Percent"]}
    assert props["ratio"] == {"description": "A number.", "type": "number", "minimum": 0, "maximum": 1}

    class Either(BaseModel):
        either: int | list[int] = 0

    union = Either.model_json_schema()
    with pytest.raises(ValueError, match="no structural schema"):
        crdgen.StructuralSchema(union, {}).convert(union["properties"]["either"])


def test_api_reference_is_current() -> None:
    from berth_operator.apidocs import api_reference

    path = CRD_DIR.parent / "docs" / "api.md"
    assert path.exists() and path.read_text() == api_reference(), f"{path} is stale: run `make crds`"
    text = path.read_text()
    for resource in api.RESOURCE_KINDS.values():
        assert f"## {resource.KIND}" in text
    assert "`spec.endpointConfigName`" in text and api.MSG_CONFIG_IMMUTABLE in text

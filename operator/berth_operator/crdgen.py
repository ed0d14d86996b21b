"""CustomResourceDefinitions generated from the pydantic API types (`berth crds`).

Pydantic's JSON Schema is turned into Kubernetes *structural* schemas: every $ref inlined,
`Optional[X]` as X (simply not required), `int | str` as int-or-string, free-form maps as
preserve-unknown-fields, and no `default:` anywhere (pydantic applies defaults on read, so the
stored object is what the user wrote and GitOps tools see no drift).
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import click
import yaml
from pydantic import BaseModel

from berth_operator import api

Schema = dict[str, Any]

# Extra printer columns per kind, after NAME; AGE comes last everywhere.
READY_COLUMN = {
    "name": "Ready",
    "type": "string",
    "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
}
AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
PRINTER_COLUMNS: dict[str, list[Schema]] = {
    "Model": [
        {"name": "URI", "type": "string", "jsonPath": ".spec.modelUri"},
        READY_COLUMN,
        AGE_COLUMN,
    ],
    "EndpointConfig": [
        {"name": "Variants", "type": "string", "jsonPath": ".spec.productionVariants[*].variantName"},
        READY_COLUMN,
        AGE_COLUMN,
    ],
    "Endpoint": [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Config", "type": "string", "jsonPath": ".status.endpointConfigName"},
        {"name": "URL", "type": "string", "jsonPath": ".status.url"},
        AGE_COLUMN,
        {"name": "Pending", "type": "string", "jsonPath": ".status.pendingEndpointConfigName", "priority": 1},
        {
            "name": "Shifted",
            "type": "integer",
            "jsonPath": ".status.rollout.trafficShiftedPercent",
            "priority": 1,
        },
    ],
    "TransformJob": [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Model", "type": "string", "jsonPath": ".spec.modelName"},
        {"name": "Done", "type": "integer", "jsonPath": ".status.recordsDone"},
        {"name": "Total", "type": "integer", "jsonPath": ".status.recordsTotal"},
        AGE_COLUMN,
        {"name": "Job", "type": "string", "jsonPath": ".status.jobName", "priority": 1},
    ],
    "MonitoringSchedule": [
        {"name": "Endpoint", "type": "string", "jsonPath": ".spec.endpointName"},
        {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"},
        {"name": "Drift", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Drift")].status'},
        {"name": "Last", "type": "string", "jsonPath": ".status.lastExecution.time"},
        AGE_COLUMN,
    ],
}

ENVELOPE_PROPERTIES: dict[str, Schema] = {
    "apiVersion": {
        "description": "Versioned schema of this representation of an object: berth.dev/v1alpha1.",
        "type": "string",
    },
    "kind": {"description": "The REST resource this object represents.", "type": "string"},
    # A real API server refuses anything but `type: object` here ("must not specify anything
    # other than name and generateName"): offline schema checks accepted a description.
    "metadata": {"type": "object"},
}

# Key order in the output, so that the YAML reads like hand-written CRDs.
KEY_ORDER = [
    "description",
    "type",
    "format",
    "enum",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "items",
    "properties",
    "additionalProperties",
    "required",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-validations",
]
# JSON Schema keys that have no place in a structural schema.
DROPPED_KEYS = {"title", "default", "examples", "$defs"}


def model_classes(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every pydantic model reachable from `root` by field types, by class name (as in $defs)."""
    found: dict[str, type[BaseModel]] = {}

    def visit(annotation: Any) -> None:
        is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if is_model and annotation.__name__ not in found:
            found[annotation.__name__] = annotation
            for field in annotation.model_fields.values():
                visit(field.annotation)
        for argument in typing.get_args(annotation):
            visit(argument)

    visit(root)
    return found


def ordered(schema: Schema) -> Schema:
    rank = {key: index for index, key in enumerate(KEY_ORDER)}
    return dict(sorted(schema.items(), key=lambda item: rank.get(item[0], len(rank))))


class StructuralSchema:
    """Converts one pydantic JSON Schema (with its $defs) to structural OpenAPI v3 schemas."""

    def __init__(self, json_schema: Schema, classes: dict[str, type[BaseModel]]) -> None:
        self.defs: dict[str, Schema] = json_schema.get("$defs", {})
        self.classes = classes

    def convert(self, node: Schema) -> Schema:
        node = dict(node)
        if "$ref" in node or len(node.get("allOf", [])) == 1:
            return self.inline_ref(node)
        if "anyOf" in node:
            return self.collapse_any_of(node)
        out: Schema = {key: value for key, value in node.items() if key not in DROPPED_KEYS}
        if "const" in out:
            out["enum"] = [out.pop("const")]
        for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if isinstance(out.get(bound), int | float) and not isinstance(out[bound], bool):
                out[inclusive], out[bound] = out[bound], True  # OpenAPI v3.0 spells it as a flag
        if "properties" in out:
            out["properties"] = {name: self.convert(prop) for name, prop in out["properties"].items()}
            out.pop("additionalProperties", None)  # the API server prunes or refuses unknown fields
        elif out.get("additionalProperties") is True or (
            out.get("type") == "object" and "additionalProperties" not in out
        ):
            out.pop("additionalProperties", None)
            out["x-kubernetes-preserve-unknown-fields"] = True
        elif isinstance(out.get("additionalProperties"), dict):
            out["additionalProperties"] = self.convert(out["additionalProperties"])
        if "items" in out:
            out["items"] = self.convert(out["items"])
        if not out.get("required"):
            out.pop("required", None)
        return ordered(out)

    def inline_ref(self, node: Schema) -> Schema:
        ref = node.pop("$ref", None) or node.pop("allOf")[0]["$ref"]
        name = ref.rsplit("/", 1)[-1]
        target = self.convert(self.defs[name])
        rules = getattr(self.classes.get(name), "x_kubernetes_validations", None)
        if rules:
            target["x-kubernetes-validations"] = [dict(rule) for rule in rules]
        # The field's own description is more specific than the class docstring.
        return ordered({**target, **self.convert(node)})

    def collapse_any_of(self, node: Schema) -> Schema:
        options = [option for option in node.pop("anyOf") if option.get("type") != "null"]
        outer = {key: value for key, value in node.items() if key not in DROPPED_KEYS}
        if len(options) == 1:
            return ordered({**self.convert(options[0]), **self.convert(outer)})
        if sorted(option.get("type", "") for option in options) == ["integer", "string"]:
            return ordered({**self.convert(outer), "x-kubernetes-int-or-string": True})
        raise ValueError(f"no structural schema for a union of {options}")


def class_description(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split())


def openapi_schema(resource: type[api.Resource]) -> Schema:
    """The openAPIV3Schema of one kind: the envelope, spec and status."""
    json_schema = resource.model_json_schema(by_alias=True, mode="validation")
    converter = StructuralSchema(json_schema, model_classes(resource))
    properties = dict(ENVELOPE_PROPERTIES)
    for name in ("spec", "status"):
        properties[name] = converter.convert(json_schema["properties"][name])
    return {
        "description": class_description(resource),
        "type": "object",
        "properties": properties,
        "required": ["spec"],
    }


def crd_for(resource: type[api.Resource]) -> Schema:
    kind, plural = resource.KIND, resource.PLURAL
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [resource.SHORT_NAME],
                "categories": ["berth"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "additionalPrinterColumns": PRINTER_COLUMNS[kind],
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": openapi_schema(resource)},
                }
            ],
        },
    }


class NoAliasDumper(yaml.SafeDumper):
    """Writes repeated sub-schemas out in full: anchors and aliases confuse readers and some tools."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def crd_file_name(crd: Schema) -> str:
    return f"{crd['spec']['group']}_{crd['spec']['names']['plural']}.yaml"


def crd_documents() -> dict[str, str]:
    """File name -> YAML document (starting with `---`), in sorted file order."""
    crds = [crd_for(resource) for resource in api.RESOURCE_KINDS.values()]
    documents = {
        crd_file_name(crd): "---\n" + yaml.dump(crd, Dumper=NoAliasDumper, sort_keys=False, width=120)
        for crd in crds
    }
    return dict(sorted(documents.items()))


@click.command("crds")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write one file per CRD here instead of printing them all.",
)
@click.option(
    "--docs",
    "docs_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the API reference (Markdown) to this file.",
)
def crds_command(output_dir: Path | None, docs_path: Path | None) -> None:
    """Print the CustomResourceDefinitions (the same bytes as `cat crds/*.yaml`)."""
    if docs_path is not None:
        from .apidocs import api_reference

        docs_path.write_text(api_reference())
    documents = crd_documents()
    if output_dir is None:
        click.echo("".join(documents.values()), nl=False)
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, text in documents.items():
        (output_dir / name).write_text(text)

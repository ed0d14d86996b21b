"""docs/api.md: the API reference, generated from the pydantic API types like the CRDs are.

    berth crds --docs docs/api.md      (make crds does it; a test fails when the file is stale)

One section per kind: its fields as a table (path, type, default, what it means and its bounds),
then the admission rules with the messages a refused manifest gets.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from . import api
from .crdgen import class_description, model_classes

Schema = dict[str, Any]
HEADER = """# Berth API reference (berth.dev/v1alpha1)

Generated from the API types (`operator/berth_operator/api/`) by `make crds`; do not edit. The
CRDs in `crds/` come from the same types. Defaults are applied when a manifest is read and never
written back into a stored object, so GitOps tools see no drift.
"""


class _Walker:
    def __init__(self, resource: type[api.Resource]) -> None:
        self.schema = resource.model_json_schema(by_alias=True, mode="validation")
        self.defs: dict[str, Schema] = self.schema.get("$defs", {})
        self.classes: dict[str, type[BaseModel]] = model_classes(resource)
        self.rows: list[tuple[str, str, str, str]] = []
        self.rules: list[tuple[str, str]] = []

    def resolve(self, node: Schema) -> tuple[Schema, str | None]:
        """The node with $ref / allOf / Optional unwrapped, and the class name it refers to."""
        if "anyOf" in node:
            options = [o for o in node["anyOf"] if o.get("type") != "null"]
            if len(options) == 1:
                inner, name = self.resolve(options[0])
                return {**inner, **{k: v for k, v in node.items() if k != "anyOf"}}, name
            return node, None
        ref = node.get("$ref") or (node.get("allOf") or [{}])[0].get("$ref")
        if ref:
            name = ref.rsplit("/", 1)[-1]
            target = dict(self.defs[name])
            target.update({k: v for k, v in node.items() if k not in ("$ref", "allOf")})
            return target, name
        return node, None

    def walk(self, path: str, node: Schema, required: bool) -> None:
        node, class_name = self.resolve(node)
        if class_name is not None:
            for rule in getattr(self.classes.get(class_name), "x_kubernetes_validations", []) or []:
                self.rules.append((path, rule["message"]))
        self.rows.append(
            (
                path,
                _type(node, self.resolve) + (", required" if required else ""),
                _default(node),
                _about(node),
            )
        )
        if "properties" in node:
            needed = set(node.get("required", []))
            for name, child in node["properties"].items():
                self.walk(f"{path}.{name}", child, name in needed)
        elif node.get("type") == "array" and "items" in node:
            items, _ = self.resolve(node["items"])
            if "properties" in items:
                needed = set(items.get("required", []))
                for name, child in items["properties"].items():
                    self.walk(f"{path}[].{name}", child, name in needed)


def _type(node: Schema, resolve: Any) -> str:
    if "anyOf" in node:
        kinds = sorted({o.get("type", "object") for o in node["anyOf"] if o.get("type") != "null"})
        return " or ".join(kinds)
    if "enum" in node:
        return " \\| ".join(f"`{value}`" for value in node["enum"])
    if "const" in node:
        return f"`{node['const']}`"
    kind = node.get("type", "object")
    if kind == "array":
        items, _ = resolve(node.get("items", {}))
        return f"list of {_type(items, resolve)}" if "properties" not in items else "list of objects"
    if kind == "object" and "additionalProperties" in node and "properties" not in node:
        values = node["additionalProperties"]
        inner = _type(values, resolve) if isinstance(values, dict) and values else "any"
        return f"map of {inner}"
    return str(kind)


def _default(node: Schema) -> str:
    if "default" not in node or node["default"] in ({}, [], None):
        return ""
    value = node["default"]
    if value == "":
        return '`""`'
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def _about(node: Schema) -> str:
    text = " ".join(str(node.get("description", "")).split())
    bounds = []
    for key, word in (
        ("minimum", ">="),
        ("maximum", "<="),
        ("minLength", "length >="),
        ("maxLength", "length <="),
    ):
        if key in node:
            bounds.append(f"{word} {node[key]}")
    if "minItems" in node or "maxItems" in node:
        bounds.append(f"{node.get('minItems', 0)} to {node.get('maxItems', 'any')} items")
    if "pattern" in node:
        bounds.append(f"pattern `{node['pattern']}`")
    if bounds:
        text += f" ({'; '.join(bounds)})"
    return text.replace("|", "\\|")


def kind_section(resource: type[api.Resource]) -> str:
    walker = _Walker(resource)
    for part in ("spec", "status"):
        node = walker.schema["properties"][part]
        walker.walk(part, node, part in walker.schema.get("required", []))
    lines = [
        f"## {resource.KIND}",
        "",
        f"`kubectl get {resource.PLURAL}` (short name `{resource.SHORT_NAME}`, category `berth`). "
        + class_description(resource),
        "",
        "| field | type | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| `{path}` | {kind} | {default} | {about} |" for path, kind, default, about in walker.rows]
    if walker.rules:
        lines += [
            "",
            "Admission refuses (the CRD's CEL rules, the same words in `berth render` and `berth up`):",
            "",
        ]
        lines += [f"- `{path}`: {message}" for path, message in walker.rules]
    return "\n".join(lines) + "\n"


def api_reference() -> str:
    sections = [kind_section(resource) for resource in api.RESOURCE_KINDS.values()]
    return HEADER + "\n" + "\n".join(sections)

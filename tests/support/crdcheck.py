"""Admission of custom resources offline, as the Kubernetes API server does it.

`admit(crd, obj)` returns the API server's verdict as messages (empty = admitted): strict
decoding (unknown fields), structural schema validation with jsonschema, list-type map/set
uniqueness, then every `x-kubernetes-validations` rule evaluated with cel-python at its place in
the tree, with `oldSelf` on updates. Messages follow the API server's wording, for example
`spec.productionVariants[0].initialVariantWeight: Invalid value: -1:
spec.productionVariants[0].initialVariantWeight in body should be greater than or equal to 0` or
`spec: Invalid value: "object": <rule message>` (kube-apiserver 1.30 to 1.34; 1.35 leaves out
"object"). The real API server tier (tests/cluster) holds the admission tables to the real words.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.support import celk8s

Schema = dict[str, Any]
MISSING: Any = object()  # "no value at this path", as opposed to a JSON null

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
SKIPPED_RULES = (
    '<nil>: Invalid value: "null": some validation rules were not checked because the object was invalid; '
    "correct the existing errors to complete validation"
)
# The API server does not run CEL rules after errors of these kinds (type, required, enum, too long/many).
BLOCKING_KEYWORDS = {"type", "required", "enum", "maxLength", "maxItems", "maxProperties"}


# --------------------------------------------------------------------------- loading


def load_crd(path: str | Path) -> Schema:
    """The (first) CustomResourceDefinition in a YAML file."""
    with open(path) as stream:
        for document in yaml.safe_load_all(stream):
            if document and document.get("kind") == "CustomResourceDefinition":
                return dict(document)
    raise ValueError(f"{path} holds no CustomResourceDefinition")


@cache
def httproute_crd() -> Schema:
    """The standard-channel HTTPRoute CRD (tests/support/testdata.py finds it); a missing file
    fails loudly, it never skips a check."""
    from tests.support.testdata import HTTPROUTE_CRD, data_file

    return load_crd(data_file(HTTPROUTE_CRD))


def berth_crds() -> dict[str, Schema]:
    """Our CRDs as `berth crds` generates them, by kind."""
    from berth_operator import api, crdgen

    return {kind: crdgen.crd_for(resource) for kind, resource in api.RESOURCE_KINDS.items()}


# --------------------------------------------------------------------------- paths and values


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def shown(path: str) -> str:
    return path or "<nil>"


def literal(value: Any) -> str:
    """A value the way the API server quotes it in `Invalid value: ...`."""
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    return json.dumps(value)


def schema_type(schema: Schema) -> str:
    return str(schema.get("type", ""))


def sub_schema(schema: Schema, key: str | int) -> Schema | None:
    """The schema of a property, map entry or list item; None for a field the schema does not know."""
    if isinstance(key, int):
        items = schema.get("items")
        return items if isinstance(items, dict) else None
    if key in schema.get("properties", {}):
        return dict(schema["properties"][key])
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def child_schemas(schema: Schema, value: Any) -> Iterator[tuple[str | int, Schema]]:
    """The schema of each child present in `value`, keyed by property name, map key or index."""
    keys: list[str | int] = list(value) if isinstance(value, dict) else []
    if isinstance(value, list):
        keys = list(range(len(value)))
    for key in keys:
        sub = sub_schema(schema, key)
        if sub is not None:
            yield key, sub


def child_path(path: str, schema: Schema, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if key in schema.get("properties", {}):
        return join(path, key)
    return join(path, key)  # a map key: the OpenAPI validation of kube-apiserver joins it with a dot


# --------------------------------------------------------------------------- pruning nulls, defaulting


def prune_nulls_and_default(schema: Schema, value: Any) -> Any:
    """Drop nulls of non-nullable fields, then apply `default`s (the API server's decoding order)."""
    if isinstance(value, dict):
        for key in list(value):
            sub = sub_schema(schema, key)
            if value[key] is None and sub is not None and not sub.get("nullable"):
                del value[key]
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
    for key, sub in child_schemas(schema, value):
        prune_nulls_and_default(sub, value[key])
    return value


# --------------------------------------------------------------------------- structural validation


def closed(schema: Schema) -> Schema:
    """The schema for jsonschema: unknown fields refused, int-or-string and nullable honoured."""
    out = dict(schema)
    if out.get("x-kubernetes-int-or-string") and "type" not in out:
        out["type"] = ["integer", "string"]
    if out.get("nullable") and "type" in out:
        out["type"] = [*([out["type"]] if isinstance(out["type"], str) else out["type"]), "null"]
    if "properties" in out:
        out["properties"] = {name: closed(sub) for name, sub in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = closed(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = closed(out["items"])
    out.pop("format", None)  # the API server checks few formats; our CRDs and HTTPRoute need none
    return out


def schema_message(error: jsonschema.ValidationError, path: str) -> list[str]:
    keyword, limit, instance = error.validator, error.validator_value, error.instance
    schema: Schema = error.schema if isinstance(error.schema, dict) else {}
    at = shown(path)
    if keyword == "additionalProperties":
        known = set(schema.get("properties", {}))
        return [f'unknown field "{join(path, name)}"' for name in instance if name not in known]
    if keyword == "required":
        return [f"{join(path, name)}: Required value" for name in limit if name not in instance]
    if keyword == "type":
        expected = limit if isinstance(limit, str) else " or ".join(limit)
        return [f"{at}: Invalid value: {literal(instance)}: must be of type {expected}"]
    if keyword == "enum":
        supported = ", ".join(json.dumps(option) for option in limit)
        return [f"{at}: Unsupported value: {literal(instance)}: supported values: {supported}"]
    # kube-apiserver words bounds from the OpenAPI schema with the field's path "in body".
    if keyword == "minimum":
        relation = "greater than" if schema.get("exclusiveMinimum") is True else "greater than or equal to"
        return [f"{at}: Invalid value: {literal(instance)}: {at} in body should be {relation} {limit}"]
    if keyword == "maximum":
        relation = "less than" if schema.get("exclusiveMaximum") is True else "less than or equal to"
        return [f"{at}: Invalid value: {literal(instance)}: {at} in body should be {relation} {limit}"]
    if keyword == "minLength":
        return [f"{at}: Invalid value: {literal(instance)}: must be at least {limit} chars long"]
    if keyword == "maxLength":
        return [f"{at}: Too long: may not be more than {limit} bytes"]
    if keyword == "pattern":
        return [f"{at}: Invalid value: {literal(instance)}: must match '{limit}'"]
    if keyword == "minItems":
        return [f"{at}: Invalid value: {len(instance)}: {at} in body should have at least {limit} items"]
    if keyword in ("maxItems", "maxProperties"):
        return [f"{at}: Too many: {len(instance)}: must have at most {limit} items"]
    if keyword == "minProperties":
        return [f"{at}: Invalid value: {len(instance)}: must have at least {limit} properties"]
    return [f"{at}: Invalid value: {literal(instance)}: {error.message}"]


def error_path(root: Schema, error: jsonschema.ValidationError) -> str:
    path, schema = "", root
    for key in error.absolute_path:
        path = child_path(path, schema, key)
        schema = sub_schema(schema, key) or {}
    return path


@cache
def _validator(schema_json: str) -> jsonschema.Draft4Validator:
    # Draft 4 reads `exclusiveMinimum: true` as OpenAPI v3.0 does.
    return jsonschema.Draft4Validator(closed(json.loads(schema_json)))


def structural_errors(schema: Schema, obj: Any) -> tuple[list[str], bool]:
    """Messages of the schema validation, and whether they stop the CEL rules from running."""
    validator = _validator(json.dumps(schema, sort_keys=True))
    messages: list[str] = []
    blocking = False
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        messages += schema_message(error, error_path(schema, error))
        blocking = blocking or error.validator in BLOCKING_KEYWORDS
    return messages, blocking


def list_key(item: Any, keys: list[str]) -> tuple[Any, ...]:
    return tuple(json.dumps(item.get(key) if isinstance(item, dict) else None) for key in keys)


def list_type_errors(schema: Schema, value: Any, path: str = "") -> list[str]:
    """x-kubernetes-list-type set/map: no two items (or item keys) alike."""
    messages: list[str] = []
    list_type = schema.get("x-kubernetes-list-type")
    if isinstance(value, list) and list_type in ("set", "map"):
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen: set[Any] = set()
        for index, item in enumerate(value):
            identity = list_key(item, keys) if list_type == "map" else json.dumps(item, sort_keys=True)
            if identity in seen:
                shown_key = {k: item.get(k) for k in keys} if list_type == "map" else item
                messages.append(f"{path}[{index}]: Duplicate value: {json.dumps(shown_key)}")
            seen.add(identity)
    for key, sub in child_schemas(schema, value):
        messages += list_type_errors(sub, value[key], child_path(path, schema, key))
    return messages


def metadata_errors(obj: Schema) -> list[str]:
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict) or not metadata.get("name"):
        return ["metadata.name: Required value: name or generateName is required"]
    name = metadata["name"]
    if not isinstance(name, str) or len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        return [
            f"metadata.name: Invalid value: {literal(name)}: a lowercase RFC 1123 subdomain must consist of lower "
            "case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        ]
    return []


# --------------------------------------------------------------------------- CEL rules


def rule_errors(schema: Schema, value: Any, old: Any, path: str = "") -> list[str]:
    """Every x-kubernetes-validations rule in the tree, evaluated where its value exists."""
    messages: list[str] = []
    for rule in schema.get("x-kubernetes-validations", []):
        if celk8s.is_transition_rule(rule["rule"]) and old is MISSING:
            continue  # transition rules run on updates only, where the old value exists
        verdict = celk8s.evaluate_rule(rule, schema, value, old, has_old=old is not MISSING)
        if verdict is not None:
            messages.append(rule_message(rule, schema, path, verdict))
    for key, sub in child_schemas(schema, value):
        messages += rule_errors(
            sub, value[key], correlated(schema, old, value, key), child_path(path, schema, key)
        )
    return messages


def correlated(schema: Schema, old: Any, value: Any, key: str | int) -> Any:
    """The old value at the same place, as the API server correlates them (lists only by map keys)."""
    if old is MISSING:
        return MISSING
    if isinstance(key, str):
        return old[key] if isinstance(old, dict) and key in old else MISSING
    if schema.get("x-kubernetes-list-type") == "map" and isinstance(old, list):
        keys = schema.get("x-kubernetes-list-map-keys", [])
        wanted = list_key(value[key], keys)
        return next((item for item in old if list_key(item, keys) == wanted), MISSING)
    return MISSING


def rule_message(rule: Schema, schema: Schema, path: str, message: str) -> str:
    if rule.get("fieldPath"):
        path = (
            path + rule["fieldPath"]
            if rule["fieldPath"].startswith((".", "["))
            else join(path, rule["fieldPath"])
        )
    reason = rule.get("reason", "FieldValueInvalid")
    if reason == "FieldValueForbidden":
        return f"{shown(path)}: Forbidden: {message}"
    if reason == "FieldValueRequired":
        return f"{shown(path)}: Required value: {message}"
    if reason == "FieldValueDuplicate":
        return f"{shown(path)}: Duplicate value: {message}"
    return f'{shown(path)}: Invalid value: "{schema_type(schema)}": {message}'


# --------------------------------------------------------------------------- admission


@cache
def _version_schema(crd_json: str, version: str) -> Schema:
    crd = json.loads(crd_json)
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return dict(entry["schema"]["openAPIV3Schema"])
    raise ValueError(f"{crd['metadata']['name']} has no version {version}")


def pick_version(crd: Schema, obj: Schema, version: str | None) -> str:
    if version:
        return version
    group, _, wanted = str(obj.get("apiVersion", "")).rpartition("/")
    served = [entry["name"] for entry in crd["spec"]["versions"] if entry.get("served", True)]
    if group == crd["spec"]["group"] and wanted in served:
        return wanted
    return next(entry["name"] for entry in crd["spec"]["versions"] if entry.get("storage"))


def envelope_errors(crd: Schema, obj: Schema, version: str) -> list[str]:
    messages = []
    api_version = f"{crd['spec']['group']}/{version}"
    if obj.get("apiVersion") != api_version:
        # kube-apiserver's answer to a strict create at the served version's URL (kubectl refuses
        # it earlier: no matches for kind)
        wanted = str(obj.get("apiVersion", "")).rpartition("/")[2]
        kind = crd["spec"]["names"]["kind"]
        messages.append(f'{kind} in version "{wanted}" cannot be handled as a {kind}')
    if obj.get("kind") != crd["spec"]["names"]["kind"]:
        messages.append(
            f"kind: Invalid value: {literal(obj.get('kind'))}: must be {crd['spec']['names']['kind']}"
        )
    return messages


def admit(crd: Schema, obj: Schema, old: Schema | None = None, version: str | None = None) -> list[str]:
    """The API server's verdict on creating `obj` (or updating `old` to `obj`): [] means admitted."""
    version = pick_version(crd, obj, version)
    schema = _version_schema(json.dumps(crd, sort_keys=True), version)
    messages = envelope_errors(crd, obj, version)
    new = prune_nulls_and_default(schema, copy.deepcopy(obj))
    previous = MISSING if old is None else prune_nulls_and_default(schema, copy.deepcopy(old))

    structural, blocking = structural_errors(schema, new)
    unknown = [message for message in structural if message.startswith("unknown field")]
    if unknown:  # strict field validation (kubectl's default) refuses the request before validating it
        return messages + unknown
    messages += structural + metadata_errors(new) + list_type_errors(schema, new)
    if blocking:
        return [*messages, SKIPPED_RULES]
    return messages + rule_errors(schema, new, previous)

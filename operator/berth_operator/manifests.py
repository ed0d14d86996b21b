"""Load Model, EndpointConfig and Endpoint manifests from files, directories or multi-document YAML.

Used by `berth render` and `berth up`. Manifests are parsed with the same pydantic types as
the operator, so a bad manifest is refused with the words the cluster would use, e.g.

    examples/ep.yaml:document 2: EndpointConfig/fraud: spec.productionVariants[0].variantName: ...
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .api import (
    API_VERSION,
    RESOURCE_KINDS,
    Endpoint,
    EndpointConfig,
    Model,
    MonitoringSchedule,
    Resource,
    validation_problems,
)

YAML_SUFFIXES = (".yaml", ".yml")


class ManifestError(ValueError):
    """A manifest cannot be read or is invalid; the message says where and why."""


@dataclass(frozen=True)
class Loaded:
    """A resource and where it came from."""

    resource: Resource
    source: Path
    document: int  # 1-based position in its file

    @property
    def base_dir(self) -> Path:
        """Directory that relative file:// model URIs are resolved against."""
        return self.source.parent


@dataclass(frozen=True)
class SecretManifest:
    """A core v1 Secret among the manifests (local mode reads an APIKey Endpoint's keys from it)."""

    namespace: str
    name: str
    entries: dict[str, bytes]  # data (base64-decoded) and stringData, as the API server merges them


@dataclass
class Manifests:
    models: list[Loaded] = field(default_factory=list)
    configs: list[Loaded] = field(default_factory=list)
    endpoints: list[Loaded] = field(default_factory=list)
    monitoring: list[Loaded] = field(default_factory=list)  # MonitoringSchedules: `berth render` plans them
    secrets: list[SecretManifest] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # documents that were skipped, and why

    def models_in(self, namespace: str) -> dict[str, Model]:
        found = (item.resource for item in self.models)
        return {r.name: r for r in found if isinstance(r, Model) and r.namespace == namespace}

    def configs_in(self, namespace: str) -> dict[str, EndpointConfig]:
        found = (item.resource for item in self.configs)
        return {r.name: r for r in found if isinstance(r, EndpointConfig) and r.namespace == namespace}

    def endpoint_resources(self) -> list[Endpoint]:
        return [item.resource for item in self.endpoints if isinstance(item.resource, Endpoint)]

    def monitoring_resources(self) -> list[MonitoringSchedule]:
        return [item.resource for item in self.monitoring if isinstance(item.resource, MonitoringSchedule)]


def resolve_file_uri(uri: str, base_dir: Path | str) -> str:
    """A relative file:// URI (file://model.onnx) made absolute against the manifest's directory."""
    prefix = "file://"
    if not uri.startswith(prefix) or uri[len(prefix) :].startswith("/"):
        return uri
    return prefix + str((Path(base_dir) / uri[len(prefix) :]).resolve())


def yaml_files(path: Path) -> list[Path]:
    """path itself, or every *.yaml / *.yml below it, sorted."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in YAML_SUFFIXES)
    if path.is_file():
        return [path]
    raise ManifestError(f"{path}: no such file or directory")


def parse_document(doc: Any, where: str) -> Resource | None:
    """A Berth resource from one YAML document; None for other kinds (noted by the caller)."""
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: not a mapping")
    kind = doc.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ManifestError(f"{where}: missing kind")
    cls = RESOURCE_KINDS.get(kind)
    if cls is None or (doc.get("apiVersion") or "").split("/")[0] != API_VERSION.split("/")[0]:
        return None
    meta = doc.get("metadata")
    name = (meta.get("name") if isinstance(meta, dict) else None) or "?"
    if doc.get("apiVersion") != API_VERSION:
        raise ManifestError(
            f"{where}: {kind}/{name}: apiVersion: must be {API_VERSION}, not {doc.get('apiVersion')}"
        )
    try:
        return cls.model_validate(doc)
    except ValidationError as exc:
        problems = [f"{where}: {kind}/{name}: {problem}" for problem in validation_problems(exc)]
        raise ManifestError("\n".join(problems)) from None


def parse_secret(doc: dict[str, Any], where: str) -> SecretManifest:
    """A v1 Secret's entries; stringData wins over data for the same key, as on a cluster."""
    raw_meta = doc.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    name = str(meta.get("name") or "")
    if not name:
        raise ManifestError(f"{where}: Secret: metadata.name: required")
    entries: dict[str, bytes] = {}
    for section in ("data", "stringData"):
        values = doc.get(section) or {}
        if not isinstance(values, dict):
            raise ManifestError(f"{where}: Secret/{name}: {section}: must be a mapping")
        for key, value in values.items():
            if not isinstance(value, str):
                raise ManifestError(f"{where}: Secret/{name}: {section}.{key}: must be a string")
            if section == "stringData":
                entries[str(key)] = value.encode()
                continue
            try:
                entries[str(key)] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ManifestError(f"{where}: Secret/{name}: data.{key}: not base64") from None
    return SecretManifest(str(meta.get("namespace") or "default"), name, entries)


def load_manifests(paths: Iterable[str | Path]) -> Manifests:
    """Every Berth resource in paths; ManifestError lists every problem found."""
    result = Manifests()
    problems: list[str] = []
    seen: dict[tuple[str, str, str], str] = {}
    for root in paths:
        # A directory may hold other YAML too (Helm values, kustomization files): documents
        # that are not Kubernetes objects are skipped there; a file named directly must be one.
        walking = Path(root).is_dir()
        try:
            files = yaml_files(Path(root))
        except ManifestError as exc:
            problems.append(str(exc))
            continue
        for path in files:
            try:
                documents = list(yaml.safe_load_all(path.read_text()))
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
                problems.append(f"{path}: cannot read YAML: {exc}")
                continue
            for number, doc in enumerate(documents, start=1):
                if doc is None:
                    continue
                where = f"{path}:document {number}"
                if walking and isinstance(doc, dict) and not doc.get("kind"):
                    result.notes.append(f"{where}: ignored (not a Kubernetes object)")
                    continue
                try:
                    if (
                        isinstance(doc, dict)
                        and doc.get("kind") == "Secret"
                        and doc.get("apiVersion") == "v1"
                    ):
                        result.secrets.append(parse_secret(doc, where))
                        continue
                    resource = parse_document(doc, where)
                except ManifestError as exc:
                    problems.append(str(exc))
                    continue
                if resource is None:
                    result.notes.append(
                        f"{where}: ignored {doc.get('apiVersion')} {doc.get('kind')} (not a Berth kind)"
                    )
                    continue
                key = (resource.kind, resource.namespace, resource.name)
                if key in seen:
                    problems.append(
                        f"{where}: {resource.kind}/{resource.name}: defined twice (first in {seen[key]})"
                    )
                    continue
                seen[key] = where
                loaded = Loaded(resource, path, number)
                bucket = {
                    "Model": result.models,
                    "EndpointConfig": result.configs,
                    "Endpoint": result.endpoints,
                    "MonitoringSchedule": result.monitoring,
                }
                if resource.kind not in bucket:  # a TransformJob: `berth transform` runs it, not serving
                    result.notes.append(f"{where}: ignored {resource.kind}/{resource.name} (not served)")
                    continue
                bucket[resource.kind].append(loaded)
    if problems:
        raise ManifestError("\n".join(problems))
    return result

"""The manifests `berth up` serves: loaded with the cluster's own types and admission rules.

Relative `file://` model URIs are resolved against the directory of the manifest that
names them, so a project directory can be served from anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..api import MSG_CONFIG_IMMUTABLE, MSG_MODEL_IMMUTABLE, Endpoint, EndpointConfig, Model

Key = tuple[str, str]


class SourceError(ValueError):
    """The manifests cannot be served; the message says which file, object and field."""


@dataclass(frozen=True)
class Resources:
    models: dict[Key, Model] = field(default_factory=dict)
    configs: dict[Key, EndpointConfig] = field(default_factory=dict)
    endpoints: dict[Key, Endpoint] = field(default_factory=dict)


def absolute_file_uri(uri: str, base_dir: Path) -> str:
    """`file://model.onnx` next to the manifest -> `file:///abs/dir/model.onnx`."""
    if not uri.startswith("file://"):
        return uri
    rest = uri[len("file://") :]
    if rest.startswith("/"):
        return uri
    return "file://" + str((base_dir / rest).resolve())


def load_resources(paths: Sequence[str | Path]) -> Resources:
    """Every Model, EndpointConfig and Endpoint under `paths`; duplicates are refused."""
    from ..manifests import ManifestError, load_manifests

    try:
        loaded = load_manifests([Path(p) for p in paths])
    except ManifestError as exc:
        raise SourceError(str(exc)) from exc
    resources = Resources()
    for item in loaded:
        resource = item.resource
        key = (resource.namespace, resource.name)
        if isinstance(resource, Model):
            if item.source is not None:
                uri = absolute_file_uri(resource.spec.model_uri, item.source.parent)
                resource = resource.model_copy(
                    update={"spec": resource.spec.model_copy(update={"model_uri": uri})}
                )
            table: dict[Key, Model] | dict[Key, EndpointConfig] | dict[Key, Endpoint] = resources.models
        elif isinstance(resource, EndpointConfig):
            table = resources.configs
        elif isinstance(resource, Endpoint):
            table = resources.endpoints
        else:
            continue
        if key in table:
            raise SourceError(f"{item.source}: {resource.kind} {key[0]}/{key[1]} is defined twice")
        table[key] = resource
    if not resources.endpoints:
        raise SourceError(f"no Endpoint found in {', '.join(str(p) for p in paths)}")
    return resources


def immutability_errors(old: Resources, new: Resources) -> list[str]:
    """Edits the cluster's admission would refuse: Model and EndpointConfig specs are immutable."""
    errors = []
    for key, model in new.models.items():
        previous = old.models.get(key)
        if previous is not None and previous.spec != model.spec:
            errors.append(f"Model {key[0]}/{key[1]}: {MSG_MODEL_IMMUTABLE}")
    for key, config in new.configs.items():
        before = old.configs.get(key)
        if before is not None and before.spec != config.spec:
            errors.append(f"EndpointConfig {key[0]}/{key[1]}: {MSG_CONFIG_IMMUTABLE}")
    return errors

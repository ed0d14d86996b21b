"""The manifests `berth up` serves: loaded with the cluster's own types and admission rules.

Relative `file://` URIs (a Model's, a capture destination, a MonitoringSchedule's baseline and
output) are resolved against the directory of the manifest that names them, so a project
directory can be served from anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..api import (
    MSG_CONFIG_IMMUTABLE,
    MSG_MODEL_IMMUTABLE,
    Endpoint,
    EndpointConfig,
    Model,
    MonitoringSchedule,
)
from ..planner import cron

Key = tuple[str, str]


class SourceError(ValueError):
    """The manifests cannot be served; the message says which file, object and field."""


@dataclass(frozen=True)
class Resources:
    models: dict[Key, Model] = field(default_factory=dict)
    configs: dict[Key, EndpointConfig] = field(default_factory=dict)
    endpoints: dict[Key, Endpoint] = field(default_factory=dict)
    secrets: dict[Key, dict[str, bytes]] = field(default_factory=dict)  # v1 Secrets: entry -> value
    monitoring: dict[Key, MonitoringSchedule] = field(default_factory=dict)  # run on their cron


def load_resources(paths: Sequence[str | Path]) -> Resources:
    """Every Model, EndpointConfig and Endpoint under `paths` (the loader `berth render` uses)."""
    from ..manifests import ManifestError, load_manifests

    try:
        loaded = load_manifests(paths)
    except ManifestError as exc:
        raise SourceError(str(exc)) from exc
    models: dict[Key, Model] = {}
    for item in loaded.models:
        assert isinstance(item.resource, Model)
        model = item.resource
        where = f"{item.source}:document {item.document}: Model/{model.name}"
        models[(model.namespace, model.name)] = with_local_model_uris(model, item.base_dir, where)
    configs = {
        (i.resource.namespace, i.resource.name): with_local_locations(i.resource, i.base_dir)
        for i in loaded.configs
        if isinstance(i.resource, EndpointConfig)
    }
    endpoints = {
        (i.resource.namespace, i.resource.name): i.resource
        for i in loaded.endpoints
        if isinstance(i.resource, Endpoint)
    }
    if not endpoints:
        raise SourceError(f"no Endpoint found in {', '.join(str(p) for p in paths)}")
    secrets = {(s.namespace, s.name): s.entries for s in loaded.secrets}
    monitoring: dict[Key, MonitoringSchedule] = {}
    problems = []
    for item in loaded.monitoring:
        assert isinstance(item.resource, MonitoringSchedule)
        schedule = item.resource
        try:
            cron.parse(schedule.spec.schedule)
        except cron.CronError as exc:  # the CRD's pattern admits it, the CronJob's validation would not
            problems.append(
                f"{item.source}:document {item.document}: MonitoringSchedule/{schedule.name}: spec.schedule: {exc}"
            )
            continue
        monitoring[(schedule.namespace, schedule.name)] = with_local_monitoring_uris(schedule, item.base_dir)
    if problems:
        raise SourceError("\n".join(problems))
    return Resources(
        models=models, configs=configs, endpoints=endpoints, secrets=secrets, monitoring=monitoring
    )


def _resolved_prefix(uri: str, base_dir: Path) -> str:
    """A relative file:// URI made absolute, keeping the trailing slash of a prefix."""
    from ..manifests import resolve_file_uri

    absolute = resolve_file_uri(uri, base_dir)
    return absolute + "/" if uri.endswith("/") and not absolute.endswith("/") else absolute


def with_local_monitoring_uris(schedule: MonitoringSchedule, base_dir: Path) -> MonitoringSchedule:
    """The schedule's relative file:// baseline and output made absolute against its manifest's directory."""
    spec = schedule.spec
    baseline = spec.baseline.model_copy(
        update={
            "statistics_uri": _resolved_prefix(spec.baseline.statistics_uri, base_dir),
            "constraints_uri": _resolved_prefix(spec.baseline.constraints_uri, base_dir),
        }
    )
    spec = spec.model_copy(
        update={"baseline": baseline, "output_uri": _resolved_prefix(spec.output_uri, base_dir)}
    )
    return schedule.model_copy(update={"spec": spec})


MSG_NO_IMAGE_STAGES = (
    "berth up runs no containers, so it cannot run an image stage: serve this Model on a cluster,"
    " or make the stage an ONNX model (modelUri)"
)


def with_local_model_uris(model: Model, base_dir: Path, where: str) -> Model:
    """The Model with its relative file:// URIs (modelUri, or each pipeline stage's) made absolute
    against the manifest's directory; SourceError for a pipeline with an image stage."""
    from ..manifests import resolve_file_uri

    spec = model.spec
    if spec.is_pipeline:
        for name, stage in spec.stages:
            if stage.is_image:
                raise SourceError(
                    f"{where}: pipeline stage {name} (image {stage.image}): {MSG_NO_IMAGE_STAGES}"
                )
        stages = [
            stage.model_copy(update={"model_uri": resolve_file_uri(stage.model_uri, base_dir)})
            if stage.model_uri is not None
            else stage
            for stage in spec.pipeline
        ]
        return model.model_copy(update={"spec": spec.model_copy(update={"pipeline": stages})})
    uri = resolve_file_uri(spec.uri, base_dir)
    if spec.uri.endswith("/") and not uri.endswith("/"):  # a MultiModel prefix stays one
        uri += "/"
    return model.model_copy(update={"spec": spec.model_copy(update={"model_uri": uri})})


def with_local_locations(config: EndpointConfig, base_dir: Path) -> EndpointConfig:
    """A config's relative file:// capture destination and async output and failure locations made
    absolute against the manifest's directory (as a Model's file:// URI is), keeping the trailing
    slash of a prefix."""
    capture = config.spec.data_capture
    if capture is not None:
        capture = capture.model_copy(
            update={"destination_uri": _resolved_prefix(capture.destination_uri, base_dir)}
        )
        spec = config.spec.model_copy(update={"data_capture": capture})
        config = config.model_copy(update={"spec": spec})
    async_config = config.spec.async_inference_config
    if async_config is None:
        return config

    def resolved(uri: str | None) -> str | None:
        return None if uri is None else _resolved_prefix(uri, base_dir)

    output = async_config.output_config
    output = output.model_copy(
        update={"output_uri": resolved(output.output_uri), "failure_uri": resolved(output.failure_uri)}
    )
    async_config = async_config.model_copy(update={"output_config": output})
    spec = config.spec.model_copy(update={"async_inference_config": async_config})
    return config.model_copy(update={"spec": spec})


RECOVER = "(or stop and start berth up, which begins afresh)"


def immutability_errors(
    old: Resources, new: Resources, ever_ready: Callable[[Key], bool] = lambda key: True
) -> list[str]:
    """Edits the cluster's admission would refuse: Model and EndpointConfig specs are immutable.

    Local mode lets a Model that never became ready be replaced (a typo in its modelUri is fixed
    in the file); a cluster refuses that too, as the README says where local mode differs."""
    errors = []
    for key, model in new.models.items():
        previous = old.models.get(key)
        if previous is not None and previous.spec != model.spec and ever_ready(key):
            errors.append(f"Model {key[0]}/{key[1]}: {MSG_MODEL_IMMUTABLE} {RECOVER}")
    for key, config in new.configs.items():
        before = old.configs.get(key)
        if before is not None and before.spec != config.spec:
            errors.append(f"EndpointConfig {key[0]}/{key[1]}: {MSG_CONFIG_IMMUTABLE} {RECOVER}")
    return errors

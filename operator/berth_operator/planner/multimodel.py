"""Multi-model variants: what their pods are told, the headless Service their replicas find
each other through, and where a rollout's new fleet warms its models from.

A MultiModel Model's `modelUri` is a prefix; its replicas run `berth serve --multi-model PREFIX`
and fetch each model on its first request with the same fetch code as the storage-initializer,
which such pods therefore do not have. Requests for a model go to the replica that owns it
(rendezvous hashing over the ready replicas, berth_serving.multimodel.rendezvous): the replicas
resolve the variant's headless Service, which lists only ready pods, and know themselves by the
pod IP.

Warm-up: when a rollout starts and a new MultiModel variant serves the same prefix as one of the
old fleet, its pods load that one's most used models (GET /models on the old variant's headless
Service) before they take traffic. The source is recorded in status.rollout.warmFrom when the
rollout starts and carried to status.warmFrom when it completes, so the pod template never
changes because the old fleet went: the server logs an unreachable source and starts cold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from berth_serving.config import DEFAULT_PORT, ENV

from ..api import Endpoint, EndpointStatus, Model
from . import labels
from .meta import object_meta
from .names import peers_service_name
from .types import Manifest

if TYPE_CHECKING:  # fleet.py reads MSG_NO_ASYNC from here
    from .fleet import VariantPlan

PORT_NAME = "http"
PEERS_COMPONENT = "peers"
MODELS_PATH = "/models"  # the serving runtime's list of loaded models, most used first
# The async worker posts the queued body to /invocations with no X-Berth-Target-Model: a
# MultiModel replica could not tell which model a message is for.
MSG_NO_ASYNC = (
    "is MultiModel, which asyncInferenceConfig cannot serve: a queued request carries no"
    " X-Berth-Target-Model; use a real-time EndpointConfig for it"
)


def service_host(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc"


def peers_address(endpoint: str, config: str, variant: str, namespace: str) -> str:
    """BERTH_PEERS of a variant's pods: the headless Service, which the replicas resolve again
    every few seconds."""
    host = service_host(peers_service_name(endpoint, config, variant), namespace)
    return f"dns:{host}:{DEFAULT_PORT}"


def models_url(endpoint: str, config: str, variant: str, namespace: str) -> str:
    """The GET /models of a variant's replicas (any ready one answers for the fleet)."""
    host = service_host(peers_service_name(endpoint, config, variant), namespace)
    return f"http://{host}:{DEFAULT_PORT}{MODELS_PATH}"


def pod_ip_env() -> dict[str, Any]:
    """BERTH_POD_IP from the downward API: the replica's own address among its peers."""
    return {"name": ENV["pod_ip"], "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def headless_service(
    endpoint: Endpoint,
    name: str,
    selector: Mapping[str, str],
    variant_labels: Mapping[str, str],
) -> Manifest:
    """clusterIP None over the variant's pods: its DNS name resolves to every ready replica's IP
    (publishNotReadyAddresses false: a replica still loading, or draining, is no peer)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(endpoint, name, {**variant_labels, labels.BERTH_COMPONENT: PEERS_COMPONENT}),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": False,
            "selector": dict(selector),
            "ports": [{"name": PORT_NAME, "port": DEFAULT_PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


# ---------------------------------------------------------------- rollouts


def warm_sources(
    endpoint: Endpoint,
    source_config: str,
    source_variants: Sequence[VariantPlan],
    target_variants: Sequence[VariantPlan],
) -> dict[str, str]:
    """Target variant name -> the old fleet's /models URL, for each MultiModel target variant with
    warmModels > 0 that serves the prefix a MultiModel variant of the old fleet serves (the one of
    the same name when there are several, else the first)."""
    found: dict[str, str] = {}
    for target in target_variants:
        spec = target.model.spec
        if not spec.is_multi_model or spec.multi_model_settings.warm_models <= 0:
            continue
        same = [
            s
            for s in source_variants
            if s.model.spec.is_multi_model and s.model.spec.model_uri == spec.model_uri
        ]
        if not same:
            continue
        source = next((s for s in same if s.name == target.name), same[0])
        found[target.name] = models_url(endpoint.name, source_config, source.name, endpoint.namespace)
    return dict(sorted(found.items()))


def recorded_warm_from(previous: EndpointStatus, config: str | None) -> dict[str, str]:
    """The warm sources a config's pods were planned with, as the status recorded them: the
    rollout's while it targets the config (or has just completed to it), else the serving one's."""
    if config is None:
        return {}
    if previous.endpoint_config_name == config:
        return dict(previous.warm_from)
    if previous.rollout is not None and previous.rollout.target_endpoint_config_name == config:
        return dict(previous.rollout.warm_from)
    return {}


# ---------------------------------------------------------------- batch transform


def target_model_problem(model: Model, target: str | None) -> tuple[str, str] | None:
    """(reason, message) when a TransformJob's targetModel does not fit its Model, else None."""
    if model.spec.is_multi_model and target is None:
        return (
            "TargetModelRequired",
            f"Model {model.name} is MultiModel (every model under {model.spec.model_uri}): set"
            " targetModel to the one to run, such as customer-17.tar.gz",
        )
    if not model.spec.is_multi_model and target is not None:
        what = "a pipeline" if model.spec.is_pipeline else f"SingleModel ({model.spec.model_uri})"
        return (
            "TargetModelUnexpected",
            f"targetModel {target}: Model {model.name} is {what}, which"
            " has no models to choose from; remove targetModel or name a MultiModel Model",
        )
    return None


def target_model(model: Model, target: str) -> Model:
    """The one model under a MultiModel Model's prefix, as a SingleModel Model with the same
    credentials, runtime and env (a TransformJob's pods fetch it like any model)."""
    spec = model.spec.model_copy(
        update={"model_uri": model.spec.uri + target, "mode": "SingleModel", "multi_model": None}
    )
    return model.model_copy(update={"spec": spec})


def with_warm_from(variant: VariantPlan, sources: Mapping[str, str]) -> VariantPlan:
    """The variant with the warm source its pods are planned with (none for SingleModel)."""
    warm = sources.get(variant.name, "") if variant.model.spec.is_multi_model else ""
    return variant if warm == variant.warm_from else replace(variant, warm_from=warm)

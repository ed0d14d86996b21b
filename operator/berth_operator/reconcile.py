"""One reconcile of an Endpoint (read, plan, apply) and the status of Models and EndpointConfigs.

kopf-free on purpose: the handlers call these with a KubeClient, so the logic can be read and
tested without the framework. The planner decides; this module only reads and writes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from pydantic import ValidationError

from . import scrape
from .api import Endpoint, EndpointConfig, Model
from .apply import diff_children, status_patch
from .kube import RESOURCES, ApiError, KubeClient, ResourceKind, kind_of
from .planner import labels as planner_labels
from .planner.names import label_value
from .planner.resources import config_model_names, config_status, model_names_of, model_status
from .planner.types import FleetMetrics, Manifest, Observed, Plan, PlanInput
from .settings import Settings

log = logging.getLogger(__name__)

GROUP_VERSION = "berth.dev/v1alpha1"
ENDPOINTS = RESOURCES[(GROUP_VERSION, "Endpoint")]
CONFIGS = RESOURCES[(GROUP_VERSION, "EndpointConfig")]
MODELS = RESOURCES[(GROUP_VERSION, "Model")]
DEPLOYMENTS = RESOURCES[("apps/v1", "Deployment")]
SERVICES = RESOURCES[("v1", "Service")]
PODS = RESOURCES[("v1", "Pod")]
HPAS = RESOURCES[("autoscaling/v2", "HorizontalPodAutoscaler")]
PDBS = RESOURCES[("policy/v1", "PodDisruptionBudget")]
INGRESSES = RESOURCES[("networking.k8s.io/v1", "Ingress")]
HTTPROUTES = RESOURCES[("gateway.networking.k8s.io/v1", "HTTPRoute")]

Key = tuple[str, str]  # (namespace, name)


# Both route kinds whatever settings.routing.mode says: after a change of mode the planner
# must see the old kind's objects to delete them. A kind the cluster lacks lists as empty.
ALL_CHILD_KINDS = [DEPLOYMENTS, SERVICES, HPAS, PDBS, HTTPROUTES, INGRESSES]


@dataclass
class References:
    """What each Endpoint and EndpointConfig last referred to, to wake them when it changes."""

    endpoint_configs: dict[Key, set[str]] = field(default_factory=dict)
    endpoint_models: dict[Key, set[str]] = field(default_factory=dict)
    config_models: dict[Key, set[str]] = field(default_factory=dict)
    endpoint_by_label: dict[Key, str] = field(default_factory=dict)  # (ns, label value) -> name

    def endpoints_using_config(self, namespace: str, config: str) -> list[str]:
        return [n for (ns, n), names in self.endpoint_configs.items() if ns == namespace and config in names]

    def endpoints_using_model(self, namespace: str, model: str) -> list[str]:
        return [n for (ns, n), names in self.endpoint_models.items() if ns == namespace and model in names]

    def configs_using_model(self, namespace: str, model: str) -> list[str]:
        return [n for (ns, n), names in self.config_models.items() if ns == namespace and model in names]

    def forget_endpoint(self, key: Key) -> None:
        self.endpoint_configs.pop(key, None)
        self.endpoint_models.pop(key, None)
        for label_key, name in list(self.endpoint_by_label.items()):
            if label_key[0] == key[0] and name == key[1]:
                del self.endpoint_by_label[label_key]


# --------------------------------------------------------------------------- reading


def _parse_optional(cls: type[Model] | type[EndpointConfig], raw: Manifest | None) -> Any:
    if raw is None:
        return None
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        log.warning("ignoring invalid %s %s: %s", raw.get("kind"), raw["metadata"].get("name"), exc)
        return None


async def _get_many(
    kube: KubeClient, kind: ResourceKind, namespace: str, names: Iterable[str]
) -> dict[str, Manifest]:
    unique = sorted(set(names))
    found = await asyncio.gather(*(kube.get(kind, namespace, name) for name in unique))
    return {name: obj for name, obj in zip(unique, found, strict=True) if obj is not None}


async def _list_optional(
    kube: KubeClient, kind: ResourceKind, namespace: str, labels: Mapping[str, str]
) -> list[Manifest]:
    try:
        return await kube.list_objects(kind, namespace, labels)
    except ApiError as exc:
        if exc.status == 404:  # e.g. no Gateway API CRDs in this cluster
            return []
        raise


def config_names_of(endpoint: Endpoint) -> set[str]:
    names = {endpoint.spec.endpoint_config_name}
    status = endpoint.status
    if status is not None:
        for name in (status.endpoint_config_name, status.pending_endpoint_config_name):
            if name:
                names.add(name)
        if status.rollout is not None:
            names.add(status.rollout.target_endpoint_config_name)
    return names


@dataclass
class EndpointState:
    raw: Manifest
    endpoint: Endpoint
    configs: dict[str, EndpointConfig]
    models: dict[str, Model]
    children: list[Manifest]
    pods: list[Manifest]
    referenced_models: set[str]


async def read_endpoint_state(kube: KubeClient, raw: Manifest) -> EndpointState:
    endpoint = Endpoint.model_validate(raw)
    namespace, name = endpoint.namespace, endpoint.name
    selector = {planner_labels.ENDPOINT: planner_labels.endpoint_label(name)}
    lists = [_list_optional(kube, kind, namespace, selector) for kind in ALL_CHILD_KINDS]
    lists.append(_list_optional(kube, PODS, namespace, selector))
    configs_raw_task = _get_many(kube, CONFIGS, namespace, config_names_of(endpoint))
    configs_raw, listed = await asyncio.gather(configs_raw_task, asyncio.gather(*lists))
    configs = {n: c for n, raw_c in configs_raw.items() if (c := _parse_optional(EndpointConfig, raw_c))}
    model_names = model_names_of(configs.values())
    models_raw = await _get_many(kube, MODELS, namespace, model_names)
    models = {n: m for n, raw_m in models_raw.items() if (m := _parse_optional(Model, raw_m))}
    children = [obj for group in listed[:-1] for obj in group]
    return EndpointState(raw, endpoint, configs, models, children, listed[-1], model_names)


# --------------------------------------------------------------------------- metrics


async def fleet_metrics(
    session: aiohttp.ClientSession, settings: Settings, state: EndpointState
) -> dict[str, FleetMetrics]:
    """Metrics of the new fleet while a rollout bakes (the only time the planner judges them)."""
    rollout = state.endpoint.status.rollout if state.endpoint.status else None
    if rollout is None or rollout.state != "Baking":
        return {}
    target = rollout.target_endpoint_config_name
    config_label = label_value(target)
    pods = [
        pod
        for pod in state.pods
        if (pod["metadata"].get("labels") or {}).get(planner_labels.ENDPOINT_CONFIG) == config_label
    ]
    if settings.rollback.prometheus_url:
        names = [pod["metadata"]["name"] for pod in pods]
        metrics = await scrape.query_prometheus(
            session, settings.rollback.prometheus_url, state.endpoint.namespace, names
        )
    else:
        metrics = await scrape.scrape_pods(session, pods)
    return {target: metrics} if metrics is not None else {}


# --------------------------------------------------------------------------- writing


@dataclass
class ApplyResult:
    writes: int = 0
    errors: list[str] = field(default_factory=list)


async def apply_plan(kube: KubeClient, plan: Plan, state: EndpointState) -> ApplyResult:
    """Create, patch and delete children, then the status, then post events. Writes only differences."""
    result = ApplyResult()
    actions = diff_children(plan.objects, plan.delete, state.children)

    async def create(obj: Manifest) -> None:
        try:
            await kube.create(obj)
        except ApiError as exc:
            if exc.status != 409:  # 409: made meanwhile; the next reconcile compares it
                raise
        result.writes += 1

    async def patch(observed: Manifest, body: dict[str, Any]) -> None:
        meta = observed["metadata"]
        await kube.merge_patch(kind_of(observed), meta["namespace"], meta["name"], body)
        result.writes += 1

    async def delete(ref: Any) -> None:
        await kube.delete(RESOURCES[(ref.api_version, ref.kind)], ref.namespace, ref.name)
        result.writes += 1

    outcomes = await asyncio.gather(
        *(create(obj) for obj in actions.create),
        *(patch(obs, body) for obs, body in actions.patch),
        *(delete(ref) for ref in actions.delete),
        return_exceptions=True,
    )
    result.errors = [str(o) for o in outcomes if isinstance(o, BaseException)]

    desired_status = plan.status.to_wire()
    body = status_patch(state.raw.get("status"), desired_status)
    if body is not None:
        meta = state.raw["metadata"]
        await kube.patch_status(ENDPOINTS, meta["namespace"], meta["name"], body)
        result.writes += 1
    for event in plan.events:
        await kube.post_event(state.raw, event.type, event.reason, event.message)
    return result


# --------------------------------------------------------------------------- Model / EndpointConfig status


async def sync_model_status(kube: KubeClient, raw: Manifest, now: datetime) -> bool:
    body = status_patch(raw.get("status"), model_status(raw, now))
    if body is None:
        return False
    meta = raw["metadata"]
    await kube.patch_status(MODELS, meta["namespace"], meta["name"], body)
    return True


async def sync_config_status(kube: KubeClient, references: References, raw: Manifest, now: datetime) -> bool:
    meta = raw["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    wanted = config_model_names(raw)
    if wanted is None:  # invalid spec: config_status says why
        references.config_models.pop((namespace, name), None)
        found: dict[str, Manifest] = {}
    else:
        references.config_models[(namespace, name)] = wanted
        found = await _get_many(kube, MODELS, namespace, wanted)
    body = status_patch(raw.get("status"), config_status(raw, set(found), now))
    if body is None:
        return False
    await kube.patch_status(CONFIGS, namespace, name, body)
    return True


async def delete_children(kube: KubeClient, namespace: str, name: str) -> int:
    """Delete every object labelled as the Endpoint's child (no garbage collector needed)."""
    selector = {planner_labels.ENDPOINT: planner_labels.endpoint_label(name)}
    listed = await asyncio.gather(
        *(_list_optional(kube, kind, namespace, selector) for kind in ALL_CHILD_KINDS)
    )
    doomed = [obj for group in listed for obj in group]
    await asyncio.gather(*(kube.delete(kind_of(obj), namespace, obj["metadata"]["name"]) for obj in doomed))
    return len(doomed)


def planner_input(state: EndpointState, settings: Settings, metrics: dict[str, FleetMetrics]) -> PlanInput:
    return PlanInput(
        endpoint=state.endpoint,
        configs=state.configs,
        models=state.models,
        settings=settings,
        observed=Observed(now=datetime.now(UTC), children=state.children, pods=state.pods, metrics=metrics),
    )

"""Test helpers for the planner: resources from short dicts, and a fake cluster that applies plans.

`Cluster` does what the operator and the kubelet would: it stores the planned objects
(as the API server would, with generation bookkeeping), marks Deployments ready when told
to, deletes what the plan deletes, and feeds the status back into the Endpoint.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from berth_operator.api import Endpoint, EndpointConfig, Model
from berth_operator.planner import FleetMetrics, Observed, Plan, PlanInput, plan_endpoint
from berth_operator.settings import Settings

from tests.support.routestatus import parents_status

NAMESPACE = "prod"
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def model(name: str, **spec: Any) -> Model:
    body = {"modelUri": f"s3://models/{name}/model.onnx", **spec}
    return Model.model_validate(
        {"kind": "Model", "metadata": {"name": name, "namespace": NAMESPACE}, "spec": body}
    )


def variant(name: str, model_name: str, **fields: Any) -> dict[str, Any]:
    return {"variantName": name, "modelName": model_name, "instanceType": "cpu-small", **fields}


def config(name: str, *variants: dict[str, Any], shadows: tuple[dict[str, Any], ...] = ()) -> EndpointConfig:
    spec: dict[str, Any] = {"productionVariants": list(variants)}
    if shadows:
        spec["shadowProductionVariants"] = list(shadows)
    return EndpointConfig.model_validate(
        {"kind": "EndpointConfig", "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}
    )


def endpoint(config_name: str, name: str = "fraud", uid: str | None = "uid-1", **spec: Any) -> Endpoint:
    meta: dict[str, Any] = {"name": name, "namespace": NAMESPACE, "generation": 1}
    if uid:
        meta["uid"] = uid
    return Endpoint.model_validate(
        {"kind": "Endpoint", "metadata": meta, "spec": {"endpointConfigName": config_name, **spec}}
    )


def with_spec(ep: Endpoint, **changes: Any) -> Endpoint:
    """The endpoint after a spec edit: generation bumped, status kept."""
    wire = ep.model_dump(by_alias=True, exclude_none=True, mode="json")
    wire["spec"].update(changes)
    wire["metadata"]["generation"] = (ep.metadata.generation or 0) + 1
    return Endpoint.model_validate(wire)


_ADMITTED: set[str] = set()


def admitted(objects: list[dict[str, Any]]) -> None:
    """Every object a test plan produces must be one the API server admits (checked once each)."""
    from .validation import assert_admitted

    fresh = {_shape(o): o for o in objects if _shape(o) not in _ADMITTED}
    assert_admitted(list(fresh.values()))
    _ADMITTED.update(fresh)


def _shape(obj: dict[str, Any]) -> str:
    """The object with route weights left out: a weight is checked here, the rest by admission once."""
    if obj["kind"] != "HTTPRoute":
        return json.dumps(obj, sort_keys=True)
    shape = copy.deepcopy(obj)
    for rule in shape["spec"]["rules"]:
        for ref in rule.get("backendRefs", []):
            assert 0 <= ref["weight"] <= 1_000_000 and isinstance(ref["weight"], int), ref
            ref["weight"] = 1
    return json.dumps(shape, sort_keys=True)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge key by key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        result[key] = merge_patch(result.get(key), value)
    return result


@dataclass
class Cluster:
    """The objects of one namespace, changed only through plans (and the kubelet helpers)."""

    endpoint: Endpoint
    configs: dict[str, EndpointConfig]
    models: dict[str, Model]
    settings: Settings = field(default_factory=Settings)
    now: datetime = EPOCH
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pods: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, FleetMetrics] = field(default_factory=dict)
    auto_ready: bool = True  # Deployments become ready as soon as they are applied
    not_ready: set[str] = field(default_factory=set)  # Deployment names that never get ready
    gateway_accepts: bool = True  # the Gateway's controller accepts every route it is given
    unavailable_kinds: frozenset[str] = frozenset()  # kinds this cluster has no CRD for

    def observed(self) -> Observed:
        return Observed(
            now=self.now,
            children=[copy.deepcopy(o) for _, o in sorted(self.objects.items())],
            pods=copy.deepcopy(self.pods),
            metrics=dict(self.metrics),
            unavailable_kinds=self.unavailable_kinds,
        )

    def plan(self) -> Plan:
        return plan_endpoint(
            PlanInput(self.endpoint, self.configs, self.models, self.settings, self.observed())
        )

    def apply(self, plan: Plan) -> None:
        admitted(plan.objects)
        for obj in plan.objects:
            key = (obj["kind"], obj["metadata"]["name"])
            old = self.objects.get(key)
            if old is None:
                stored = copy.deepcopy(obj)
                stored["metadata"]["generation"] = 1
            else:  # a JSON merge patch, as the operator sends: fields others set (replicas by an HPA) stay
                stored = merge_patch(old, obj)
                stored["metadata"]["generation"] = old["metadata"]["generation"] + (
                    old.get("spec") != stored.get("spec")
                )
            if obj["kind"] == "HTTPRoute" and self.gateway_accepts:
                stored["status"] = parents_status(stored)  # the Gateway's controller
            self.objects[key] = stored
        for ref in plan.delete:
            self.objects.pop((ref.kind, ref.name), None)
        wire = self.endpoint.model_dump(by_alias=True, exclude_none=True, mode="json")
        wire["status"] = plan.status.to_wire()
        self.endpoint = Endpoint.model_validate(wire)
        if self.auto_ready:
            self.make_ready()

    def make_ready(self) -> None:
        """The kubelet: every Deployment gets its replicas ready (an HPA keeps what it has)."""
        for (kind, name), obj in self.objects.items():
            if kind != "Deployment" or name in self.not_ready:
                continue
            spec = obj["spec"]
            replicas = spec.get("replicas", spec.setdefault("replicas", 1))
            obj["status"] = {
                "observedGeneration": obj["metadata"]["generation"],
                "replicas": replicas,
                "readyReplicas": replicas,
                "updatedReplicas": replicas,
            }

    def step(self) -> Plan:
        """One reconcile: plan, then carry the plan out."""
        plan = self.plan()
        self.apply(plan)
        return plan

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def edit(self, **spec: Any) -> None:
        self.endpoint = with_spec(self.endpoint, **spec)

    def route(self) -> dict[str, Any] | None:
        return next((o for (kind, _), o in self.objects.items() if kind == "HTTPRoute"), None)

    def weights(self) -> dict[str, int]:
        """service -> weight on the route's default rule."""
        route = self.route()
        if route is None:
            return {}
        default = route["spec"]["rules"][-1]
        return {ref["name"]: ref["weight"] for ref in default["backendRefs"]}

    def names(self, kind: str) -> list[str]:
        return sorted(name for (k, name) in self.objects if k == kind)


def header_rules(route: dict[str, Any]) -> list[dict[str, Any]]:
    """The route's per-variant rules (X-Berth-Target-Variant), in order."""
    return [r for r in route["spec"]["rules"] if any(m.get("headers") for m in r["matches"])]


def model_rules(route: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The route's per-model v2 rules, by the model named in their path."""
    found = {}
    for rule in route["spec"]["rules"]:
        value = rule["matches"][0]["path"]["value"]
        if "/v2/models/" in value:
            found[value.rsplit("/", 1)[-1]] = rule
    return found

"""Reading observed objects: Deployment readiness, and whether a child already matches."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import serverless
from .fleet import VariantPlan
from .types import Manifest


def find(children: Iterable[Manifest], kind: str, name: str) -> Manifest | None:
    for child in children:
        if child.get("kind") == kind and child.get("metadata", {}).get("name") == name:
            return child
    return None


def numbers_equal(a: Any, b: Any) -> bool:
    """1 == 1.0 as JSON numbers, but True is not 1 (it is in Python)."""
    both_numbers = isinstance(a, int | float) and isinstance(b, int | float)
    return both_numbers and not isinstance(a, bool) and not isinstance(b, bool) and float(a) == float(b)


def is_empty(value: Any) -> bool:
    """A value the API server stores as absent (Go's omitempty): "", false, 0, [], {} and null."""
    if isinstance(value, bool):
        return value is False
    if isinstance(value, int | float):
        return value == 0
    return value is None or value in ("", [], {})


def is_subset(desired: Any, observed: Any) -> bool:
    """True when observed has everything desired has (the API server may add defaults, and drops
    empty values such as an env var's `value: ""`); lists compare item by item."""
    if isinstance(desired, Mapping):
        return isinstance(observed, Mapping) and all(
            is_subset(value, observed[key]) if key in observed else is_empty(value)
            for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(observed, list)
            and len(desired) == len(observed)
            and all(is_subset(d, o) for d, o in zip(desired, observed, strict=True))
        )
    if isinstance(desired, bool) or isinstance(observed, bool):
        return desired is observed
    return bool(desired == observed or numbers_equal(desired, observed))


def matches(desired: Manifest, children: Iterable[Manifest]) -> bool:
    """An observed child with the desired spec and annotations exists."""
    observed = find(children, desired["kind"], desired["metadata"]["name"])
    if observed is None:
        return False
    annotations = desired["metadata"].get("annotations", {})
    return is_subset(desired.get("spec", {}), observed.get("spec", {})) and is_subset(
        annotations, observed.get("metadata", {}).get("annotations", {})
    )


@dataclass(frozen=True)
class Readiness:
    current: int  # replicas that exist
    ready: int
    desired: int
    is_ready: bool


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


def deployment_readiness(children: Iterable[Manifest], variant: VariantPlan) -> Readiness:
    observed = find(children, "Deployment", variant.object_name)
    if observed is None:
        return Readiness(0, 0, variant.replicas, False)
    spec = observed.get("spec", {})
    status = observed.get("status") or {}
    desired = variant.replicas
    ceiling = _ceiling(variant)
    if ceiling is not None and isinstance(spec.get("replicas"), int):
        # The HPA (KEDA's too) sets replicas between the floor we asked for and its maximum.
        desired = min(max(spec["replicas"], variant.replicas), ceiling)
    ready = _int(status.get("readyReplicas"))
    updated = _int(status.get("updatedReplicas", ready))
    generation = observed.get("metadata", {}).get("generation")
    seen = status.get("observedGeneration")
    current_generation = generation is None or seen is None or _int(seen) >= _int(generation)
    # An autoscaled variant is ready at its floor: pods the HPA adds while they start must not
    # make the variant (and the Endpoint) flap out of Ready.
    needed = variant.replicas if ceiling is not None else desired
    is_ready = current_generation and ready >= needed and updated >= needed
    return Readiness(_int(status.get("replicas", ready)), ready, desired, is_ready)


def _ceiling(variant: VariantPlan) -> int | None:
    """The most replicas an autoscaler may give the variant; None when nothing scales it."""
    if variant.autoscaling is not None:
        return variant.autoscaling.max_replicas
    if variant.serverless is not None:
        return max(variant.replicas, serverless.max_replicas(variant.serverless))
    return None


def is_default_rule(rule: Mapping[str, Any]) -> bool:
    """The weighted rule of an Endpoint's HTTPRoute: no header to match, the whole prefix rewritten
    to / (the per-variant header rules and the per-model v2 rules are the others)."""
    if any(match.get("headers") for match in rule.get("matches", [])):
        return False
    rewrites = [
        ((f.get("urlRewrite") or {}).get("path") or {}).get("replacePrefixMatch")
        for f in rule.get("filters", [])
        if f.get("type") == "URLRewrite"
    ]
    return all(value == "/" for value in rewrites)


def observed_split(children: Iterable[Manifest]) -> dict[str, int]:
    """Service -> weight the observed route gives it by default (no header): HTTPRoute or Ingresses."""
    split: dict[str, int] = {}
    ingress_main: str | None = None
    canary_weight = 0
    for child in children:
        if child.get("kind") == "HTTPRoute":
            for rule in child.get("spec", {}).get("rules", []):
                if not is_default_rule(rule):
                    continue
                for ref in rule.get("backendRefs", []):
                    split[serverless.routed_service(ref)] = _int(ref.get("weight", 1))
        elif child.get("kind") == "Ingress":
            annotations = child.get("metadata", {}).get("annotations", {})
            if annotations.get("nginx.ingress.kubernetes.io/rewrite-target", "/$2") != "/$2":
                continue  # the async front door's own path, not a share of the traffic
            for rule in child.get("spec", {}).get("rules", []):
                for path in (rule.get("http") or {}).get("paths", []):
                    service = ((path.get("backend") or {}).get("service") or {}).get("name", "")
                    if annotations.get("nginx.ingress.kubernetes.io/canary") == "true":
                        weight = annotations.get("nginx.ingress.kubernetes.io/canary-weight", "0")
                        canary_weight = int(weight) if str(weight).isdigit() else 0
                        split[service] = canary_weight
                    else:
                        ingress_main = service
    if ingress_main is not None:
        split[ingress_main] = max(0, 1000 - canary_weight) if len(split) else 1000
    return split


@dataclass(frozen=True)
class RouteAcceptance:
    """What the Gateway controller said of a route: accepted, refused (with why), or nothing yet."""

    accepted: bool
    refused: str | None = None  # "Accepted=False (NotAllowedByListeners): ..." when the Gateway refused it
    waiting: str | None = None  # no word yet from the Gateway's controller, or word on an older generation


def _parent_key(ref: Mapping[str, Any], namespace: str) -> tuple[str, str, str]:
    return (
        str(ref.get("name", "")),
        str(ref.get("namespace") or namespace),
        str(ref.get("sectionName") or ""),
    )


def route_acceptance(desired: Manifest, observed: Manifest | None) -> RouteAcceptance:
    """An HTTPRoute counts only when every Gateway it names accepted it, with every backend resolved,
    for the route's current generation (status.parents, as Gateway API controllers write it)."""
    name = desired["metadata"]["name"]
    if observed is None:
        return RouteAcceptance(False, waiting=f"waiting for HTTPRoute {name} to be created")
    namespace = desired["metadata"].get("namespace", "default")
    generation = observed.get("metadata", {}).get("generation")
    parents = (observed.get("status") or {}).get("parents") or []
    for parent in desired.get("spec", {}).get("parentRefs", []):
        key = _parent_key(parent, namespace)
        gateway = f"Gateway {key[1]}/{key[0]}" + (f" (listener {key[2]})" if key[2] else "")
        reported = next((p for p in parents if _parent_key(p.get("parentRef") or {}, namespace) == key), None)
        if reported is None:
            return RouteAcceptance(
                False,
                waiting=f"waiting for {gateway} to accept HTTPRoute {name} (no word from a Gateway controller "
                "yet: does the Gateway exist and is its controller running?)",
            )
        conditions = {c.get("type"): c for c in reported.get("conditions") or []}
        for type_ in ("Accepted", "ResolvedRefs"):
            cond = conditions.get(type_)
            if cond is None:
                return RouteAcceptance(
                    False, waiting=f"waiting for {gateway} to report {type_} on HTTPRoute {name}"
                )
            seen = cond.get("observedGeneration")
            if generation is not None and seen is not None and _int(seen) < _int(generation):
                return RouteAcceptance(
                    False, waiting=f"waiting for {gateway} to see the new HTTPRoute {name}"
                )
            if cond.get("status") != "True":
                why = f"{cond.get('reason') or 'Unknown'}: {cond.get('message') or 'no message'}".rstrip(": ")
                return RouteAcceptance(
                    False, refused=f"HTTPRoute {name}: {gateway} reports {type_}=False ({why})"
                )
    return RouteAcceptance(True)

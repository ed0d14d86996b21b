"""Reading observed objects: Deployment readiness, and whether a child already matches."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

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


def is_subset(desired: Any, observed: Any) -> bool:
    """True when observed has everything desired has (the API server may add defaults); lists
    compare item by item."""
    if isinstance(desired, Mapping):
        return isinstance(observed, Mapping) and all(
            key in observed and is_subset(value, observed[key]) for key, value in desired.items()
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
    if variant.autoscaling is not None and isinstance(spec.get("replicas"), int):
        # The HPA sets replicas between the floor we asked for and maxReplicas.
        desired = min(max(spec["replicas"], variant.replicas), variant.autoscaling.max_replicas)
    ready = _int(status.get("readyReplicas"))
    updated = _int(status.get("updatedReplicas", ready))
    generation = observed.get("metadata", {}).get("generation")
    seen = status.get("observedGeneration")
    current_generation = generation is None or seen is None or _int(seen) >= _int(generation)
    is_ready = current_generation and ready >= desired and updated >= desired
    return Readiness(_int(status.get("replicas", ready)), ready, desired, is_ready)


def observed_split(children: Iterable[Manifest]) -> dict[str, int]:
    """Service -> weight the observed route gives it by default (no header): HTTPRoute or Ingresses."""
    split: dict[str, int] = {}
    ingress_main: str | None = None
    canary_weight = 0
    for child in children:
        if child.get("kind") == "HTTPRoute":
            for rule in child.get("spec", {}).get("rules", []):
                if any(match.get("headers") for match in rule.get("matches", [])):
                    continue
                for ref in rule.get("backendRefs", []):
                    split[ref.get("name", "")] = _int(ref.get("weight", 1))
        elif child.get("kind") == "Ingress":
            annotations = child.get("metadata", {}).get("annotations", {})
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

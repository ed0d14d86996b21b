"""Gateway API HTTPRoutes compiled into plain lookup tables for the local router. Pure.

Only what Berth's planner emits is interpreted: PathPrefix matches, exact header
matches, the URLRewrite ReplacePrefixMatch filter, the RequestMirror filter and
weighted backendRefs. Matching follows Gateway API precedence: the longest path
prefix wins, then the rule with the most header matches.

A backendRef whose RequestHeaderModifier sets X-Berth-Serverless-Target goes to the KEDA
HTTP add-on's interceptor, which reaches the Service of the HTTPScaledObject with that
header: such a backend keeps the header value (`target`) and is keyed by that Service, so
the router holds its requests (interceptor.py) and forwards them to that Service's pool.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..planner.serverless import TARGET_HEADER

Manifest = dict[str, Any]


@dataclass(frozen=True)
class BackendRef:
    namespace: str
    service: str
    port: int
    weight: int = 1
    target: str | None = None  # through the interceptor: the X-Berth-Serverless-Target value

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.service)


@dataclass(frozen=True)
class Mirror:
    backend: BackendRef
    percent: float = 100.0


@dataclass(frozen=True)
class Rule:
    headers: tuple[tuple[str, str], ...]  # (lower-case name, exact value)
    backends: tuple[BackendRef, ...]
    mirrors: tuple[Mirror, ...] = ()
    replace_prefix: str | None = None

    def matches(self, headers: Mapping[str, str]) -> bool:
        return all(headers.get(name) == value for name, value in self.headers)


@dataclass(frozen=True)
class RouteTable:
    """Path prefix (no trailing slash) -> rules for that prefix, most specific first."""

    prefixes: dict[str, tuple[Rule, ...]] = field(default_factory=dict)
    # Which HTTPRoute each prefix came from, to describe the table (404 answers, status).
    owners: dict[str, tuple[str, str]] = field(default_factory=dict)

    def lookup(self, path: str) -> tuple[str, tuple[Rule, ...]] | None:
        """The longest prefix that matches `path` element-wise, and its rules. The router passes
        the path as sent (percent-encoded), as a Gateway matches it, so the rewrite that
        follows works on the same bytes."""
        candidate = path.rstrip("/")
        while True:
            rules = self.prefixes.get(candidate)
            if rules is not None:
                return candidate, rules
            if not candidate:
                return None
            candidate = candidate[: candidate.rfind("/")]


def normalize_prefix(value: str) -> str:
    return value.rstrip("/")


def rewrite_path(raw_path: bytes, prefix: str, replace_prefix: str | None) -> bytes:
    """URLRewrite ReplacePrefixMatch on the path as sent, still percent-encoded:
    `/endpoints/ns/x/invocations` with `/` -> `/invocations`. `raw_path` starts with `prefix`
    (the table matched it on these same bytes)."""
    if replace_prefix is None:
        return raw_path
    rest = raw_path[len(prefix) :]
    rewritten = replace_prefix.rstrip("/").encode() + rest
    return rewritten if rewritten.startswith(b"/") else b"/" + rewritten


def serverless_target(ref: Mapping[str, Any]) -> str | None:
    """The X-Berth-Serverless-Target value a backendRef's own filters set, if any."""
    for flt in ref.get("filters") or []:
        if flt.get("type") != "RequestHeaderModifier":
            continue
        for header in (flt.get("requestHeaderModifier") or {}).get("set") or []:
            if str(header.get("name", "")).lower() == TARGET_HEADER.lower():
                return str(header.get("value", ""))
    return None


def _backend(
    ref: Mapping[str, Any], namespace: str, targets: Mapping[str, tuple[str, str]] | None = None
) -> BackendRef:
    weight = int(ref.get("weight", 1))
    target = serverless_target(ref)
    if target is not None and targets and target in targets:
        target_namespace, service = targets[target]
        return BackendRef(target_namespace, service, int(ref.get("port", 0)), weight, target)
    return BackendRef(
        namespace=ref.get("namespace", namespace),
        service=ref["name"],
        port=int(ref.get("port", 0)),
        weight=weight,
        target=target,  # no HTTPScaledObject with that header: no pool either (503, as unready)
    )


def _compile_rule(
    rule: Mapping[str, Any], namespace: str, targets: Mapping[str, tuple[str, str]] | None = None
) -> list[tuple[str, Rule]]:
    replace_prefix: str | None = None
    mirrors: list[Mirror] = []
    for flt in rule.get("filters", []):
        if flt.get("type") == "URLRewrite":
            path = flt.get("urlRewrite", {}).get("path", {})
            if path.get("type") == "ReplacePrefixMatch":
                replace_prefix = path.get("replacePrefixMatch", "/")
        elif flt.get("type") == "RequestMirror":
            spec = flt.get("requestMirror", {})
            percent = float(spec.get("percent", 100))
            if "fraction" in spec:
                fraction = spec["fraction"]
                percent = 100.0 * fraction["numerator"] / fraction.get("denominator", 100)
            mirrors.append(Mirror(_backend(spec["backendRef"], namespace), percent))
    backends = tuple(_backend(ref, namespace, targets) for ref in rule.get("backendRefs", []))
    compiled: list[tuple[str, Rule]] = []
    for match in rule.get("matches", [{"path": {"type": "PathPrefix", "value": "/"}}]):
        path = match.get("path", {"type": "PathPrefix", "value": "/"})
        if path.get("type", "PathPrefix") != "PathPrefix":
            continue
        headers = tuple(
            (h["name"].lower(), h["value"])
            for h in match.get("headers", [])
            if h.get("type", "Exact") == "Exact"
        )
        compiled.append(
            (
                normalize_prefix(path.get("value", "/")),
                Rule(headers, backends, tuple(mirrors), replace_prefix),
            )
        )
    return compiled


def compile_routes(
    routes: Iterable[Manifest], targets: Mapping[str, tuple[str, str]] | None = None
) -> RouteTable:
    """One table from every HTTPRoute; rules of a prefix sorted by header count, most first.
    targets: X-Berth-Serverless-Target value -> (namespace, Service) of its HTTPScaledObject."""
    grouped: dict[str, list[Rule]] = {}
    owners: dict[str, tuple[str, str]] = {}
    for route in sorted(routes, key=lambda r: (r["metadata"].get("namespace", ""), r["metadata"]["name"])):
        namespace = route["metadata"].get("namespace", "default")
        for rule in route.get("spec", {}).get("rules", []):
            for prefix, compiled in _compile_rule(rule, namespace, targets):
                grouped.setdefault(prefix, []).append(compiled)
                owners.setdefault(prefix, (namespace, route["metadata"]["name"]))
    prefixes = {
        prefix: tuple(sorted(rules, key=lambda r: -len(r.headers))) for prefix, rules in grouped.items()
    }
    return RouteTable(prefixes=prefixes, owners=owners)


def select_rule(rules: tuple[Rule, ...], headers: Mapping[str, str]) -> Rule | None:
    for rule in rules:
        if rule.matches(headers):
            return rule
    return None


def pick_backend(
    backends: tuple[BackendRef, ...], available: Mapping[tuple[str, str], int], rng: random.Random
) -> BackendRef | None:
    """Weighted choice among backends with weight > 0. When the chosen one has no ready
    replica, choose again among those that have one, so a not-yet-ready fleet never fails
    a request that another fleet can answer."""
    weighted = [b for b in backends if b.weight > 0]
    if not weighted:
        return None
    chosen = _weighted(weighted, rng)
    if available.get(chosen.key, 0) > 0:
        return chosen
    ready = [b for b in weighted if available.get(b.key, 0) > 0]
    return _weighted(ready, rng) if ready else None


def _weighted(backends: list[BackendRef], rng: random.Random) -> BackendRef:
    if len(backends) == 1:
        return backends[0]
    point = rng.random() * sum(b.weight for b in backends)
    for backend in backends:
        point -= backend.weight
        if point < 0:
            return backend
    return backends[-1]

"""The route of an Endpoint: a weighted Gateway API HTTPRoute, ingress-nginx Ingresses, or none."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from berth_serving.config import DEFAULT_PORT

from ..api import Endpoint
from ..settings import Settings
from . import labels, serverless
from .meta import object_meta
from .names import async_ingress_name, canary_ingress_name, route_name
from .types import Manifest

TARGET_VARIANT_HEADER = "X-Berth-Target-Variant"
WEIGHT_TOTAL = 1000  # readable: a backend's weight is its share in tenths of a percent
MAX_RULES = 16  # Gateway API limits per HTTPRoute
MAX_BACKENDS = 16
MAX_FILTERS = 16
INGRESS_ANNOTATION = "nginx.ingress.kubernetes.io/"


@dataclass(frozen=True)
class Backend:
    """A variant's Service and its share of the endpoint's traffic."""

    variant: str
    service: str
    fraction: float  # share of all requests, 0..1 (0 for shadows)
    fleet_share: int  # percent of traffic on the variant's fleet
    shadow: bool = False
    model: str = ""  # the Model the variant serves: its v2 name


@dataclass(frozen=True)
class Routing:
    objects: list[Manifest]
    weights: dict[str, int]  # service name -> weight on the default rule
    error: str | None = None


def apportion(fractions: Sequence[float], total: int = WEIGHT_TOTAL) -> list[int]:
    """Integers summing to total, proportional to fractions (largest remainder, stable)."""
    mass = sum(fractions)
    if mass <= 0:
        return [0 for _ in fractions]
    exact = [f / mass * total for f in fractions]
    result = [int(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - result[i]), i))
    for i in order[: total - sum(result)]:
        result[i] += 1
    return result


def default_weights(backends: Sequence[Backend]) -> dict[str, int]:
    serving = [b for b in backends if not b.shadow and b.fraction > 0]
    return dict(zip([b.service for b in serving], apportion([b.fraction for b in serving]), strict=True))


# The Gateway API release whose standard channel has everything the route uses (RequestMirror
# without percent, ReplacePrefixMatch, exact header matches); docs/kubernetes.md installs it.
GATEWAY_API_VERSION = "v1.3.0"
MSG_NO_GATEWAY_API = (
    "the Gateway API CRDs are not installed (the cluster serves no HTTPRoute in "
    f"gateway.networking.k8s.io/v1): install Gateway API {GATEWAY_API_VERSION} or later (standard "
    "channel), or set the operator setting routing.mode to ingress or none"
)


ASYNC_PATH = "/async-invocations"
ASYNC_SERVICE_PORT = 80  # the front door's Service (planner/asyncinf.py)


def plan_routing(
    endpoint: Endpoint,
    backends: Sequence[Backend],
    settings: Settings,
    unavailable_kinds: frozenset[str] = frozenset(),
    async_service: str | None = None,
    intercepted: frozenset[str] = frozenset(),
) -> Routing:
    """async_service: the front door's Service, which gets /async-invocations of the prefix;
    intercepted: Services of serverless variants, reached through the KEDA HTTP interceptor."""
    weights = default_weights(backends)
    mode = settings.routing.mode
    if mode == "none" or not weights:
        return Routing([], weights)
    if mode == "gateway" and "HTTPRoute" in unavailable_kinds:
        return Routing([], weights, MSG_NO_GATEWAY_API)
    if mode == "ingress":
        return _ingress_routing(endpoint, backends, weights, settings, async_service)
    return _gateway_routing(endpoint, backends, weights, settings, async_service, intercepted)


def path_prefix(endpoint: Endpoint) -> str:
    return f"/endpoints/{endpoint.namespace}/{endpoint.name}/"


def _rewrite(replacement: str = "/") -> dict[str, Any]:
    """Strip /endpoints/NAMESPACE/NAME so the server sees /invocations, /ping, /v2/..."""
    return {
        "type": "URLRewrite",
        "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": replacement}},
    }


RefMaker = Callable[[str, int], dict[str, Any]]


def _backend_ref(service: str, weight: int) -> dict[str, Any]:
    return {"name": service, "port": DEFAULT_PORT, "weight": weight}


def _ref_maker(namespace: str, intercepted: frozenset[str], settings: Settings) -> RefMaker:
    """backendRefs to a variant's Service, or for a serverless one to the interceptor naming it."""

    def ref(service: str, weight: int) -> dict[str, Any]:
        if service in intercepted:
            return serverless.interceptor_backend_ref(namespace, service, weight, settings)
        return _backend_ref(service, weight)

    return ref


def _header_rules(backends: Sequence[Backend], ref: RefMaker) -> list[tuple[str, list[dict[str, Any]]]]:
    """Per live variant name: the fleets with traffic that have it, weighted by their share.

    A variant of a fleet that takes no traffic yet (a rollout still provisioning) gets no
    rule: it may not be ready, and the old fleet's variant of that name keeps answering.
    """
    live = [b for b in backends if not b.shadow and b.fleet_share > 0]
    names = sorted({b.variant for b in live})
    return [(name, [ref(b.service, b.fleet_share) for b in live if b.variant == name]) for name in names]


def _model_rules(backends: Sequence[Backend], ref: RefMaker) -> list[tuple[str, list[dict[str, Any]]]]:
    """Per Model served by a live variant: the variants that serve it, by their share of the traffic.

    Open Inference Protocol clients name a model in the path; each replica knows only its own
    model (and the Endpoint's name), so /v2/models/MODEL/... must reach a variant that serves it.
    """
    live = [b for b in backends if not b.shadow and b.fraction > 0 and b.model]
    rules = []
    for model in sorted({b.model for b in live}):
        serving = [b for b in live if b.model == model]
        weights = apportion([b.fraction for b in serving])
        rules.append((model, [ref(b.service, w) for b, w in zip(serving, weights, strict=True)]))
    return rules


def _mirrors(backends: Sequence[Backend]) -> list[Backend]:
    """Shadow variants of the fleets that take traffic; one per name, from the fleet with most traffic."""
    chosen: dict[str, Backend] = {}
    for b in backends:
        if (
            b.shadow
            and b.fleet_share > 0
            and (b.variant not in chosen or b.fleet_share > chosen[b.variant].fleet_share)
        ):
            chosen[b.variant] = b
    return [chosen[name] for name in sorted(chosen)]


def _async_rule(prefix: str, service: str) -> dict[str, Any]:
    """/endpoints/NS/NAME/async-invocations[/ID] to the front door, as /async-invocations[/ID]."""
    return {
        "matches": [{"path": {"type": "PathPrefix", "value": prefix + ASYNC_PATH.lstrip("/")}}],
        "filters": [_rewrite(ASYNC_PATH)],
        "backendRefs": [{"name": service, "port": ASYNC_SERVICE_PORT, "weight": 1}],
    }


def _gateway_routing(
    endpoint: Endpoint,
    backends: Sequence[Backend],
    weights: dict[str, int],
    settings: Settings,
    async_service: str | None = None,
    intercepted: frozenset[str] = frozenset(),
) -> Routing:
    prefix = path_prefix(endpoint)
    ref = _ref_maker(endpoint.namespace, intercepted, settings)
    header_rules = _header_rules(backends, ref)
    model_rules = [(m, refs) for m, refs in _model_rules(backends, ref) if m != endpoint.name]
    mirrors = _mirrors(backends)
    too_many = (
        len(header_rules) + len(model_rules) + 1 + (async_service is not None) > MAX_RULES
        or len(weights) > MAX_BACKENDS
        or any(len(refs) > MAX_BACKENDS for _, refs in header_rules)
        or len(mirrors) + 1 > MAX_FILTERS
    )
    if too_many:
        return Routing(
            [], weights, "too many variants for one HTTPRoute (Gateway API allows 16 rules and backends)"
        )
    rules: list[dict[str, Any]] = [_async_rule(prefix, async_service)] if async_service else []
    rules += [
        {
            "matches": [
                {
                    "path": {"type": "PathPrefix", "value": prefix},
                    "headers": [{"type": "Exact", "name": TARGET_VARIANT_HEADER, "value": name}],
                }
            ],
            "filters": [_rewrite()],
            "backendRefs": refs,
        }
        for name, refs in header_rules
    ]
    for model, refs in model_rules:
        v2_path = f"/v2/models/{model}"
        rules.append(
            {
                "matches": [{"path": {"type": "PathPrefix", "value": prefix + v2_path.lstrip("/")}}],
                "filters": [_rewrite(v2_path)],
                "backendRefs": refs,
            }
        )
    # No `percent`: Gateway API before v1.3 has no such field, and every copy is the default.
    mirror_filters = [
        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": b.service, "port": DEFAULT_PORT}}}
        for b in mirrors
    ]
    rules.append(
        {
            "matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
            "filters": [_rewrite(), *mirror_filters],
            "backendRefs": [ref(service, weight) for service, weight in weights.items()],
        }
    )
    gateway = settings.routing.gateway
    parent: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway.name}
    parent["namespace"] = gateway.namespace
    if gateway.section_name:
        parent["sectionName"] = gateway.section_name
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": object_meta(
            endpoint, route_name(endpoint.name), labels.endpoint_labels(endpoint.name, "route")
        ),
        "spec": {"parentRefs": [parent], "rules": rules},
    }
    return Routing([route], weights)


def _ingress_routing(
    endpoint: Endpoint,
    backends: Sequence[Backend],
    weights: dict[str, int],
    settings: Settings,
    async_service: str | None = None,
) -> Routing:
    if len(weights) > 2:
        live = ", ".join(weights)
        return Routing(
            [],
            weights,
            f"routing mode ingress supports at most two live variants, found {len(weights)}: {live}",
        )
    by_service = {b.service: b for b in backends if not b.shadow}
    ranked = sorted(weights, key=lambda s: -weights[s])  # stable: the heavier backend is the main one
    main, canary = ranked[0], ranked[1:]
    prefix = path_prefix(endpoint).rstrip("/").replace(".", r"\.")  # ingress-nginx reads a regex
    common = {
        INGRESS_ANNOTATION + "rewrite-target": "/$2",
        INGRESS_ANNOTATION + "use-regex": "true",
    }
    mirrors = _mirrors(backends)

    def ingress(
        name: str, service: str, annotations: dict[str, str], path_regex: str = "(/|$)(.*)"
    ) -> Manifest:
        meta = object_meta(endpoint, name, labels.endpoint_labels(endpoint.name, "route"))
        meta["annotations"] = dict(sorted({**common, **annotations}.items()))
        path = {
            "path": f"{prefix}{path_regex}",
            "pathType": "ImplementationSpecific",
            "backend": {"service": {"name": service, "port": {"name": "http"}}},
        }
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": meta,
            "spec": {
                "ingressClassName": settings.routing.ingress_class_name,
                "rules": [{"http": {"paths": [path]}}],
            },
        }

    main_annotations: dict[str, str] = {}
    if mirrors:  # ingress-nginx mirrors to one target only
        target = (
            f"http://{mirrors[0].service}.{endpoint.namespace}.svc.cluster.local:{DEFAULT_PORT}$request_uri"
        )
        main_annotations[INGRESS_ANNOTATION + "mirror-target"] = target
    objects = [ingress(route_name(endpoint.name), main, main_annotations)]
    if async_service is not None:
        # Its own Ingress: a path of its own is no canary of the main one. $1$2 keeps /ID.
        objects.append(
            ingress(
                async_ingress_name(endpoint.name),
                async_service,
                {INGRESS_ANNOTATION + "rewrite-target": ASYNC_PATH + "$1$2"},
                path_regex=ASYNC_PATH + "(/|$)(.*)",
            )
        )
    if canary:
        service = canary[0]
        objects.append(
            ingress(
                canary_ingress_name(endpoint.name),
                service,
                {
                    INGRESS_ANNOTATION + "canary": "true",
                    INGRESS_ANNOTATION + "canary-weight": str(weights[service]),
                    INGRESS_ANNOTATION + "canary-weight-total": str(WEIGHT_TOTAL),
                    INGRESS_ANNOTATION + "canary-by-header": TARGET_VARIANT_HEADER,
                    INGRESS_ANNOTATION + "canary-by-header-value": by_service[service].variant,
                },
            )
        )
    return Routing(objects, weights)

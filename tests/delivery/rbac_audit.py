"""Turn recorded API requests into RBAC attributes and evaluate them against rendered roles."""

from __future__ import annotations

from dataclasses import dataclass

from tests.delivery.delivery_support import Manifest, by_kind
from tests.support.kmockk8s import KMockCluster

OPERATOR_AGENTS = ("berth-operator", "kopf")


@dataclass(frozen=True)
class Attributes:
    verb: str
    group: str
    resource: str  # with "/subresource" when there is one
    namespace: str | None


def attributes(method: str, path: str, query: dict[str, str]) -> Attributes | None:
    """What the API server's authorizer checks for a request (None: discovery, always allowed)."""
    parts = path.strip("/").split("/")
    if parts[0] == "api" and len(parts) > 2:
        group, rest = "", parts[2:]
    elif parts[0] == "apis" and len(parts) > 3:
        group, rest = parts[1], parts[3:]
    else:
        return None  # /api, /apis, /apis/GROUP/VERSION, /version: non-resource discovery
    namespace = None
    if rest[0] == "namespaces" and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] if len(rest) < 3 else f"{rest[0]}/{rest[2]}"
    named = len(rest) > 1
    if method == "GET":
        verb = "get" if named else ("watch" if query.get("watch") in ("true", "1") else "list")
    else:
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update"}.get(method) or (
            "delete" if named else "deletecollection"
        )
    return Attributes(verb, group, resource, namespace)


def allows(rules: list[Manifest], request: Attributes) -> bool:
    return any(
        request.group in rule["apiGroups"]
        and request.resource in rule["resources"]
        and request.verb in rule["verbs"]
        for rule in rules
    )


def allowed(objs: list[Manifest], request: Attributes) -> bool:
    """ClusterRoles apply everywhere; a Role only to requests in its own namespace."""
    if any(allows(role["rules"], request) for role in by_kind(objs, "ClusterRole")):
        return True
    return any(
        request.namespace == role["metadata"]["namespace"] and allows(role["rules"], request)
        for role in by_kind(objs, "Role")
    )


def operator_requests(cluster: KMockCluster) -> list[Attributes]:
    found = []
    for request in cluster.requests_since(0):
        if not request.headers.get("User-Agent", "").startswith(OPERATOR_AGENTS):
            continue
        method = str(getattr(request.method, "value", request.method)).upper()
        found_attributes = attributes(method, request.url.path, dict(request.url.query))
        if found_attributes is not None:
            found.append(found_attributes)
    return found

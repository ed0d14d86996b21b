"""A Gateway API controller stand-in: it writes HTTPRoute status as an implementation would.

For each HTTPRoute in one namespace and each of its parentRefs, one entry of `status.parents`
under our controllerName: a parentRef naming the Gateway the test configured is Accepted (True,
reason Accepted), any other NoMatchingParent (Accepted False); ResolvedRefs is True unless a
backendRef (or a RequestMirror filter's backendRef) names a Service that does not exist
(reason BackendNotFound). Every condition carries the route's generation as observedGeneration.
The status is written through the status subresource only when it changes, so an idle route
is never rewritten; Service events re-evaluate every route, as backends come and go.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.support.envtest import Kube, KubeError, Manifest, Watcher
from tests.support.kubelet import now

GATEWAY_GROUP = "gateway.networking.k8s.io"
CONTROLLER_NAME = "berth.dev/test-gateway-controller"


def backend_refs(route: Manifest) -> Iterator[Mapping[str, Any]]:
    for rule in (route.get("spec") or {}).get("rules") or []:
        yield from rule.get("backendRefs") or []
        for filt in rule.get("filters") or []:
            mirror = (filt.get("requestMirror") or {}).get("backendRef")
            if mirror:
                yield mirror


@dataclass
class GatewayController:
    kube: Kube
    namespace: str  # where the routes live
    gateway_namespace: str
    gateway_name: str
    section_names: frozenset[str] | None = None  # None: every listener
    writes: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._routes = Watcher(self.kube, "HTTPRoute", self.namespace, self._on_route)
        self._services = Watcher(self.kube, "Service", self.namespace, self._on_service)

    def start(self) -> GatewayController:
        self._services.start()
        self._routes.start()
        return self

    def stop(self) -> None:
        for watcher in (self._routes, self._services):
            watcher.stop()
        for watcher in (self._routes, self._services):
            watcher.join()

    @property
    def all_errors(self) -> list[str]:
        return self.errors + self._routes.errors + self._services.errors

    # ------------------------------------------------------------------ deciding

    def _ours(self, ref: Mapping[str, Any], route_namespace: str) -> bool:
        return (
            ref.get("group", GATEWAY_GROUP) == GATEWAY_GROUP
            and ref.get("kind", "Gateway") == "Gateway"
            and ref.get("namespace", route_namespace) == self.gateway_namespace
            and ref.get("name") == self.gateway_name
            and (self.section_names is None or ref.get("sectionName") in self.section_names)
        )

    def _missing_backends(self, route: Manifest) -> list[str]:
        namespace = route["metadata"]["namespace"]
        services = {obj["metadata"]["name"] for obj in self._services.objects()}
        missing = []
        for ref in backend_refs(route):
            if ref.get("group", "") != "" or ref.get("kind", "Service") != "Service":
                continue
            if ref.get("namespace", namespace) == namespace and ref["name"] not in services:
                missing.append(ref["name"])
        return sorted(set(missing))

    def desired_parents(self, route: Manifest) -> list[Manifest]:
        meta = route["metadata"]
        generation = meta.get("generation", 1)
        missing = self._missing_backends(route)
        parents = []
        for ref in (route.get("spec") or {}).get("parentRefs") or []:
            if self._ours(ref, meta["namespace"]):
                accepted = ("True", "Accepted", "Route is accepted")
            else:
                accepted = (
                    "False",
                    "NoMatchingParent",
                    f"no Gateway {ref.get('namespace', meta['namespace'])}/{ref.get('name')} here",
                )
            if missing:
                resolved = ("False", "BackendNotFound", "Service(s) not found: " + ", ".join(missing))
            else:
                resolved = ("True", "ResolvedRefs", "Resolved all the Object references for the Route")
            conditions = [
                {"type": kind, "status": s, "reason": r, "message": m, "observedGeneration": generation}
                for kind, (s, r, m) in (("Accepted", accepted), ("ResolvedRefs", resolved))
            ]
            parents.append(
                {"parentRef": dict(ref), "controllerName": CONTROLLER_NAME, "conditions": conditions}
            )
        return parents

    # ------------------------------------------------------------------ writing

    @staticmethod
    def _comparable(parents: list[Manifest]) -> list[Manifest]:
        return [
            {
                **p,
                "conditions": [
                    {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in p.get("conditions", [])
                ],
            }
            for p in parents
        ]

    def reconcile(self, name: str) -> None:
        # One at a time and from a fresh read: the two watches' callbacks run in two threads, and
        # a store a write behind would rewrite the same status with new transition times.
        with self._lock:
            route = self.kube.get("HTTPRoute", self.namespace, name)
            if route is not None and not route["metadata"].get("deletionTimestamp"):
                self._write(route)

    def _write(self, route: Manifest) -> None:
        wanted = self.desired_parents(route)
        current = list((route.get("status") or {}).get("parents") or [])
        if self._comparable(current) == self._comparable(wanted):
            return
        # Keep lastTransitionTime where a condition's status did not change.
        before = {(str(p.get("parentRef")), c["type"]): c for p in current for c in p.get("conditions", [])}
        for parent in wanted:
            for cond in parent["conditions"]:
                old = before.get((str(parent["parentRef"]), cond["type"]))
                same = old is not None and old.get("status") == cond["status"]
                cond["lastTransitionTime"] = old["lastTransitionTime"] if same and old else now()
        meta = route["metadata"]
        self.writes += 1
        try:
            self.kube.patch(
                "HTTPRoute", meta["namespace"], meta["name"], {"status": {"parents": wanted}}, sub="status"
            )
        except KubeError as error:
            if error.status != 404:  # deleted meanwhile
                raise

    def _on_route(self, event: str, route: Manifest) -> None:
        if event != "DELETED":
            self._guarded(route["metadata"]["name"])

    def _on_service(self, event: str, service: Manifest) -> None:
        # Only the routes that send to this Service: a namespace of 200 Endpoints would otherwise
        # re-read every route at every Service event (quadratic, and the stand-in's CPU, not the
        # operator's, would set the pace of a benchmark).
        name = service["metadata"]["name"]
        for route in self._routes.objects():
            if any(ref.get("name") == name for ref in backend_refs(route)):
                self._guarded(route["metadata"]["name"])

    def _guarded(self, name: str) -> None:
        try:
            self.reconcile(name)
        except Exception as error:
            self.errors.append(f"route {name}: {type(error).__name__}: {error}")

    def route_status(self, name: str) -> list[Manifest]:
        route = self.kube.get("HTTPRoute", self.namespace, name) or {}
        return list((route.get("status") or {}).get("parents") or [])

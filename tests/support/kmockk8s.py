"""KMock (the kopf author's Kubernetes API emulator) made fit to run kopf, plus a threaded harness.

Plain KMock 0.8 does not run kopf (see the project's design notes on testing). `BerthKMock` fixes it:
resourceVersion/uid/generation on create, resourceVersion bumps on every write and generation
bumps on spec changes, a resourceVersion on lists, 422 for a failed JSON-patch `test`, the URL's
namespace copied into created objects, watches that take their snapshot and subscribe to the
event bus under one lock while honouring `?resourceVersion=`, and a static `/api/v1/namespaces`
(KMock cannot parse that path; kopf lists it when it watches named namespaces). Equality label
selectors are honoured on lists and watches as a real API server does (KMock ignores them, which
made every list return the whole namespace); the operator still filters client-side.

`KMockCluster` runs the emulator in its own thread and event loop; `OperatorThread` runs the
Berth operator (kopf) in another thread with its own loop, because `kopf.operator()` cancels
every asyncio task created after it starts. Tests stay plain synchronous functions and talk to
the emulator over real HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import aiohttp.web
import attrs
import httpx
import jsonpatch
import kmock

from tests.support.routestatus import parents_status

T = TypeVar("T")
Manifest = dict[str, Any]

BERTH_RESOURCES = {
    "berth.dev/v1alpha1/models": ("Model", "model", ["bm"]),
    "berth.dev/v1alpha1/endpointconfigs": ("EndpointConfig", "endpointconfig", ["bec"]),
    "berth.dev/v1alpha1/endpoints": ("Endpoint", "endpoint", ["bep"]),
    "berth.dev/v1alpha1/transformjobs": ("TransformJob", "transformjob", ["btj"]),
    "berth.dev/v1alpha1/monitoringschedules": ("MonitoringSchedule", "monitoringschedule", ["bms"]),
}
WRITE_METHODS = {"POST", "PATCH", "PUT", "DELETE"}


def selector_matches(obj: Manifest, selector: str) -> bool:
    """Equality-based label selectors (k=v, k==v, k!=v, k, !k), as the API server applies them."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _is_apply(request: Any) -> bool:
    return str(request.headers.get("Content-Type", "")).startswith("application/apply-patch")


def applied_by_sole_manager(stored: Manifest, applied: Manifest) -> Manifest:
    """Server-side apply when one field manager owns every field it sets and nobody else set any
    (the operator's children): the applied labels, annotations, ownerReferences and spec replace
    the stored ones, so a field the applier stopped setting is gone; status and server metadata stay.
    KMock has no server-side apply; the real API server tier tests the real one."""
    after = copy.deepcopy(stored)
    meta = after.setdefault("metadata", {})
    for key in ("labels", "annotations", "ownerReferences"):
        if key in applied.get("metadata", {}):
            meta[key] = copy.deepcopy(applied["metadata"][key])
        else:
            meta.pop(key, None)
    for key, value in applied.items():
        if key not in ("apiVersion", "kind", "metadata", "status"):
            after[key] = copy.deepcopy(value)
    return after


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.define(kw_only=True)
class BerthKMock(kmock.KubernetesEmulator):
    """KubernetesEmulator with the fixes kopf needs (see the module docstring)."""

    # Namespaces that exist (static): KMock cannot parse /api/v1/namespaces, kopf lists it when
    # it watches named namespaces.
    namespaces: tuple[str, ...] = ("default", "ml", "other")
    _rv: int = attrs.field(default=0, init=False)
    applies: int = attrs.field(default=0, init=False)  # server-side apply requests served
    # Play the Gateway's controller: every HTTPRoute written is accepted (status.parents) for its
    # generation, as Envoy Gateway does on kind. A test of refusals turns this off.
    gateway_accepts_routes: bool = True
    _fallback_count: int = attrs.field(default=0, init=False)
    # resourceVersion at which each object was deleted, for watches resumed from an older version.
    _deleted_at: dict[Any, int] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._fallback_count = len(self._payloads)  # a test that adds reactions gets the full matching
        self.resources.load_bundled()
        for key, (kind, singular, shortnames) in BERTH_RESOURCES.items():
            self.resources[key] = kmock.ResourceInfo(
                kind=kind,
                singular=singular,
                namespaced=True,
                shortnames=shortnames,
                categories={"berth"},
                subresources={"status"},
                verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
            )

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.path.rstrip("/") == "/api/v1/namespaces":
            return await self._serve_namespaces(raw_request)
        return await super().__call__(raw_request)

    async def _serve_namespaces(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        items = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "resourceVersion": "1"}}
            for ns in self.namespaces
        ]
        if raw_request.query.get("watch") != "true":
            body = {
                "apiVersion": "v1",
                "kind": "NamespaceList",
                "metadata": {"resourceVersion": "1"},
                "items": items,
            }
            return aiohttp.web.json_response(body)
        response = aiohttp.web.StreamResponse()
        await response.prepare(raw_request)
        if raw_request.query.get("resourceVersion") in (None, "", "0"):
            for item in items:
                await response.write(json.dumps({"type": "ADDED", "object": item}).encode() + b"\n")
        await asyncio.Event().wait()  # the namespaces never change; held open until the client leaves
        return response

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    async def _handle(self, request: kmock.Request) -> Any:
        delete_key = None
        if request.resource is not None:
            async with self._lock:
                delete_key = await self._mutate(request)
        try:
            serve = self._fast_path(request)
            if serve is not None:
                return await kmock.Response(payload=serve)(request)
            return await kmock.RawHandler._handle(self, request)
        finally:
            if delete_key is not None and request.resource is not None:
                async with self._lock:
                    raw = self._objects[delete_key].raw
                    raw["metadata"]["resourceVersion"] = self._next_rv()
                    self._deleted_at[delete_key] = self._rv
                    self._objects[delete_key].delete()
                    await self._buses[request.resource].put({"type": "DELETED", "object": raw})

    def _fast_path(self, request: kmock.Request) -> Any:
        """The serving method for a plain resource request, skipping KMock's reaction matching
        (about 10 ms a request; this harness adds no reactions of its own)."""
        if self._payloads_are_fallbacks_only and request.resource is not None and request.resource.plural:
            return {
                kmock.action.LIST: self._serve_list,
                kmock.action.WATCH: self._serve_watch,
                kmock.action.FETCH: self._serve_fetch,
                kmock.action.CREATE: self._serve_create,
                kmock.action.UPDATE: self._serve_update,
                kmock.action.DELETE: self._serve_delete,
            }.get(request.action)  # type: ignore[arg-type]
        return None

    @property
    def _payloads_are_fallbacks_only(self) -> bool:
        return len(self._payloads) == self._fallback_count

    async def _mutate(self, request: kmock.Request) -> Any:
        """Apply a write to the stored objects; return the key to purge after responding, if any."""
        assert request.resource is not None
        object_key = None
        bus = self._buses[request.resource]
        if request.action == kmock.action.CREATE:
            obj = request.data
            meta = obj.setdefault("metadata", {})
            if request.namespace:
                meta["namespace"] = request.namespace
            object_key = (request.resource, meta.get("namespace"), meta.get("name"))
            if object_key in self._objects and not self._objects[object_key].deleted:
                raise kmock.KubernetesError(status=409, reason="AlreadyExists", message="the object exists")
            meta["uid"] = str(uuid.uuid4())
            meta["resourceVersion"] = self._next_rv()
            meta["generation"] = 1
            meta.setdefault("creationTimestamp", _now())
            meta.pop("deletionTimestamp", None)
            self._play_gateway(request, obj)
            if object_key not in self._objects:
                self._objects[object_key] = obj
            else:
                self._objects[object_key].create(obj)
            self._deleted_at.pop(object_key, None)
            await bus.put({"type": "ADDED", "object": self._objects[object_key].last.raw})
        elif request.action == kmock.action.DELETE and request.name is not None:
            object_key = (request.resource, request.namespace, request.name)
            if object_key not in self._objects or self._objects[object_key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            stored = self._objects[object_key]
            meta = stored.raw.get("metadata", {})
            if meta.get("deletionTimestamp"):
                pass
            elif meta.get("finalizers"):
                stored.patch({"metadata": {"deletionTimestamp": _now(), "resourceVersion": self._next_rv()}})
                await bus.put({"type": "MODIFIED", "object": stored.raw})
            else:
                raw = stored.last.raw
                raw["metadata"]["resourceVersion"] = self._next_rv()
                self._deleted_at[object_key] = self._rv
                stored.delete()
                await bus.put({"type": "DELETED", "object": raw})
        elif request.action == kmock.action.UPDATE and request.name is not None and _is_apply(request):
            object_key = (request.resource, request.namespace, request.name)
            obj = request.data
            obj.setdefault("metadata", {})["namespace"] = request.namespace
            if object_key not in self._objects or self._objects[object_key].deleted:
                meta = obj["metadata"]
                meta["uid"] = str(uuid.uuid4())
                meta["resourceVersion"] = self._next_rv()
                meta["generation"] = 1
                meta.setdefault("creationTimestamp", _now())
                self._play_gateway(request, obj)
                if object_key not in self._objects:
                    self._objects[object_key] = obj
                else:
                    self._objects[object_key].create(obj)
                self._deleted_at.pop(object_key, None)
                self.applies += 1
                await bus.put({"type": "ADDED", "object": self._objects[object_key].last.raw})
                return None
            stored = self._objects[object_key]
            before = copy.deepcopy(stored.raw)
            after = applied_by_sole_manager(before, obj)
            self.applies += 1
            if after == before:  # the API server answers an apply that changes nothing without a write
                return None
            after["metadata"]["resourceVersion"] = self._next_rv()
            if after.get("spec") != before.get("spec"):
                after["metadata"]["generation"] = (before["metadata"].get("generation") or 1) + 1
            self._play_gateway(request, after)
            stored.history.append(after)
            await bus.put({"type": "MODIFIED", "object": after})
        elif request.action == kmock.action.UPDATE and request.name is not None:
            object_key = (request.resource, request.namespace, request.name)
            if object_key not in self._objects or self._objects[object_key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            stored = self._objects[object_key]
            before = copy.deepcopy(stored.raw)
            patch = request.data
            if isinstance(patch, dict):
                expected = (patch.get("metadata") or {}).get("resourceVersion")
                if expected is not None and expected != before["metadata"].get("resourceVersion"):
                    raise kmock.KubernetesError(
                        status=409, reason="Conflict", message="stale resourceVersion"
                    )
                stored.patch(patch)
            else:
                try:
                    after = jsonpatch.apply_patch(before, list(patch or []), in_place=False)
                except jsonpatch.JsonPatchTestFailed as exc:
                    raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from exc
                except (jsonpatch.JsonPatchConflict, jsonpatch.JsonPointerException) as exc:
                    raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from exc
                stored.history.append(after)
            after = copy.deepcopy(stored.raw)
            after["metadata"]["resourceVersion"] = self._next_rv()
            generation = before["metadata"].get("generation") or 1
            if after.get("spec") != before.get("spec"):
                generation += 1
            after["metadata"]["generation"] = generation
            if request.subresource is None:
                self._play_gateway(request, after)
            stored.history[-1] = after
            await bus.put({"type": "MODIFIED", "object": after})

        if object_key is not None and object_key in self._objects and not self._objects[object_key].deleted:
            meta = self._objects[object_key].raw.get("metadata", {})
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                return object_key
        return None

    def _play_gateway(self, request: kmock.Request, obj: Manifest) -> None:
        if (
            self.gateway_accepts_routes
            and request.resource is not None
            and request.resource.plural == "httproutes"
        ):
            obj["status"] = parents_status(obj)

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        payload: Any = await super()._serve_list(request)
        payload["metadata"]["resourceVersion"] = str(self._rv)
        selector = request.params.get("labelSelector")
        if selector:
            payload["items"] = [item for item in payload["items"] if selector_matches(item, selector)]
        return payload  # type: ignore[no-any-return]

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        yield b""
        assert request.resource is not None
        since = int(request.params.get("resourceVersion") or 0)
        selector = request.params.get("labelSelector")
        bus = self._buses[request.resource]
        # Snapshot and subscription under one lock: no event can fall between them.
        async with self._lock:
            events: list[tuple[int, dict[str, Any]]] = []
            for key, obj in self._objects.items():
                resource, namespace, name = key
                if not self._matches(request, resource, namespace, name):
                    continue
                if selector and not selector_matches(obj.last.raw, selector):
                    continue
                if not obj.deleted:
                    raw = obj.raw
                    rv = int(raw.get("metadata", {}).get("resourceVersion") or 0)
                    if rv > since:
                        kind = "ADDED" if self._created_rv(obj) > since else "MODIFIED"
                        events.append((rv, {"type": kind, "object": raw}))
                elif since and self._deleted_at.get(key, 0) > since:
                    events.append((self._deleted_at[key], {"type": "DELETED", "object": obj.last.raw}))
            events.sort(key=lambda pair: pair[0])
            marker = await bus.mark()
        try:
            for _, event in events:
                yield event
            async for event in bus.stream(since=marker):
                meta = event.get("object", {}).get("metadata", {})
                if self._matches(request, request.resource, meta.get("namespace"), meta.get("name")) and (
                    not selector or selector_matches(event.get("object", {}), selector)
                ):
                    yield event
        finally:
            with contextlib.suppress(Exception):
                await bus.unmark(marker)

    @staticmethod
    def _created_rv(obj: Any) -> int:
        """resourceVersion at which the object's current life began (after its last deletion)."""
        created = 0
        for version in obj.history:
            if version is None:
                created = 0
            elif not created:
                created = int(version.get("metadata", {}).get("resourceVersion") or 0)
        return created

    @staticmethod
    def _matches(request: kmock.Request, resource: Any, namespace: str | None, name: str) -> bool:
        return bool(
            resource == request.resource
            and (request.namespace is None or namespace == request.namespace)
            and (request.name is None or name == request.name)
        )


# --------------------------------------------------------------------------- threads


class LoopThread:
    """An asyncio event loop in a daemon thread; run coroutines in it from the test's thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


RESOURCE_PATHS = {
    "Model": "berth.dev/v1alpha1/models",
    "EndpointConfig": "berth.dev/v1alpha1/endpointconfigs",
    "Endpoint": "berth.dev/v1alpha1/endpoints",
    "TransformJob": "berth.dev/v1alpha1/transformjobs",
    "MonitoringSchedule": "berth.dev/v1alpha1/monitoringschedules",
    "Job": "batch/v1/jobs",
    "CronJob": "batch/v1/cronjobs",
    "Deployment": "apps/v1/deployments",
    "Service": "v1/services",
    "Pod": "v1/pods",
    "Event": "v1/events",
    "HorizontalPodAutoscaler": "autoscaling/v2/horizontalpodautoscalers",
    "PodDisruptionBudget": "policy/v1/poddisruptionbudgets",
    "Ingress": "networking.k8s.io/v1/ingresses",
    "HTTPRoute": "gateway.networking.k8s.io/v1/httproutes",
}


def api_path(kind: str, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    group_version_plural = RESOURCE_PATHS[kind]
    *group_version, plural = group_version_plural.split("/")
    base = "/api/v1" if group_version == ["v1"] else "/apis/" + "/".join(group_version)
    path = f"{base}/namespaces/{namespace}/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


class KMockCluster:
    """A running BerthKMock on 127.0.0.1 with synchronous helpers for tests."""

    def __init__(self) -> None:
        self._loop = LoopThread("kmock")
        self._stack = contextlib.AsyncExitStack()
        self.handler: BerthKMock = self._loop.run(self._start())
        self.url = str(self.handler.url).rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=10)

    async def _start(self) -> BerthKMock:
        handler = BerthKMock()
        await self._stack.enter_async_context(handler)
        await self._stack.enter_async_context(kmock.Server(handler))
        return handler

    def close(self) -> None:
        self.http.close()
        with contextlib.suppress(Exception):
            self._loop.run(self._stack.aclose(), timeout=10)
        self._loop.stop()

    # ------------------------------------------------------------------ API over HTTP

    def create(self, obj: Manifest) -> Manifest:
        meta = obj["metadata"]
        response = self.http.post(api_path(obj["kind"], meta.get("namespace", "default")), json=obj)
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def get(self, kind: str, namespace: str, name: str) -> Manifest | None:
        response = self.http.get(api_path(kind, namespace, name))
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def list(self, kind: str, namespace: str) -> list[Manifest]:
        response = self.http.get(api_path(kind, namespace))
        response.raise_for_status()
        return response.json()["items"]  # type: ignore[no-any-return]

    def patch(
        self, kind: str, namespace: str, name: str, patch: Manifest, subresource: str | None = None
    ) -> Manifest:
        response = self.http.patch(
            api_path(kind, namespace, name, subresource),
            json=patch,
            headers={"Content-Type": "application/merge-patch+json"},
        )
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def delete(self, kind: str, namespace: str, name: str) -> None:
        response = self.http.delete(api_path(kind, namespace, name))
        if response.status_code != 404:
            response.raise_for_status()

    # ------------------------------------------------------------------ recorded state

    def history(self, kind: str, namespace: str, name: str) -> list[Manifest | None]:
        """Every stored version of an object, oldest first (None marks a deletion)."""

        async def read() -> list[Manifest | None]:
            async with self.handler._lock:
                key = (kmock.resource(RESOURCE_PATHS[kind]), namespace, name)
                if key not in self.handler.objects._objects:
                    return []
                obj = self.handler.objects._objects[key]
                return [None if version is None else copy.deepcopy(version.raw) for version in obj.history]

        return self._loop.run(read())

    def request_count(self) -> int:
        return len(self.handler._requests)

    def requests_since(self, start: int) -> list[kmock.Request]:
        return list(self.handler._requests[start:])

    def writes_since(self, start: int, agents: tuple[str, ...] = ("berth-operator", "kopf")) -> list[str]:
        """Method and path of every write after request number `start` by the given user agents."""
        writes = []
        for request in self.requests_since(start):
            method = str(request.method.value if hasattr(request.method, "value") else request.method)
            agent = request.headers.get("User-Agent", "")
            if method in WRITE_METHODS and any(agent.startswith(a) for a in agents):
                writes.append(f"{method} {request.url.path}")
        return writes

    def reads_of(self, path: str, start: int = 0) -> int:
        """How many GETs of exactly this path were made after request number `start`."""
        return sum(
            1 for r in self.requests_since(start) if r.url.path == path and str(r.method.value) == "GET"
        )


def wait_for(
    probe: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.02, message: str = ""
) -> T:
    """Poll until `probe` returns something truthy; fail with the last value after `timeout`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message or probe}: last={last!r}")


@contextlib.contextmanager
def running_cluster() -> Iterator[KMockCluster]:
    cluster = KMockCluster()
    try:
        yield cluster
    finally:
        cluster.close()


class OperatorThread:
    """The Berth operator (kopf) in its own thread and event loop, logged in to a KMockCluster."""

    def __init__(self, cluster: KMockCluster, settings: Any = None, *, resync_seconds: float = 300.0) -> None:
        from berth_operator.runner import OperatorOptions
        from berth_operator.settings import Settings

        self.options = OperatorOptions(
            settings=settings or Settings(),
            standalone=True,
            server_url=cluster.url,
            resync_seconds=resync_seconds,
        )
        from berth_operator.handlers import OperatorContext

        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        # Read while it runs: reconciles counted, requests its Kubernetes client made.
        self.context = OperatorContext(
            settings=self.options.settings, server_url=cluster.url, resync_seconds=resync_seconds
        )
        self._thread = threading.Thread(target=self._main, name="berth-operator", daemon=True)

    def _main(self) -> None:
        from berth_operator.runner import run_operator

        try:
            asyncio.run(
                run_operator(
                    self.options, ready_flag=self.ready, stop_flag=self.stopping, context=self.context
                )
            )
        except BaseException as exc:  # surfaced by start()/stop()
            self.error = exc
            self.ready.set()

    def start(self, timeout: float = 15.0) -> OperatorThread:
        self._thread.start()
        if not self.ready.wait(timeout):
            raise AssertionError("the operator did not get ready in time")
        if self.error is not None:
            raise AssertionError(f"the operator failed to start: {self.error!r}")
        return self

    def stop(self, timeout: float = 20.0) -> None:
        self.stopping.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("the operator did not stop in time")

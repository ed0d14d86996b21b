"""The local router: carries out the planned HTTPRoutes on one port, as a Gateway would.

A raw ASGI app (no framework on the hot path) behind uvicorn with uvloop + httptools and
the serving runtime's HTTP edge (`berth_serving.httpedge`: time, size and connection
limits), forwarding over pooled keep-alive connections (`upstream.py`). Replicas are counted
in flight so a fleet can be drained (taken off the route, then waited for) before it stops.

A serverless variant's backend (one reached through the KEDA HTTP add-on's interceptor) goes
through its Gate (interceptor.py): held while the variant has no ready replica or no free slot,
refused beyond what may be held, and its answer marked X-Berth-Cold-Start after a cold start.

The path is matched and rewritten as sent, still percent-encoded, and forwarded so: a
decoded path written into the request line to a replica would let `%0d%0a` in a client's
path end that line and smuggle a request of the client's own. A body is forwarded only once
it is whole; a client that leaves mid-upload sends nothing on.

A MultiModel variant's backend is a ModelPool (modelroute.py): a request that names a model
goes to the replica that owns it by rendezvous hashing, spills to the model's second choice
when the owner is saturated, and is tried once more there when the owner answers 503 or 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from berth_serving.auth.guard import PROXIED_HEADER
from berth_serving.httpedge import Edge, EdgeLimits, unsafe_target

from ..planner.serverless import TARGET_HEADER
from .interceptor import (
    COLD_START_HEADER,
    RETRY_AFTER_COLD_SECONDS,
    RETRY_AFTER_FULL_SECONDS,
    Gate,
    LocalInterceptor,
)
from .modelroute import ModelPool, request_target
from .routetable import (
    BackendRef,
    Manifest,
    Mirror,
    RouteTable,
    compile_routes,
    pick_backend,
    rewrite_path,
    select_rule,
)
from .upstream import Body, ConnectionPool, UnsafeRequest, UpstreamError

ASGIReceive = Callable[[], Awaitable[dict[str, Any]]]
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]

log = logging.getLogger("berth.up")
STATUS_PATH = "/_berth/status"
_STATUS_RAW_PATH = STATUS_PATH.encode()
# GET /_berth/services/NAMESPACE/SERVICE/models: the GET /models of every ready replica behind a
# Service, in one answer. A rollout's new MultiModel fleet warms from it (the old fleet's most
# used models), where on a cluster it resolves the old variant's headless Service to every pod.
SERVICES_PATH = "/_berth/services/"
_SERVICES_RAW_PATH = SERVICES_PATH.encode()
_FLEET_MODELS_SECONDS = 10.0
MAX_BODY_BYTES = 64 * 1024 * 1024
# The edge of `berth up`: /_berth/status answers even when every connection is busy, and the
# bodies in transit at once are bounded in memory (four of the largest the router takes).
ROUTER_LIMITS = EdgeLimits(probe_paths=frozenset({STATUS_PATH}), max_body_bytes_in_transit=4 * MAX_BODY_BYTES)
# How long a stop waits for requests in flight, and bodies still arriving, before it drops them.
SHUTDOWN_GRACE_SECONDS = 5
_TARGET_HEADER = TARGET_HEADER.lower().encode()
# Answers of a replica that refused a model's request without serving it (overloaded, queue
# full): tried once more on the model's other choice.
_REFUSED = frozenset({429, 503})
MIRROR_LIMIT = 64  # mirrored requests in flight at most; beyond that copies are dropped
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"host",
        b"expect",  # the router already holds the whole body: no 100 Continue from replicas
    }
)


@dataclass(eq=False)
class Upstream:
    """One replica as the router sees it."""

    host: str
    port: int
    name: str = ""
    inflight: int = 0
    pool: ConnectionPool = field(init=False)
    # A MultiModel variant's replica: the rendezvous name (kept across restarts, as the port
    # is) and the router's requests in flight to it per model key.
    identity: str = field(init=False)
    models_inflight: dict[str, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.pool = ConnectionPool(self.host, self.port)
        self.identity = f"{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


class Pool:
    """Ready replicas of one Service, taken in turn."""

    __slots__ = ("_next", "upstreams")

    def __init__(self, upstreams: list[Upstream]) -> None:
        self.upstreams = upstreams
        self._next = 0

    def take(self, avoid: Upstream | None = None) -> Upstream | None:
        count = len(self.upstreams)
        for _ in range(count):
            upstream = self.upstreams[self._next % count]
            self._next += 1
            if upstream is not avoid or count == 1:
                return upstream
        return None


def _error(code: int, message: str, **extra: Any) -> tuple[int, bytes]:
    return code, orjson.dumps({"error": {"code": code, "message": message, **extra}})


class Router:
    def __init__(self, status: Callable[[], Any] | None = None, seed: int | None = None) -> None:
        self.table = RouteTable()
        self.pools: dict[tuple[str, str], Pool | ModelPool[Upstream]] = {}
        self.ready_counts: dict[tuple[str, str], int] = {}
        # What pick_backend may choose: ready replicas, and every serverless target (it holds).
        self.available: dict[tuple[str, str], int] = {}
        self.interceptor = LocalInterceptor()
        self.status = status or (lambda: {})
        self.mirrors_sent = 0
        self.mirrors_dropped = 0
        self._rng = random.Random(seed)
        self._mirror_tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ configuration

    def set_routes(self, routes: list[Manifest]) -> None:
        """The HTTPRoutes; a backend through the interceptor resolves by the HTTPScaledObjects
        the interceptor was last given (set_scaled_objects first)."""
        self.table = compile_routes(routes, self.interceptor.services())
        self._update_available()

    def set_scaled_objects(self, objects: list[Manifest]) -> None:
        self.interceptor.set_objects(objects)
        self.interceptor.set_ready(self.ready_counts)
        self._update_available()

    def _update_available(self) -> None:
        available = dict(self.ready_counts)
        for key in self.interceptor.services().values():
            available[key] = max(1, available.get(key, 0))
        self.available = available

    def set_pools(
        self,
        pools: Mapping[tuple[str, str], list[Upstream]],
        multi_model: Mapping[tuple[str, str], int] | None = None,
    ) -> None:
        """The ready replicas of each Service; `multi_model`: the Services of MultiModel variants,
        each with its saturation (ModelPool)."""
        multi_model = multi_model or {}
        old = self.pools
        self.pools = {key: self._pool(old.get(key), ups, multi_model.get(key)) for key, ups in pools.items()}
        self.ready_counts = {key: len(pool.upstreams) for key, pool in self.pools.items()}
        self._update_available()
        self.interceptor.set_ready(self.ready_counts)

    @staticmethod
    def _pool(
        old: Pool | ModelPool[Upstream] | None, upstreams: list[Upstream], saturation: int | None
    ) -> Pool | ModelPool[Upstream]:
        if saturation is None:
            return old if type(old) is Pool and old.upstreams == upstreams else Pool(upstreams)
        if type(old) is ModelPool and old.upstreams == upstreams and old.saturation == saturation:
            return old
        return ModelPool(upstreams, saturation)

    def known_endpoints(self) -> list[str]:
        """The paths a client can call: an endpoint's prefix rewritten to / takes /invocations; a
        prefix rewritten to a path of its own (async-invocations) is called as it is."""
        known = set()
        for prefix, rules in self.table.prefixes.items():
            if not prefix:
                continue
            whole = any(rule.replace_prefix not in (None, "/") for rule in rules)
            known.add(prefix if whole else f"{prefix}/invocations")
        return sorted(known)

    async def start(self) -> None:
        """Nothing to open: connections to replicas are made on first use."""

    async def close(self) -> None:
        for task in list(self._mirror_tasks):
            task.cancel()
        for pool in self.pools.values():
            for upstream in pool.upstreams:
                upstream.pool.close()

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        raw_path: bytes = scope["raw_path"]
        if raw_path == _STATUS_RAW_PATH:
            await _respond(send, 200, orjson.dumps(self.status(), option=orjson.OPT_NON_STR_KEYS))
            return
        if raw_path.startswith(_SERVICES_RAW_PATH) and scope["method"] == "GET":
            await _respond(send, *await self._fleet_models(raw_path))
            return
        query: bytes = scope.get("query_string", b"")
        unsafe = unsafe_target(raw_path, query)
        if unsafe is not None:
            await _respond(send, *_error(400, f"bad request path: {unsafe}"), close=True)
            return
        path = raw_path.decode("latin-1")
        found = self.table.lookup(path)
        if found is None:
            code, body = _error(404, f"no endpoint at {path}", knownEndpoints=self.known_endpoints())
            await _respond(send, code, body)
            return
        prefix, rules = found
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        rule = select_rule(rules, headers)
        if rule is None:
            code, body = _error(404, f"no route matches {path}", knownEndpoints=self.known_endpoints())
            await _respond(send, code, body)
            return
        declared = headers.get("content-length")
        if declared is not None and int(declared) > MAX_BODY_BYTES:
            # Refused before a byte of it is read; the rest is never read, so the connection closes.
            await _respond(send, *_error(413, f"request body over {MAX_BODY_BYTES} bytes"), close=True)
            return
        try:
            request_body = await _read_body(receive, None if declared is None else int(declared))
        except _ClientGone:
            return  # nothing to answer, and nothing is forwarded
        except _TooLarge:
            await _respond(send, *_error(413, f"request body over {MAX_BODY_BYTES} bytes"), close=True)
            return
        target = rewrite_path(raw_path, prefix, rule.replace_prefix)
        if query:
            target += b"?" + query
        # Marked as proxied (whatever the client sent): a replica that trusts its loopback (an
        # async replica, for its worker) must not trust what this router brings it from elsewhere.
        forward = [(k, v) for k, v in scope["headers"] if k not in HOP_BY_HOP and k != PROXIED_HEADER]
        forward.append((PROXIED_HEADER, b"1"))
        for mirror in rule.mirrors:
            self._mirror(mirror, scope["method"], target, forward, request_body)
        try:
            status, response_headers, payload = await self._forward(
                rule.backends, scope["method"], target, forward, request_body, receive
            )
        except UnsafeRequest as exc:
            status, payload = _error(400, str(exc))
            response_headers = _json_headers(payload)
        except Exception as exc:  # a client never sees a traceback, whatever went wrong
            log.exception("router: %s %s failed", scope["method"], path)
            status, payload = _error(502, f"router error: {type(exc).__name__}")
            response_headers = _json_headers(payload)
        if status == 0:
            return  # the client left while its request was held: nobody to answer
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})

    async def _lifespan(self, receive: ASGIReceive, send: ASGISend) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _fleet_models(self, raw_path: bytes) -> tuple[int, bytes]:
        """GET /models of each ready replica of the Service the path names, their models in one
        list (each replica lists the models it holds: by affinity, a share of the fleet's)."""
        parts = raw_path[len(_SERVICES_RAW_PATH) :].decode("latin-1").split("/")
        if len(parts) != 3 or parts[2] != "models" or not parts[0] or not parts[1]:
            return _error(404, f"no such path: use {SERVICES_PATH}NAMESPACE/SERVICE/models")
        pool = self.pools.get((parts[0], parts[1]))
        if pool is None:
            return _error(404, f"no Service {parts[0]}/{parts[1]}")

        async def models_of(upstream: Upstream) -> list[Any]:
            try:
                status, _, payload = await asyncio.wait_for(
                    upstream.pool.send("GET", b"/models", [], b""), _FLEET_MODELS_SECONDS
                )
                document = orjson.loads(payload) if status == 200 else {}
            except (UpstreamError, TimeoutError, orjson.JSONDecodeError):
                return []
            models = document.get("models") if isinstance(document, dict) else None
            return models if isinstance(models, list) else []

        found = await asyncio.gather(*(models_of(u) for u in pool.upstreams))
        return 200, orjson.dumps(
            {"replicas": len(pool.upstreams), "models": [m for models in found for m in models]}
        )

    # ------------------------------------------------------------------ forwarding

    async def _forward(
        self,
        backends: tuple[BackendRef, ...],
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: Body,
        receive: ASGIReceive | None = None,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        backend = pick_backend(backends, self.available, self._rng)
        if backend is None:
            names = ", ".join(b.service for b in backends) or "none"
            code, payload = _error(503, f"no ready replica behind this endpoint (backends: {names})")
            return code, [*_json_headers(payload), (b"retry-after", b"1")], payload
        gate = self.interceptor.gates.get(backend.target) if backend.target is not None else None
        if gate is not None:
            return await self._forward_held(gate, backend, backends, method, target, headers, body, receive)
        return await self._forward_to(backend, backends, method, target, headers, body)

    async def _forward_held(
        self,
        gate: Gate,
        backend: BackendRef,
        backends: tuple[BackendRef, ...],
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: Body,
        receive: ASGIReceive | None,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Through the interceptor: a slot of the gate first (held for it, or refused)."""
        left = _left(receive) if receive is not None else None
        # As the route's RequestHeaderModifier sets it (over whatever the client sent).
        headers = [(k, v) for k, v in headers if k != _TARGET_HEADER] + [
            (_TARGET_HEADER, gate.target.header.encode())
        ]
        for _ in range(3):  # a replica that leaves between its slot and the send: hold again
            admission = await gate.enter(left)
            if admission.outcome == "gone":
                return 0, [], b""
            if admission.outcome == "full":
                code, payload = _error(
                    429,
                    f"variant {gate.target.deployment} has {gate.target.max_concurrency} requests in flight "
                    f"and {gate.target.max_held} held (maxConcurrency, maxHeldRequests): try again shortly",
                )
                retry = str(RETRY_AFTER_FULL_SECONDS).encode()
                return code, [*_json_headers(payload), (b"retry-after", retry)], payload
            if admission.outcome == "timeout":
                code, payload = _error(503, gate.timeout_message())
                retry = str(RETRY_AFTER_COLD_SECONDS).encode()
                return code, [*_json_headers(payload), (b"retry-after", retry)], payload
            if self.pools.get(backend.key) is None or not self.pools[backend.key].upstreams:
                gate.exit()
                continue
            try:
                status, out, payload = await self._forward_to(
                    backend, backends, method, target, headers, body
                )
            finally:
                gate.exit()
            if admission.cold_ms is not None:
                out.append((COLD_START_HEADER, str(admission.cold_ms).encode()))
                cold = gate.answered(admission.cold_ms)
                if cold is not None:
                    log.info("%s", self.interceptor.describe(gate.target, cold))
            return status, out, payload
        code, payload = _error(503, f"no ready replica behind this endpoint (backends: {backend.service})")
        return code, [*_json_headers(payload), (b"retry-after", b"1")], payload

    async def _forward_to(
        self,
        backend: BackendRef,
        backends: tuple[BackendRef, ...],
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: Body,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        pool = self.pools.get(backend.key)
        if type(pool) is ModelPool:
            found = request_target(target, headers)
            if found.problem is not None:
                code, payload = _error(400, found.problem)
                return code, _json_headers(payload), payload
            if found.key is not None:
                return await self._forward_model(pool, found.key, method, target, headers, body)
        upstream = pool.take() if pool is not None else None
        if upstream is None:  # a serverless target's replica left between its slot and now
            code, payload = _error(
                503, f"no ready replica behind this endpoint (backends: {backend.service})"
            )
            return code, [*_json_headers(payload), (b"retry-after", b"1")], payload
        try:
            return await self._send(upstream, method, target, headers, body)
        except UpstreamError:
            # The replica died or refused the connection before answering: one more try on
            # another replica of the route (or the same one on a fresh connection).
            retry = self._retry_upstream(backends, upstream)
            if retry is not None:
                with contextlib.suppress(UpstreamError):
                    return await self._send(retry, method, target, headers, body)
            code, payload = _error(502, f"replica {upstream.name or upstream.base_url} did not answer")
            return code, _json_headers(payload), payload

    async def _forward_model(
        self,
        pool: ModelPool[Upstream],
        key: str,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: Body,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """A model's request to its replica: the owner (or, saturated, the second choice); once
        more on the other choice when that one answers 503 or 429, or on the next replica in the
        model's order when it does not answer at all."""
        upstream = pool.choose(key)
        if upstream is None:
            code, payload = _error(503, "no ready replica behind this endpoint")
            return code, [*_json_headers(payload), (b"retry-after", b"1")], payload
        try:
            answer = await self._send_model(upstream, key, method, target, headers, body)
        except UpstreamError:
            retry = pool.choose(key, avoid=(upstream,))
            if retry is not None and retry is not upstream:
                with contextlib.suppress(UpstreamError):
                    return await self._send_model(retry, key, method, target, headers, body)
            code, payload = _error(502, f"replica {upstream.name or upstream.base_url} did not answer")
            return code, _json_headers(payload), payload
        if answer[0] in _REFUSED:
            other = pool.other_choice(key, upstream)
            if other is not None:
                with contextlib.suppress(UpstreamError):
                    return await self._send_model(other, key, method, target, headers, body)
        return answer

    async def _send_model(
        self,
        upstream: Upstream,
        key: str,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: Body,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        counts = upstream.models_inflight
        counts[key] = counts.get(key, 0) + 1
        try:
            return await self._send(upstream, method, target, headers, body)
        finally:
            left = counts[key] - 1
            if left:
                counts[key] = left
            else:
                del counts[key]

    def _retry_upstream(self, backends: tuple[BackendRef, ...], failed: Upstream) -> Upstream | None:
        backend = pick_backend(backends, self.ready_counts, self._rng)
        if backend is None:
            return None
        pool = self.pools.get(backend.key)
        return pool.take(avoid=failed) if pool is not None else None

    async def _send(
        self, upstream: Upstream, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: Body
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        upstream.inflight += 1
        try:
            status, raw_headers, payload = await upstream.pool.send(method, target, headers, body)
        finally:
            upstream.inflight -= 1
        out = [(k, v) for k, v in raw_headers if k not in HOP_BY_HOP]
        out.append((b"content-length", str(len(payload)).encode()))
        return status, out, payload

    def _mirror(
        self, mirror: Mirror, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: Body
    ) -> None:
        """Fire and forget: the answer never waits for the shadow, and copies beyond the
        limit are dropped rather than queued."""
        if mirror.percent < 100 and self._rng.random() * 100 >= mirror.percent:
            return
        pool = self.pools.get(mirror.backend.key)
        if type(pool) is ModelPool:  # a shadow MultiModel variant: the model's owner there too
            key = request_target(target, headers).key
            upstream = pool.choose(key) if key is not None else pool.take()
        else:
            upstream = pool.take() if pool else None
        if upstream is None:
            return
        if len(self._mirror_tasks) >= MIRROR_LIMIT:
            self.mirrors_dropped += 1
            return
        task = asyncio.get_running_loop().create_task(
            self._send_mirror(upstream, method, target, headers, body)
        )
        self._mirror_tasks.add(task)
        task.add_done_callback(self._mirror_tasks.discard)

    async def _send_mirror(
        self, upstream: Upstream, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: Body
    ) -> None:
        try:
            await self._send(upstream, method, target, headers, body)
            self.mirrors_sent += 1
        except (UpstreamError, UnsafeRequest):
            self.mirrors_dropped += 1


def _left(receive: ASGIReceive) -> Callable[[], Awaitable[None]]:
    """Returns once the client has disconnected (its body is read: the next ASGI message is the
    disconnect); anything else means no such news will come, and it waits until cancelled."""

    async def left() -> None:
        message = await receive()
        if message["type"] != "http.disconnect":
            await asyncio.Event().wait()

    return left


class _ClientGone(Exception):
    """The client disconnected (or the edge cut it off) before its body was whole."""


class _TooLarge(Exception):
    pass


async def _read_body(receive: ASGIReceive, declared: int | None) -> Body:
    """The whole body; _ClientGone when it never arrives whole. With a Content-Length the
    chunks are copied into one buffer of that size as they come: no list of chunks joined
    later, so a large upload costs its size once, not twice."""
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _ClientGone()
    chunk: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return chunk
    if declared is None:  # chunked: no size known in advance
        chunks, size = [chunk], len(chunk)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _TooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
    buffer = bytearray(declared)
    view = memoryview(buffer)
    filled = 0
    while True:
        view[filled : filled + len(chunk)] = chunk  # the parser keeps a body within its Content-Length
        filled += len(chunk)
        if not message.get("more_body", False):
            break
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        chunk = message.get("body", b"")
    view.release()
    return buffer


def _json_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


async def _respond(send: ASGISend, status: int, body: bytes, close: bool = False) -> None:
    headers = _json_headers(body)
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class QuietServer:
    """uvicorn's Server with the shared HTTP edge and without its signal capture: `berth up`
    owns SIGINT/SIGTERM, and calls drain() when it starts to stop."""

    def __init__(self, app: Any, host: str, port: int, limits: EdgeLimits = ROUTER_LIMITS) -> None:
        import uvicorn

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        self.edge = Edge(limits)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="uvloop",
            lifespan="on",
            access_log=False,
            log_level="warning",
            proxy_headers=False,
            server_header=False,  # the replica's own Date and Server headers pass through
            date_header=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
            **self.edge.uvicorn_options(),
        )
        self.server = _Server(config)

    async def serve(self, sockets: list[Any] | None = None) -> None:
        await self.server.serve(sockets=sockets)

    @property
    def started(self) -> bool:
        return bool(self.server.started)

    def drain(self) -> None:
        """Close idle client connections and drop stalled uploads now (call on the loop)."""
        if self.server.started:
            self.edge.drain(SHUTDOWN_GRACE_SECONDS)

    def stop(self) -> None:
        self.server.should_exit = True

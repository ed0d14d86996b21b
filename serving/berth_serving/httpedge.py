"""The HTTP edge of `berth serve` and of `berth up`'s router: the limits uvicorn lacks.

uvicorn 0.54's httptools protocol closes a keep-alive connection left idle after a response
(`timeout_keep_alive`) and nothing else: a connection that never sends a request, or never
finishes its head or its body, is held forever with whatever it sent; httptools joins a
header value with `+=` and no size limit (one client sending a 128 MB header stalled every
other client's /ping for up to 9 s); and `limit_concurrency` refuses /ping as well, with no
Retry-After. `EdgeProtocol`, a subclass of that protocol, adds per connection:

- a request head must arrive within `header_timeout_seconds` of its first byte (of the
  connection's first byte for the first request) and within `max_header_bytes`: else a 408
  or 431 answer and the connection closes;
- a body must not stall longer than `body_idle_seconds` while the server reads it, and must
  be whole within `body_timeout_seconds` of its head: else 408, the connection closes and the
  app's `receive()` says `http.disconnect`, so it never runs a partial body;
- request bodies in transit (declared, on every connection together) stay within
  `max_body_bytes_in_transit`: a body that does not come with its head and would pass it is
  refused 503 with Retry-After before the app reads any of it;
- past `max_connections`, the oldest connection with no request in progress is closed to make
  room; when every one is busy, a newcomer may still ask for a probe path (`/ping`: the
  kubelet keeps its answer) and anything else gets 503, Retry-After and Connection: close;
  past a further reserve, new connections are closed at once;
- a path that decodes to control characters or spaces is a 400: nothing Berth serves has such
  a name, and the only use of one is to smuggle a request into a proxy's request line; so is
  a request line with no HTTP version (HTTP/0.9, what a raw CR/LF in a path makes of it).

`Edge.drain()` starts a graceful stop: connections with no request in progress close now,
bodies still arriving get a short grace and are dropped as soon as they stall.

On the hot path (a request that arrives in one read) this costs two Python calls and a few
attribute checks: timers are only armed for a request that does not arrive whole. Measured
by feeding one keep-alive connection on this 2-core machine: about 3 us per request on top
of the 37 us uvicorn's protocol takes.

An answer also leaves in one write: uvicorn writes the status line and headers as soon as
the app sends `http.response.start` and the body on `http.response.body`, two send() calls
(and two TCP segments, each waking the client) per answer; `HeadHolder` keeps the head back
until the body's first bytes (or a close) and writes both at once. A streamed answer's head
thus waits for its first chunk: nothing served here streams.
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from berth_serving.errors import HTTPError, error_body

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]
Headers = tuple[tuple[bytes, bytes], ...]

# Connections past max_connections that may still ask for a probe path before any are closed at
# accept; they get OVERFLOW_HEAD_SECONDS for their head and one answer.
OVERFLOW_RESERVE = 64
OVERFLOW_HEAD_SECONDS = 2.0
# During a drain, a body that has not moved for this long is dropped at once.
DRAIN_BODY_IDLE_SECONDS = 0.5

_UNSAFE_IN_PATH = re.compile(rb"[\x00-\x20\x7f]")
_UNSAFE_IN_QUERY = re.compile(rb"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class EdgeLimits:
    header_timeout_seconds: float = 10.0
    body_idle_seconds: float = 10.0
    body_timeout_seconds: float = 60.0
    # After a response, how long a keep-alive connection may wait for its next request (uvicorn's
    # timeout_keep_alive); a proxy in front should give up on idle connections sooner than this.
    keep_alive_seconds: float = 5.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 1024
    max_body_bytes_in_transit: int = 256 * 2**20
    # Paths answered even when every connection slot is busy.
    probe_paths: frozenset[str] = frozenset()
    # Added to the edge's own answers (the serving runtime names its variant on every answer).
    answer_headers: Headers = ()


def unsafe_target(raw_path: bytes, query: bytes = b"") -> str | None:
    """Why a request target must not be served or forwarded, or None when it is clean.

    The path may hold no control character or space, raw or percent-decoded; the query no
    control character (an encoded space is an ordinary query value). httptools already
    refuses raw ones; the decoded ones are what a proxy could be tricked into writing."""
    if _UNSAFE_IN_PATH.search(raw_path) or _UNSAFE_IN_QUERY.search(query):
        return "control character or space in the request target"
    if b"%" in raw_path and _UNSAFE_IN_PATH.search(urllib.parse.unquote_to_bytes(raw_path)):
        return "the path decodes to a control character or space"
    if b"%" in query and _UNSAFE_IN_QUERY.search(urllib.parse.unquote_to_bytes(query)):
        return "the query decodes to a control character"
    return None


def answer_bytes(
    status: int, message: str, *, v2: bool, retry_after: bool, extra: Headers = ()
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of one of the edge's own JSON answers, in the shape the path's API uses."""
    body = error_body(HTTPError(status, message), v2)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *extra,
    ]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    return headers, body


class Edge:
    """The limits and the shared state of one server's connections; `uvicorn_options()` goes
    into its uvicorn.Config."""

    def __init__(self, limits: EdgeLimits | None = None) -> None:
        self.limits = limits or EdgeLimits()
        self.connections: dict[EdgeProtocol, None] = {}  # accept order: the oldest first
        self.admitted = 0  # connections holding one of the max_connections slots
        self.body_bytes_in_transit = 0
        self.draining = False
        self.drain_deadline = float("inf")
        self.probe_paths = frozenset(path.encode() for path in self.limits.probe_paths)
        self.protocol: type[EdgeProtocol] = type("BoundEdgeProtocol", (EdgeProtocol,), {"edge": self})

    def uvicorn_options(self) -> dict[str, Any]:
        return {
            "http": self.protocol,
            "timeout_keep_alive": self.limits.keep_alive_seconds,
            "ws": "none",
            "limit_concurrency": None,
        }

    def admit(self, connection: EdgeProtocol) -> int:
        if self.admitted >= self.limits.max_connections:
            for other in self.connections:
                if other.admission == _ADMITTED and other.idle():
                    other.evict()
                    break
        if self.admitted < self.limits.max_connections:
            self.admitted += 1
            admission = _ADMITTED
        elif len(self.connections) - self.admitted < OVERFLOW_RESERVE:
            admission = _OVERFLOW
        else:
            return _REFUSED
        self.connections[connection] = None
        return admission

    def forget(self, connection: EdgeProtocol) -> None:
        if connection in self.connections:
            del self.connections[connection]
            if connection.admission == _ADMITTED:
                self.admitted -= 1

    def drain(self, grace_seconds: float) -> None:
        """Close every connection with no request in progress; bodies in transit get
        `grace_seconds` more at most and are dropped as soon as they stall."""
        loop = asyncio.get_running_loop()
        self.draining = True
        self.drain_deadline = loop.time() + grace_seconds
        for connection in list(self.connections):
            connection.drain()


_ADMITTED, _OVERFLOW, _REFUSED = 1, 2, 3
_HEAD_TIMER, _BODY_TIMER = 1, 2
_VERSIONS = frozenset({"1.0", "1.1"})


# Below this many body bytes the head is joined to the body; above, both are handed over as is.
_JOIN_BELOW = 64 * 1024


class HeadHolder:
    """The transport as one request's response cycle sees it: the answer's head (its first
    write once the response has started) waits for the next write or a close, so head and
    body go out in one send(). uvicorn writes a body for every answer but a HEAD one (an
    empty body too), so a HEAD answer's head is not held; anything written before the
    response starts (`100 Continue`) goes at once."""

    __slots__ = ("cycle", "held", "transport")

    def __init__(self, transport: asyncio.Transport, cycle: Any) -> None:
        self.transport = transport
        # The cycle until its head is held (then None); None from the start for HEAD.
        self.cycle = None if cycle.scope["method"] == "HEAD" else cycle
        self.held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self.held
        if held is not None:
            self.held = None
            if len(data) < _JOIN_BELOW:
                self.transport.write(held + data)
            else:
                self.transport.writelines((held, data))  # one send, no copy of a large body
        elif self.cycle is not None and self.cycle.response_started:
            self.cycle = None
            self.held = data
        else:
            self.transport.write(data)

    def flush(self) -> None:
        held = self.held
        if held is not None:
            self.held = None
            self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of its `edge` (bound by Edge)."""

    edge: Edge

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.admission = _ADMITTED
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind = 0
        self._head_scope: object = None  # the scope whose head _head_bytes counts
        self._head_bytes = 0
        self._read_size = 0
        self._body_reserved = 0
        self._body_counted = False  # no Content-Length: bytes are counted as they arrive
        self._body_deadline = 0.0
        self._body_last = 0.0
        self._app = self.app

    # --- connection -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.admission = self.edge.admit(self)
        if self.admission == _REFUSED:
            transport.close()
            return
        limits = self.edge.limits
        seconds = limits.header_timeout_seconds
        if self.admission == _OVERFLOW:
            seconds = min(seconds, OVERFLOW_HEAD_SECONDS)
        self._arm(_HEAD_TIMER, seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._cancel_timer()
        self._release_body()
        self.edge.forget(self)

    def idle(self) -> bool:
        """No request in progress: the connection can be closed without losing an answer."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return False
        return not self.pipeline and not self._in_body()

    def evict(self) -> None:
        self.edge.forget(self)
        self.admission = 0
        self.transport.close()

    def drain(self) -> None:
        if self.idle():
            self.transport.close()
            return
        if self.cycle is not None:
            self.cycle.keep_alive = False
        if self._in_body():
            self._body_deadline = min(self._body_deadline, self.edge.drain_deadline)
            self._check_body()

    # --- parsing ----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._read_size = len(data)
        super().data_received(data)
        scope = self.scope
        if scope is None:
            return
        if "method" not in scope:  # a head is still arriving
            if self.transport.is_closing():
                return
            if scope is not self._head_scope:
                self._head_scope = scope
                self._head_bytes = 0
            self._head_bytes += len(data)
            if self._head_bytes > self.edge.limits.max_header_bytes:
                self._refuse_now(431, f"request head over {self.edge.limits.max_header_bytes} bytes")
            elif self._timer is None:
                self._arm(_HEAD_TIMER, self.edge.limits.header_timeout_seconds)
            return
        cycle = self.cycle
        if cycle is not None and cycle.more_body and cycle.scope is scope:  # a body is arriving
            if self.transport.is_closing():
                return
            now = self.loop.time()
            if self._timer is None:  # its first read since the head
                self._body_deadline = min(
                    now + self.edge.limits.body_timeout_seconds, self.edge.drain_deadline
                )
                if not self._admit_body():
                    return
            elif self._body_counted:
                self._body_reserved += len(data)
                self.edge.body_bytes_in_transit += len(data)
                if self.edge.body_bytes_in_transit > self.edge.limits.max_body_bytes_in_transit:
                    self._refuse_now(503, "too many request bodies in transit; retry", retry_after=True)
                    return
            self._body_last = now
            if self._timer is None:
                self._check_body()
        elif self._body_reserved or self._timer is not None:  # a body has just ended
            self.edge.body_bytes_in_transit -= self._body_reserved
            self._body_reserved = 0
            self._cancel_timer()

    def _admit_body(self) -> bool:
        """A body that did not arrive with its head holds memory while the rest comes: its
        declared size (or, chunked, its bytes so far) must fit the budget of bodies in transit."""
        declared = None
        for name, value in self.headers:
            if name == b"content-length":
                declared = int(value)  # llhttp has checked it is a number
                break
        self._body_counted = declared is None
        size = self._read_size if declared is None else declared
        budget = self.edge.limits.max_body_bytes_in_transit
        if size > budget:
            self._refuse_now(413, f"payload of {size} bytes is over the limit of {budget} bytes")
            return False
        if self.edge.body_bytes_in_transit + size > budget:
            self._refuse_now(503, "too many request bodies in transit; retry", retry_after=True)
            return False
        self._body_reserved = size
        self.edge.body_bytes_in_transit += size
        return True

    def on_headers_complete(self) -> None:
        if self._timer is not None:
            self._cancel_timer()
        limits = self.edge.limits
        refusal = None
        if (  # one test for the usual request, the details only when something is off
            self._head_bytes + self._read_size > limits.max_header_bytes
            or b"%" in self.url
            or not self.parser.should_keep_alive()  # HTTP/0.9 (refused) never is
            or self.admission != _ADMITTED
        ):
            refusal = self._refusal()
        if refusal is not None:
            status, message, retry_after = refusal
            self.app = self._answer_app(status, message, retry_after)
            try:
                super().on_headers_complete()
            finally:
                self.app = self._app
            if self.cycle is not None:
                self.cycle.keep_alive = False
            return
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is None:
            return
        cycle.transport = HeadHolder(self.transport, cycle)  # type: ignore[assignment]
        if self.edge.draining or self.admission == _OVERFLOW:
            cycle.keep_alive = False

    def _refusal(self) -> tuple[int, str, bool] | None:
        limits = self.edge.limits
        if self._head_bytes + self._read_size > limits.max_header_bytes and self._head_size() > (
            limits.max_header_bytes
        ):
            return 431, f"request head over {limits.max_header_bytes} bytes", False
        if self.parser.get_http_version() not in _VERSIONS:
            # A request line without a version (HTTP/0.9): what a raw CR/LF in a path makes.
            return 400, "only HTTP/1.0 and HTTP/1.1 are served", False
        path, _, query = self.url.partition(b"?")
        if b"%" in self.url:
            reason = unsafe_target(path, query)
            if reason is not None:
                return 400, f"bad request path: {reason}", False
        if self.admission == _OVERFLOW and path not in self.edge.probe_paths:
            return 503, "too many connections; retry", True
        return None

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _in_body(self) -> bool:
        cycle = self.cycle
        scope = self.scope
        return cycle is not None and cycle.scope is scope and cycle.more_body and "method" in scope

    # --- timers -----------------------------------------------------------------------------
    def _arm(self, kind: int, seconds: float) -> None:
        self._timer_kind = kind
        self._timer = self.loop.call_later(max(seconds, 0.0), self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_kind = 0

    def _on_timer(self) -> None:
        kind = self._timer_kind
        self._timer, self._timer_kind = None, 0
        if self.transport.is_closing():
            return
        if kind == _BODY_TIMER:
            if self._in_body():
                self._check_body()
            return
        scope = self.scope
        if scope is None or ("method" in scope and self.idle()):
            self.transport.close()  # nothing sent, or nothing sent since a complete answer
        elif self.cycle is not None and not self.cycle.response_complete:
            # Behind a request still being answered (pipelined): reading waits for it.
            self._arm(_HEAD_TIMER, self.edge.limits.header_timeout_seconds)
        elif "method" not in scope:
            self._refuse_now(408, "request head not received in time")

    def _check_body(self) -> None:
        """408 when the body is past its deadline or has stalled; else wait until one could be."""
        self._cancel_timer()
        now = self.loop.time()
        idle_limit = self.edge.limits.body_idle_seconds
        if self.edge.draining:
            idle_limit = min(idle_limit, DRAIN_BODY_IDLE_SECONDS)
        if self.flow.read_paused:
            self._body_last = now  # the app is not reading: not the client's stall
        if now >= self._body_deadline:
            limit = self.edge.limits.body_timeout_seconds
            self._refuse_now(408, f"request body not received within {limit:g} s")
        elif now - self._body_last >= idle_limit:
            self._refuse_now(408, f"request body stalled for {idle_limit:g} s")
        else:
            self._arm(_BODY_TIMER, min(self._body_deadline, self._body_last + idle_limit) - now)

    # --- answers ----------------------------------------------------------------------------
    def _refuse_now(self, status: int, message: str, retry_after: bool = False) -> None:
        """Answer from here (unless an answer is already on its way) and close. An app waiting
        for the body gets http.disconnect, and whatever it sends later is dropped."""
        cycle = self.cycle
        current = cycle is not None and cycle.scope is self.scope  # the cycle is this request's
        if cycle is not None and not cycle.response_complete:
            # An app is running, for this request or (pipelined) the one before: it gets
            # http.disconnect. An answer written now could only be taken for the earlier one's.
            cycle.disconnected = True
            cycle.message_event.set()
            write = current and not cycle.response_started
        else:
            write = not current  # else this request has had its answer; its body is still coming
        if write:
            headers, body = self._answer_bytes(status, message, retry_after)
            lines = [STATUS_LINE[status], *(name + b": " + value + b"\r\n" for name, value in headers)]
            self.transport.write(b"".join([*lines, b"\r\n", body]))
        self.transport.close()

    def _answer_bytes(
        self, status: int, message: str, retry_after: bool
    ) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The edge's own answer to this request, in its path's API's shape."""
        v2 = b"/v2/" in self.url
        extra = self.edge.limits.answer_headers
        return answer_bytes(status, message, v2=v2, retry_after=retry_after, extra=extra)

    def _answer_app(self, status: int, message: str, retry_after: bool) -> ASGIApp:
        headers, body = self._answer_bytes(status, message, retry_after)

        async def answer(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        return answer

    # --- body budget ------------------------------------------------------------------------
    def _release_body(self) -> None:
        if self._body_reserved:
            self.edge.body_bytes_in_transit -= self._body_reserved
            self._body_reserved = 0

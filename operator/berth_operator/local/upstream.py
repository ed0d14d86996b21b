"""A lean HTTP/1.1 client for the router's hop to a replica: pooled keep-alive connections,
responses parsed by httptools (the parser uvicorn uses), no per-request task or timer
beyond one call_later. Measured against aiohttp's client, it roughly halves the router's
added latency.

The request head is built from bytes that are checked here, whatever the caller did: the
target must be a clean origin-form path (no space, control character or non-ASCII byte) and
no header name or value may hold CR, LF or another control character, so nothing a client
sends can end the head early and smuggle a request of its own onto a pooled connection.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httptools

Headers = list[tuple[bytes, bytes]]
Body = bytes | bytearray
Response = tuple[int, Headers, bytes]
TIMEOUT_SECONDS = 300.0
MAX_IDLE_PER_UPSTREAM = 64
# A pooled connection idle longer than this is not reused: `berth serve` closes keep-alive
# connections after 5 s idle, and one reused just then costs a failed write and a retry.
POOL_IDLE_SECONDS = 4.0

_TARGET_OUTSIDE_VISIBLE_ASCII = re.compile(rb"[^\x21-\x7e]")
_NOT_A_TOKEN = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
_CONTROL_IN_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class UpstreamError(ConnectionError):
    """The replica closed the connection or did not answer in time."""


class UnsafeRequest(ValueError):
    """A target or header that cannot be written into a request head as it is."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._headers: Headers = []
        self._body: list[bytes] = []
        self._complete = False
        self._keep_alive = False
        self._head_request = False
        self.idle_since = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"bad response from replica: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(UpstreamError("replica closed the connection"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        # An answer to HEAD has a Content-Length but no body, which a response parser cannot
        # know: the answer is complete here, and the connection is not reused.
        if self._head_request and self._parser.get_status_code() >= 200:
            self._finish(keep_alive=False)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:  # an interim answer (100 Continue): wait on
            self._headers, self._body = [], []
            return
        # Read now: once the message is complete httptools says False for every connection.
        self._finish(keep_alive=self._parser.should_keep_alive())

    def _finish(self, keep_alive: bool) -> None:
        if self._complete:
            return
        self._complete = True
        self._keep_alive = keep_alive
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
            waiter.set_result((self._parser.get_status_code(), self._headers, body))

    # use
    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def reusable(self) -> bool:
        return not self.closed and self._complete and self._keep_alive

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def request(self, head: bytes, body: Body, head_request: bool) -> Response:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._headers, self._body, self._complete = [], [], False
        self._head_request = head_request
        assert self.transport is not None
        # Head and body written apart: a body of tens of MiB is not copied into one payload.
        self.transport.write(head)
        if body:
            self.transport.write(body)
        timer = loop.call_later(TIMEOUT_SECONDS, self._fail, UpstreamError("replica did not answer in time"))
        try:
            return await self._waiter
        finally:
            timer.cancel()
            self._waiter = None


def encode_head(method: str, target: bytes, host: bytes, headers: Headers, length: int) -> bytes:
    """The request head, or UnsafeRequest when the target or a header would change its framing."""
    if not target.startswith(b"/") or _TARGET_OUTSIDE_VISIBLE_ASCII.search(target):
        raise UnsafeRequest(f"refusing to forward request target {target[:200]!r}")
    lines = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    not_a_token, control_in_value = _NOT_A_TOKEN.search, _CONTROL_IN_VALUE.search
    for name, value in headers:
        if not name or not_a_token(name) or control_in_value(value):
            raise UnsafeRequest(f"refusing to forward header {name[:100]!r}")
        lines += [name, b": ", value, b"\r\n"]
    lines += [b"content-length: ", str(length).encode(), b"\r\n\r\n"]
    return b"".join(lines)


class ConnectionPool:
    """Idle keep-alive connections to one replica."""

    __slots__ = ("host", "hostport", "idle", "port")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.hostport = f"{host}:{port}".encode()
        self.idle: list[_Connection] = []

    async def send(self, method: str, target: bytes, headers: Headers, body: Body) -> Response:
        """One request; UpstreamError when the connection fails before a full answer,
        UnsafeRequest (before anything is sent) when it cannot be encoded safely."""
        head = encode_head(method, target, self.hostport, headers, len(body))
        head_request = method == "HEAD"
        connection, reused = await self._acquire()
        try:
            response = await connection.request(head, body, head_request)
        except UpstreamError:
            connection.close()
            if not reused:
                raise
            # A pooled connection the replica had closed: once more on a fresh one.
            connection = await self._connect()
            try:
                response = await connection.request(head, body, head_request)
            except UpstreamError:
                connection.close()
                raise
        except BaseException:
            connection.close()  # cancelled mid-request: the connection state is unknown
            raise
        if connection.reusable() and len(self.idle) < MAX_IDLE_PER_UPSTREAM:
            connection.idle_since = asyncio.get_running_loop().time()
            self.idle.append(connection)
        else:
            connection.close()
        return response

    async def _acquire(self) -> tuple[_Connection, bool]:
        now = asyncio.get_running_loop().time()
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed and now - connection.idle_since < POOL_IDLE_SECONDS:
                return connection, True
            connection.close()
        return await self._connect(), False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_connection(_Connection, self.host, self.port)
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from exc
        return protocol

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()

"""A lean HTTP/1.1 client for the router's hop to a replica: pooled keep-alive connections,
responses parsed by httptools (the parser uvicorn uses), no per-request task or timer
beyond one call_later. Measured against aiohttp's client, it roughly halves the router's
added latency.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools

Headers = list[tuple[bytes, bytes]]
Response = tuple[int, Headers, bytes]
TIMEOUT_SECONDS = 300.0
MAX_IDLE_PER_UPSTREAM = 64


class UpstreamError(ConnectionError):
    """The replica closed the connection or did not answer in time."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._headers: Headers = []
        self._body: list[bytes] = []
        self._complete = False

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

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:  # an interim answer (100 Continue): wait on
            self._headers, self._body = [], []
            return
        self._complete = True
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
        return not self.closed and self._complete and self._parser.should_keep_alive()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def request(self, payload: bytes) -> Response:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._headers, self._body, self._complete = [], [], False
        assert self.transport is not None
        self.transport.write(payload)
        timer = loop.call_later(TIMEOUT_SECONDS, self._fail, UpstreamError("replica did not answer in time"))
        try:
            return await self._waiter
        finally:
            timer.cancel()
            self._waiter = None


def encode_request(method: str, target: str, host: bytes, headers: Headers, body: bytes) -> bytes:
    lines = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1"), b"host: ", host, b"\r\n"]
    for name, value in headers:
        lines += [name, b": ", value, b"\r\n"]
    lines += [b"content-length: ", str(len(body)).encode(), b"\r\n\r\n", body]
    return b"".join(lines)


class ConnectionPool:
    """Idle keep-alive connections to one replica."""

    __slots__ = ("host", "hostport", "idle", "port")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.hostport = f"{host}:{port}".encode()
        self.idle: list[_Connection] = []

    async def send(self, method: str, target: str, headers: Headers, body: bytes) -> Response:
        """One request; UpstreamError when the connection fails before a full answer."""
        connection, reused = await self._acquire()
        payload = encode_request(method, target, self.hostport, headers, body)
        try:
            response = await connection.request(payload)
        except UpstreamError:
            connection.close()
            if not reused:
                raise
            # A pooled connection the replica had closed: once more on a fresh one.
            connection = await self._connect()
            try:
                response = await connection.request(payload)
            except UpstreamError:
                connection.close()
                raise
        except BaseException:
            connection.close()  # cancelled mid-request: the connection state is unknown
            raise
        if connection.reusable() and len(self.idle) < MAX_IDLE_PER_UPSTREAM:
            self.idle.append(connection)
        else:
            connection.close()
        return response

    async def _acquire(self) -> tuple[_Connection, bool]:
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed:
                return connection, True
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

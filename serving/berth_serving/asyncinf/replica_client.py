"""A small HTTP/1.1 client for one replica on the pod's loopback, with kept-alive connections.

The worker posts every queued message to its replica's /invocations. A general client
(httpx) spent more CPU per call than the model does on a small request, and closed
connections above its keep-alive pool size, so this one does only what that call needs:
POST with a known Content-Length (a body in memory, or chunks streamed from storage), an
answer framed by Content-Length, chunked encoding or the connection's end, and a pool of at
most `max_connections` idle connections. A connection idle longer than `reuse_within_seconds`
is not reused (the server may be closing it); a request in memory whose reused connection
turns out closed before any answer byte is sent once more on a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

HEAD_LIMIT = 64 * 1024
DEFAULT_MAX_ANSWER_BYTES = 1024 * 1024 * 1024


class ReplicaUnreachable(OSError):
    """No connection could be made: the replica is not listening (yet, or any more)."""


class ReplicaProtocolError(OSError):
    """The connection broke or the answer was not HTTP/1.1 as expected; the message says how."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0
    reused: bool = False

    def usable(self, now: float, within: float) -> bool:
        return now - self.idle_since <= within and not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class ReplicaClient:
    def __init__(
        self,
        url: str,
        max_connections: int,
        reuse_within_seconds: float = 2.0,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"invoke URL must be http://HOST:PORT/PATH, not {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._authority = parts.netloc
        self._idle: deque[_Connection] = deque()
        self._max_idle = max_connections
        self._reuse_within = reuse_within_seconds
        self._max_answer = max_answer_bytes

    async def post(
        self,
        headers: dict[str, str],
        body: bytes | AsyncIterator[bytes],
        length: int,
        path: str | None = None,
    ) -> Answer:
        """POST to the client's path, or `path` (a multi-model replica forwards several)."""
        head = self._head(headers, length, path or self.path)
        connection = await self._acquire()
        try:
            try:
                answer = await self._exchange(connection, head, body)
            except _ClosedBeforeAnswer:
                connection.close()
                if not (connection.reused and isinstance(body, bytes)):
                    raise ReplicaProtocolError("the replica closed the connection before answering") from None
                connection = await self._connect()
                answer = await self._exchange(connection, head, body)
        except BaseException:
            connection.close()  # cancelled (timeout) or broken mid-way: its state is unknown
            raise
        if answer.headers.get("connection", "").lower() == "close":
            connection.close()
        else:
            self._release(connection)
        return answer

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    def _head(self, headers: dict[str, str], length: int, path: str) -> bytes:
        if any(c in path for c in "\r\n "):
            raise ValueError("the request path holds a space or a line break")
        lines = [f"POST {path} HTTP/1.1", f"Host: {self._authority}", f"Content-Length: {length}"]
        for name, value in headers.items():
            if name.lower() in ("host", "content-length", "transfer-encoding", "connection"):
                continue
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _acquire(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # the most recently used is the likeliest to be open
            if connection.usable(now, self._reuse_within):
                connection.reused = True
                return connection
            connection.close()
        return await self._connect()

    async def _connect(self) -> _Connection:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port, limit=HEAD_LIMIT)
        except OSError as error:
            raise ReplicaUnreachable(
                f"cannot connect to {self.host}:{self.port}: {error.strerror or error}"
            ) from None
        return _Connection(reader, writer)

    def _release(self, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        self._idle.append(connection)
        while len(self._idle) > self._max_idle:
            self._idle.popleft().close()

    async def _exchange(
        self, connection: _Connection, head: bytes, body: bytes | AsyncIterator[bytes]
    ) -> Answer:
        writer, reader = connection.writer, connection.reader
        if isinstance(body, bytes):
            try:
                writer.write(head + body)
                await writer.drain()
            except ConnectionError:
                pass  # what the replica said before it closed is read below
            return await self._read_answer(reader)
        # A streamed body is sent while the answer is awaited: a replica refuses a body over its
        # limit from the head alone and closes, and that answer must be heard, not lost to the
        # reset that the rest of the body would cause.
        answer = asyncio.ensure_future(self._read_answer(reader))
        sent_whole = False
        try:
            writer.write(head)
            async for chunk in body:
                if answer.done():
                    break
                writer.write(chunk)
                await writer.drain()
            else:
                sent_whole = True
        except ConnectionError:
            pass
        except BaseException:
            answer.cancel()
            raise
        result = await answer
        if not sent_whole:  # answered before the body was through: the connection is spent
            result.headers["connection"] = "close"
        return result

    async def _read_answer(self, reader: asyncio.StreamReader) -> Answer:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as error:
            if not error.partial:
                raise _ClosedBeforeAnswer from None
            raise ReplicaProtocolError("the replica closed the connection inside its answer's head") from None
        except asyncio.LimitOverrunError:
            raise ReplicaProtocolError(f"the replica's answer head is over {HEAD_LIMIT} bytes") from None
        except ConnectionError:
            raise _ClosedBeforeAnswer from None
        status_line, *lines = raw[:-4].decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ReplicaProtocolError(f"not an HTTP/1.1 answer: {status_line[:80]!r}")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if parts[0] == "HTTP/1.0":
            headers.setdefault("connection", "close")
        try:
            body = await self._read_body(reader, headers)
        except (asyncio.IncompleteReadError, ConnectionError):
            raise ReplicaProtocolError("the replica closed the connection inside its answer") from None
        return Answer(int(parts[1]), headers, body)

    async def _read_body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return await self._read_chunked(reader)
        if "content-length" in headers:
            length = headers["content-length"]
            if not length.isdigit():
                raise ReplicaProtocolError(f"bad Content-Length {length[:40]!r} in the replica's answer")
            self._check_size(int(length))
            return await reader.readexactly(int(length))
        headers["connection"] = "close"  # framed by the connection's end: not reusable
        body = bytearray()
        while chunk := await reader.read(1024 * 1024):
            body += chunk
            self._check_size(len(body))
        return bytes(body)

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        body = bytearray()
        while True:
            size_line = (await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise ReplicaProtocolError(
                    f"bad chunk size {size_line[:20]!r} in the replica's answer"
                ) from None
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return bytes(body)
            self._check_size(len(body) + size)
            body += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise ReplicaProtocolError("a chunk of the replica's answer does not end with CRLF")

    def _check_size(self, size: int) -> None:
        if size > self._max_answer:
            raise ReplicaProtocolError(f"the replica's answer is over {self._max_answer} bytes")


class _ClosedBeforeAnswer(Exception):
    """The connection ended before the first byte of an answer (a stale kept-alive one)."""


@contextlib.asynccontextmanager
async def replica_client(url: str, max_connections: int) -> AsyncIterator[ReplicaClient]:
    client = ReplicaClient(url, max_connections)
    try:
        yield client
    finally:
        await client.close()

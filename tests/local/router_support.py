"""The router of `berth up` in a thread, in front of a replica that records every byte it is
sent: the harness of the router's adversarial tests."""

from __future__ import annotations

import asyncio
import http.client
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httptools
import uvloop
from berth_operator.local.router import QuietServer, Router, Upstream

from .support import free_port

PREFIX = "/endpoints/default/ep"
ROUTE = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "HTTPRoute",
    "metadata": {"name": "ep", "namespace": "default"},
    "spec": {
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": PREFIX + "/"}}],
                "filters": [
                    {
                        "type": "URLRewrite",
                        "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}},
                    }
                ],
                "backendRefs": [{"name": "ep-v", "port": 8080, "weight": 1}],
            }
        ]
    },
}


@dataclass
class Recorded:
    connection: int
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass
class RecordingReplica:
    """A replica that keeps every request (and every byte) it is sent and answers 200 "ok"."""

    port: int = field(default_factory=free_port)
    requests: list[Recorded] = field(default_factory=list)
    received: list[bytearray] = field(default_factory=list)  # raw bytes, per connection

    @property
    def connections(self) -> int:
        return len(self.received)

    def start(self) -> RecordingReplica:
        ready = threading.Event()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            server = await self._loop.create_server(lambda: _Recorder(self), "127.0.0.1", self.port)
            ready.set()
            await self._stop.wait()
            server.close()

        self._thread = threading.Thread(target=lambda: uvloop.run(main()), daemon=True)
        self._thread.start()
        assert ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class _Recorder(asyncio.Protocol):
    def __init__(self, replica: RecordingReplica) -> None:
        self.replica = replica
        self.index = len(replica.received)
        replica.received.append(bytearray())
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.replica.received[self.index] += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", [], b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.replica.requests.append(
            Recorded(self.index, self.parser.get_method(), self.url, self.headers, self.body)
        )
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok")


class RouterServer:
    """The router of `berth up` on a free port, in a thread, in front of one replica; `server`
    is a QuietServer, made by `make_server` when given (to set the edge limits)."""

    def __init__(self, replica_port: int, make_server: Any = None) -> None:
        self.port = free_port()
        self.router = Router()
        self.router.set_routes([ROUTE])
        self.router.set_pools({("default", "ep-v"): [Upstream("127.0.0.1", replica_port, "r0")]})
        make = make_server or QuietServer
        self.server = make(self.router, "127.0.0.1", self.port)
        self._thread = threading.Thread(target=lambda: uvloop.run(self.server.serve()), daemon=True)

    def start(self) -> RouterServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.server.started
        return self

    def stop(self) -> None:
        self.server.stop()
        self._thread.join(15)
        assert not self._thread.is_alive()

    def get(self, path: str, timeout: float = 5.0) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

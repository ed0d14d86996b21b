"""Helpers for the serving tests: free ports, a real `berth serve` (uvicorn) in a thread or
a subprocess, and small HTTP helpers."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import uvloop
from berth_serving.config import ServeConfig
from berth_serving.server import Service

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def request(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Response:
    """One HTTP request on a fresh connection (no client library between us and the server)."""
    without_scheme = url.split("://", 1)[1]
    host_port, _, path = without_scheme.partition("/")
    host, _, port = host_port.partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request(method, "/" + path, body=body, headers=headers or {})
        answer = connection.getresponse()
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
    finally:
        connection.close()


def wait_until(condition: object, timeout: float = 20.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException):
            if callable(condition) and condition():
                return
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


class ThreadedServer:
    """A real Service (uvicorn + httptools on uvloop) on 127.0.0.1, in a background thread."""

    def __init__(self, config: ServeConfig, sha256: str | None = None) -> None:
        self.port = free_port()
        self.config = replace(config, host="127.0.0.1", port=self.port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.service = Service(self.config, sha256)
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.exit_code = uvloop.run(self.service.run())

    def start(self, wait_ready: bool = True) -> ThreadedServer:
        self._thread.start()
        wait_until(lambda: self.service.server.started or self.exit_code is not None)
        if wait_ready:
            wait_until(lambda: request(self.url + "/ping").status == 200)
        return self

    def stop(self) -> None:
        self.service.stop()
        self._thread.join(30)
        assert not self._thread.is_alive(), "server thread did not stop"


@contextlib.contextmanager
def serving(model_uri: str | Path, wait_ready: bool = True, **options: object) -> Iterator[ThreadedServer]:
    server = ThreadedServer(ServeConfig(model_uri=str(model_uri), **options))  # type: ignore[arg-type]
    server.start(wait_ready)
    try:
        yield server
    finally:
        server.stop()


def serve_command(model_uri: str | Path, port: int, *args: str) -> list[str]:
    """`python -m berth_serving serve MODEL` on 127.0.0.1:port (tests and benchmarks)."""
    return [
        sys.executable,
        "-m",
        "berth_serving",
        "serve",
        str(model_uri),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *args,
    ]


def serve_subprocess(
    model_uri: str | Path, port: int, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`python -m berth_serving serve` as a child process (signals need a real process)."""
    return subprocess.Popen(
        serve_command(model_uri, port, *args),
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )


async def _post_all(
    port: int, path: str, bodies: list[bytes], concurrency: int, headers: dict[str, str]
) -> list[tuple[int, bytes]]:
    import asyncio

    answers: list[tuple[int, bytes]] = [(0, b"")] * len(bodies)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(bodies)):
        queue.put_nowait(index)
    extra = "".join(f"{key}: {value}\r\n" for key, value in headers.items())

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                index = queue.get_nowait()
                body = bodies[index]
                writer.write(
                    f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
                    + body
                )
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                answers[index] = (status, await reader.readexactly(length))
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(bodies)))))
    return answers


def post_concurrently(
    url: str,
    path: str,
    bodies: list[bytes],
    concurrency: int,
    timeout: float = 60.0,
    headers: dict[str, str] | None = None,
) -> list[tuple[int, bytes]]:
    """POST every body, `concurrency` connections at once (keep-alive, one asyncio client);
    returns (status, body) per request in order. Gives up after `timeout` seconds."""
    import asyncio

    port = int(url.rsplit(":", 1)[1])
    wanted = {"Content-Type": "application/json", **(headers or {})}
    return asyncio.run(asyncio.wait_for(_post_all(port, path, bodies, concurrency, wanted), timeout))

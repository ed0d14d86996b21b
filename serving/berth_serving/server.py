"""Run the serving app under uvicorn (uvloop + httptools) with Berth's own signal handling
and HTTP edge (`httpedge.py`: time, size and connection limits uvicorn lacks).

Plain `uvicorn.run` re-raises SIGTERM after shutdown (exit 143) and stops without waiting
for the model's queue. Here SIGTERM/SIGINT start a drain: `/ping` answers 503, new
inference requests get 503, idle connections close, stalled uploads are dropped, requests in
flight finish, then uvicorn shuts down and the process exits 0, all within the request
timeout plus DRAIN_GRACE_SECONDS. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import sys
import threading
import time
from collections.abc import Generator

import uvicorn

from berth_serving.app import ServingApp
from berth_serving.auth import AuthConfigError, AuthGuard, build_guard, describe_off
from berth_serving.config import ServeConfig
from berth_serving.httpedge import OVERFLOW_RESERVE, Edge, EdgeLimits
from berth_serving.termination import WIRING_REFUSED, write_termination_message

log = logging.getLogger("berth.serving")
# How long past the request timeout a drain waits for stragglers before giving up on them;
# also how long a body still arriving at the start of a drain may take to finish.
DRAIN_GRACE_SECONDS = 5.0
# Answered even when every connection is busy: the kubelet's probes.
PROBE_PATHS = frozenset({"/ping", "/v2/health/live", "/v2/health/ready"})
# Request bodies in transit at once, in payloads of the largest size: the memory they may hold
# (60 clients each sending 6 MiB less one byte held 461 MB of RSS; admitting 16, 149 MB).
BODIES_IN_TRANSIT = 16


def serve_limits(config: ServeConfig) -> EdgeLimits:
    """The HTTP edge of `berth serve` for this configuration."""
    return EdgeLimits(
        body_timeout_seconds=config.body_timeout_seconds,
        keep_alive_seconds=config.keep_alive_seconds,
        max_connections=config.max_connections,
        max_body_bytes_in_transit=BODIES_IN_TRANSIT * config.max_payload_bytes,
        probe_paths=PROBE_PATHS,
        answer_headers=((b"x-berth-variant", (config.variant or "default").encode()),),
    )


def answer_headers(config: ServeConfig) -> tuple[tuple[bytes, bytes], ...]:
    """What every answer the app does not make itself carries (invoke auth's refusals)."""
    headers: tuple[tuple[bytes, bytes], ...] = ((b"x-berth-variant", (config.variant or "default").encode()),)
    if config.endpoint_config:
        headers += ((b"x-berth-endpoint-config", config.endpoint_config.encode()),)
    return headers


class BerthServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: ServingApp, edge: Edge) -> None:
        super().__init__(config)
        self.serving = app
        self.edge = edge
        self._drain_task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.drain, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def drain(self, sig: int | None = None) -> None:
        """Begin a graceful stop (call on the event loop thread)."""
        if self._drain_task is not None:
            log.warning("second stop signal: exiting without waiting")
            self.should_exit = True
            self.force_exit = True
            return
        self.serving.draining = True
        name = signal.Signals(sig).name if sig else "request"
        log.info("draining", extra={"fields": {"signal": name, "inflight": self.serving.inflight}})
        self.edge.drain(DRAIN_GRACE_SECONDS)
        self._drain_task = asyncio.get_running_loop().create_task(self._wait_for_inflight())

    async def _wait_for_inflight(self) -> None:
        deadline = time.monotonic() + self.serving.config.timeout_seconds + DRAIN_GRACE_SECONDS
        while self.serving.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        # uvicorn's own graceful wait follows this one: it gets only what is left, so the whole
        # stop stays within the deadline (it waited its full timeout again after ours: 20.5 s
        # instead of 10 with stalled uploads and a 5 s request timeout).
        self.config.timeout_graceful_shutdown = max(0, int(deadline - time.monotonic()))
        self.should_exit = True


class Service:
    """One `berth serve` process: the app behind its invoke auth, its uvicorn server and the
    model loading. AuthConfigError when the auth flags cannot work."""

    def __init__(
        self, config: ServeConfig, sha256: str | None = None, limits: EdgeLimits | None = None
    ) -> None:
        self.app = ServingApp(config, sha256)
        # Before the app: a refused request is never read, queued or counted as an invocation.
        self.guard: AuthGuard | None = build_guard(self.app, config, answer_headers(config))
        if self.guard is not None:
            self.guard.export_to(self.app.metrics.registry)
        self.edge = Edge(limits or serve_limits(config))
        self.server = BerthServer(
            uvicorn.Config(
                self.guard or self.app,
                interface="asgi3",  # the guard is a plain callable returning the app's coroutine
                host=config.host,
                port=config.port,
                loop="uvloop",
                proxy_headers=False,
                lifespan="off",
                access_log=config.access_log,
                log_config=None,
                server_header=False,
                timeout_graceful_shutdown=int(config.timeout_seconds + DRAIN_GRACE_SECONDS),
                **self.edge.uvicorn_options(),
            ),
            self.app,
            self.edge,
        )
        tasks = self.server.server_state.tasks
        self.app.requests_in_server = tasks.__len__
        self.loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        if self.guard is None:
            log.info(describe_off())
        else:
            self.guard.start()
            log.info("invoke auth on", extra={"fields": {"auth": self.guard.authenticator.describe()}})
        loading = asyncio.create_task(self._load())
        try:
            await self.server.serve()
        finally:
            loading.cancel()
            await self.app.aclose()
            if self.guard is not None:
                await self.guard.aclose()
        return self.app.exit_code

    async def _load(self) -> None:
        try:
            await self.app.load()
            if self.guard is not None:  # loading may have made the app a new metrics registry
                self.guard.export_to(self.app.metrics.registry)
            if self.app.config.warmup_requests:
                failure = await self.app.warm_up()
                if failure is not None:
                    log.error("warm-up failed", extra={"fields": {"error": failure}})
                    write_termination_message(failure)
                    self.app.exit_code = 1
                    self.server.should_exit = True
                    return
                log.info(
                    "warmed up",
                    extra={
                        "fields": {
                            "requests": len(self.app.config.warmup_requests),
                            "seconds": round(self.app.metrics.warmup_seconds or 0.0, 3),
                        }
                    },
                )
        except asyncio.CancelledError:
            raise
        except Exception as error:
            message = _load_error_message(error)
            log.error("model load failed", extra={"fields": {"error": message}})
            write_termination_message(message)
            self.app.exit_code = 1
            self.server.should_exit = True

    def stop(self) -> None:
        """Thread-safe request to drain and stop (tests, embedding)."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.server.drain)


def _load_error_message(error: Exception) -> str:
    from berth_serving.fetch import FetchError
    from berth_serving.pipeline.wiring import WiringError

    if isinstance(error, FetchError):
        return str(error)
    if isinstance(error, WiringError):
        return f"{WIRING_REFUSED}: {error}"
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"cannot load model: {first_line}"


# The ORT worker needs the GIL back after every call; with Python's default 5 ms switch
# interval a busy event loop can keep it waiting that long each time (measured here:
# 6,500 vs 9,400 single-row MLP requests/s at concurrency 64).
GIL_SWITCH_INTERVAL_SECONDS = 0.0005


def run(config: ServeConfig, sha256: str | None = None) -> int:
    """Serve until stopped; the process exit code."""
    import uvloop

    sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
    _allow_open_files(config.max_connections + OVERFLOW_RESERVE + 256)
    try:
        service = Service(config, sha256)
    except AuthConfigError as error:
        log.error("invoke auth cannot start", extra={"fields": {"error": str(error)}})
        write_termination_message(f"invoke auth: {error}")
        return 2
    return uvloop.run(service.run())


def _allow_open_files(needed: int) -> None:
    """Raise the soft open-file limit toward the hard one: at a soft limit of 1024 (common
    outside containers) accept() fails before max_connections is reached, /ping included."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))

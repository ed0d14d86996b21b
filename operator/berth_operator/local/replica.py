"""One local replica: a `berth serve` process, kept alive with backoff, probed on /ping.

A replica owns its process and its log; the fleet decides when it starts and stops.
Stopping drains: the replica leaves the route first (ready turns False and the owner is
told), waits for its in-flight requests, then gets SIGTERM (the server drains as well).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import aiohttp
import orjson

from . import procs
from .router import Upstream
from .sidecar import BERTH_ARGV, Sidecar, SidecarSpec

State = Literal["Starting", "Running", "CrashLoopBackOff", "Terminating", "Stopped"]

INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 10.0
STABLE_AFTER = 30.0  # seconds up before the backoff resets
PROBE_STARTING = 0.05
PROBE_RUNNING = 0.5
# Like the pods' livenessProbe (3 failures, 10 s apart); the variable exists for tests.
LIVENESS_SECONDS = float(os.environ.get("BERTH_UP_LIVENESS_SECONDS", "30"))


@dataclass(frozen=True)
class ReplicaSpec:
    name: str  # like a pod name: <deployment>-<index>
    model_path: Path | None  # None: a process that serves no model (the async front door)
    env: Mapping[str, str]
    log_path: Path
    grace_seconds: float = 30.0
    template: str = ""  # hash of the fleet template this replica was started from
    args: tuple[str, ...] = ()  # a `berth` command to run instead of serving model_path
    sidecars: tuple[SidecarSpec, ...] = ()  # the pod's other containers (async-worker)
    # A MultiModel replica's prefix, served as it is (env BERTH_MULTI_MODEL): the replica fetches
    # each model under it on first use, so nothing is fetched before it starts.
    prefix: str | None = None
    # An inference pipeline: env BERTH_PIPELINE names its stages, and nothing is served by path.
    pipeline: bool = False

    def argv(self, port: int) -> list[str]:
        served = str(self.model_path) if self.model_path is not None else self.prefix
        if self.args or (served is None and not self.pipeline):
            return [*BERTH_ARGV, *self.args, "--host", "127.0.0.1", "--port", str(port)]
        return [
            sys.executable,
            "-m",
            "berth_serving",
            "serve",
            *([served] if served is not None else []),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]


ERROR_LEVELS = frozenset({"error", "critical", "fatal"})


def _record(line: str) -> dict[str, object] | None:
    if not line.startswith("{"):
        return None
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def crash_reason(lines: Iterable[str]) -> str:
    """The line that says why a replica died: the last error record of the runtime's JSON
    logs (message and error), else the last plain line (a traceback's last line), else ""."""
    plain = ""
    for raw in reversed([line.strip() for line in lines if line.strip()]):
        record = _record(raw)
        if record is None:
            plain = plain or raw
            continue
        if str(record.get("level", "")).lower() in ERROR_LEVELS:
            message = str(record.get("message") or record.get("msg") or "")
            error = record.get("error")
            return f"{message}: {error}" if error and message else str(error or message or raw)
    return plain


class Replica:
    def __init__(
        self,
        spec: ReplicaSpec,
        on_change: Callable[[], None],
        echo: Callable[[str, str], None] | None = None,
    ) -> None:
        self.spec = spec
        self.state: State = "Starting"
        self.ready = False
        self.restarts = 0
        self.last_exit_code: int | None = None
        self.last_error = ""
        self.started_at = time.time()
        self.ready_at: float | None = None  # time.monotonic() it last turned ready
        self.upstream: Upstream | None = None
        self.process: asyncio.subprocess.Process | None = None
        self._on_change = on_change
        self._echo = echo
        self._stopping = False
        self._stderr_tail: deque[str] = deque(maxlen=50)
        self._task: asyncio.Task[None] | None = None
        self.sidecars: list[Sidecar] = []
        self._sidecar_port = 0  # the replica port the sidecars were started for

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.returncode is None else None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"replica {self.name}")

    async def stop(self) -> None:
        """Off the route, wait for in-flight requests, SIGTERM, wait for the exit."""
        if self._stopping:
            if self._task:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(self._task)
            return
        self._stopping = True
        self.state = "Terminating"
        self._set_ready(False)
        deadline = time.monotonic() + self.spec.grace_seconds
        while self.upstream and self.upstream.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        # The sidecars go first: a worker finishes the messages it holds against this replica.
        await asyncio.gather(*(sidecar.stop() for sidecar in self.sidecars))
        if self.process is not None:
            await procs.terminate(self.process, max(0.5, deadline - time.monotonic()))
        if self.upstream is not None:
            self.upstream.pool.close()
        if self._task:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=2)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        self.state = "Stopped"
        self._on_change()

    # ------------------------------------------------------------------ internals

    def _set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready = ready
            if ready:
                self.ready_at = time.monotonic()
            self._on_change()

    async def _run(self) -> None:
        backoff = INITIAL_BACKOFF
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spec.log_path, "a", buffering=1) as log:
            port = 0
            while not self._stopping:
                # A restart keeps the port, as a pod's container does: the sidecars call it there.
                if not port or not procs.port_is_free(port):
                    port = procs.free_port()
                self.upstream = Upstream("127.0.0.1", port, name=self.name)
                env = dict(self.spec.env)
                self.state = "Starting"
                self.started_at = time.time()
                log.write(f"--- berth up: starting {self.name} on port {port}\n")
                try:
                    self.process = await procs.spawn(self.spec.argv(port), env)
                except OSError as exc:
                    self.last_error = f"cannot start: {exc}"
                    code = -1
                else:
                    self._on_change()
                    if self._sidecar_port != port:  # after the replica; they wait for its /ping
                        await self._restart_sidecars(port)
                    code = await self._supervise(self.process, log)
                self._set_ready(False)
                self.upstream.pool.close()
                if self._stopping:
                    break
                self.restarts += 1
                self.last_exit_code = code
                self.last_error = crash_reason(self._stderr_tail) or f"exited with code {code}"
                self.state = "CrashLoopBackOff"
                log.write(f"--- berth up: {self.name} exited with code {code}; restart in {backoff:.1f}s\n")
                self._on_change()
                if time.time() - self.started_at > STABLE_AFTER:
                    backoff = INITIAL_BACKOFF
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _restart_sidecars(self, port: int) -> None:
        self._sidecar_port = port
        await asyncio.gather(*(sidecar.stop() for sidecar in self.sidecars))
        self.sidecars = [
            Sidecar(
                spec,
                self.name,
                {},  # spec.env is the whole environment of the sidecar
                self.spec.log_path.with_name(f"{self.name}.{spec.container}.log"),
                self.spec.grace_seconds,
                self._echo,
            )
            for spec in self.spec.sidecars
        ]
        if self._stopping:
            return
        for sidecar in self.sidecars:
            sidecar.start(port)

    async def _supervise(self, process: asyncio.subprocess.Process, log: IO[str]) -> int:
        assert process.stdout is not None and process.stderr is not None
        self._stderr_tail.clear()
        pumps = [
            asyncio.ensure_future(self._pump(process.stdout, log, None)),
            asyncio.ensure_future(self._pump(process.stderr, log, self._stderr_tail)),
        ]
        probe = asyncio.ensure_future(self._probe())
        try:
            if self._stopping:  # stop() came while the process was being spawned
                await procs.terminate(process, self.spec.grace_seconds)
            code = await process.wait()
        finally:
            if process.returncode is None:  # cancelled: never leave the process behind
                procs.signal_group(process.pid, 9)
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
        procs.signal_group(process.pid, 9)  # leftovers of the group, if any
        procs.forget(process.pid)
        await asyncio.gather(*pumps, return_exceptions=True)
        return code

    async def _pump(self, stream: asyncio.StreamReader, log: IO[str], tail: deque[str] | None) -> None:
        while True:
            raw = await stream.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace")
            log.write(line)
            if tail is not None:
                tail.append(line)
            if self._echo is not None:
                self._echo(self.name, line.rstrip("\n"))

    async def _probe(self) -> None:
        """Readiness from /ping, as the pod's readinessProbe; and a liveness check: a replica
        that was up and then answers nothing for LIVENESS_SECONDS is killed and restarted."""
        assert self.upstream is not None and self.process is not None
        process = self.process
        url = self.upstream.base_url + "/ping"
        timeout = aiohttp.ClientTimeout(total=2)
        last_answer: float | None = None
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                ok = answered = False
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    async with session.get(url) as response:
                        answered, ok = True, response.status == 200
                now = time.monotonic()
                if answered:
                    last_answer = now
                if not self._stopping:
                    if ok:
                        self.state = "Running"
                    self._set_ready(ok)
                    if last_answer is not None and now - last_answer > LIVENESS_SECONDS:
                        self._stderr_tail.append(
                            f"berth up: no answer on /ping for {LIVENESS_SECONDS:.0f}s, killed"
                        )
                        procs.signal_group(process.pid, 9)
                        return
                await asyncio.sleep(PROBE_RUNNING if self.ready else PROBE_STARTING)

"""A second container of a local replica (the `async-worker`): a process beside it.

Its command line comes from the pod template with what a pod would fill in filled in here:
$(POD_NAME) is the replica's name, --invoke-url points at the replica's loopback port, and
its metrics listen on a free loopback port (several replicas share this machine's ports).
It is restarted with backoff when it exits, like a container, and stopped before its replica
(SIGTERM: it takes no more messages and finishes those it holds within the grace period).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import procs

# How `berth` runs in a container (its image's entrypoint), from this interpreter.
BERTH_ARGV = (sys.executable, "-c", "from berth_operator.cli import main; main(prog_name='berth')")
POD_NAME = "$(POD_NAME)"
INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 10.0
STABLE_AFTER = 30.0


@dataclass(frozen=True)
class SidecarSpec:
    container: str  # the container's name in the pod template
    args: tuple[str, ...]  # after `berth`, as the template gives them
    env: Mapping[str, str] = field(default_factory=dict)
    pod_name_env: tuple[str, ...] = ()  # variables the pod sets to its own name (fieldRef)

    def argv(self, pod_name: str, replica_port: int, metrics_port: int) -> list[str]:
        args = [arg.replace(POD_NAME, pod_name) for arg in self.args]
        if "--invoke-url" in args[:-1]:
            args[args.index("--invoke-url") + 1] = f"http://127.0.0.1:{replica_port}/invocations"
        return [*BERTH_ARGV, *args, "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port)]

    def environment(self, base: Mapping[str, str], pod_name: str) -> dict[str, str]:
        env = {**base, **self.env}
        for name in self.pod_name_env:
            env[name] = pod_name
        return env


class Sidecar:
    def __init__(
        self,
        spec: SidecarSpec,
        pod_name: str,
        base_env: Mapping[str, str],
        log_path: Path,
        grace_seconds: float,
        echo: Callable[[str, str], None] | None = None,
    ) -> None:
        self.spec = spec
        self.pod_name = pod_name
        self.name = f"{pod_name}/{spec.container}"
        self.restarts = 0
        self.last_error = ""
        self.metrics_port = 0
        self._base_env = base_env
        self._log_path = log_path
        self._grace = grace_seconds
        self._echo = echo
        self._stopping = False
        self._process: asyncio.subprocess.Process | None = None
        self._tail: deque[str] = deque(maxlen=20)
        self._task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process and self._process.returncode is None else None

    def start(self, replica_port: int) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(replica_port), name=self.name)

    async def stop(self) -> None:
        self._stopping = True
        if self._process is not None:
            await procs.terminate(self._process, self._grace)
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, replica_port: int) -> None:
        backoff = INITIAL_BACKOFF
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._log_path, "a", buffering=1) as log:
            while not self._stopping:
                self.metrics_port = procs.free_port()
                argv = self.spec.argv(self.pod_name, replica_port, self.metrics_port)
                started = time.monotonic()
                log.write(f"--- berth up: starting {self.name}\n")
                try:
                    self._process = await procs.spawn(
                        argv, self.spec.environment(self._base_env, self.pod_name)
                    )
                except OSError as exc:
                    self.last_error = f"cannot start: {exc}"
                    code = -1
                else:
                    code = await self._supervise(self._process, log)
                if self._stopping:
                    break
                self.restarts += 1
                self.last_error = (self._tail[-1].strip() if self._tail else "") or f"exited with code {code}"
                log.write(f"--- berth up: {self.name} exited with code {code}; restart in {backoff:.1f}s\n")
                if time.monotonic() - started > STABLE_AFTER:
                    backoff = INITIAL_BACKOFF
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _supervise(self, process: asyncio.subprocess.Process, log: IO[str]) -> int:
        assert process.stdout is not None and process.stderr is not None
        pumps = [
            asyncio.ensure_future(self._pump(process.stdout, log)),
            asyncio.ensure_future(self._pump(process.stderr, log)),
        ]
        try:
            if self._stopping:
                await procs.terminate(process, self._grace)
            code = await process.wait()
        finally:
            if process.returncode is None:
                procs.signal_group(process.pid, 9)
        procs.signal_group(process.pid, 9)
        procs.forget(process.pid)
        await asyncio.gather(*pumps, return_exceptions=True)
        return code

    async def _pump(self, stream: asyncio.StreamReader, log: IO[str]) -> None:
        while True:
            raw = await stream.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace")
            log.write(line)
            if line.strip():
                self._tail.append(line)
            if self._echo is not None:
                self._echo(self.name, line.rstrip("\n"))


def berth_args(container: Mapping[str, Any]) -> tuple[str, ...]:
    """A container's command line after `berth` (its image's entrypoint)."""
    command = [str(a) for a in container.get("command") or []]
    args = [str(a) for a in container.get("args") or []]
    if command and Path(command[0]).name == "berth":
        command = command[1:]
    return tuple([*command, *args])

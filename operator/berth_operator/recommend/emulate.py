"""Measuring a candidate on this machine: the real serving runtime, pinned to as many cores as the
instance type has (a CPU affinity mask, and that many intra-op threads at most), driven by the
load generator pinned to the cores left over. The memory limit is checked against the server's
peak RSS. Everything started here is stopped here, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from .search import Candidate, Load, Step

READY_TIMEOUT_SECONDS = 120.0


class MeasureError(RuntimeError):
    """A candidate could not be measured (the runtime did not start, the generator failed)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def split_cores(wanted: int) -> tuple[list[int], list[int], list[str]]:
    """(server cores, load generator cores, notes): the generator keeps at least one core of its
    own when the machine has two or more, so it does not steal the server's time."""
    cores = sorted(os.sched_getaffinity(0))
    notes = []
    if len(cores) == 1:
        return cores, cores, ["one core only: the load generator shares it with the server"]
    room = len(cores) - 1
    if wanted > room:
        notes.append(
            f"emulated with {room} of {wanted} cores (this machine has {len(cores)}, one drives the load)"
        )
    server = cores[: min(wanted, room)]
    return server, cores[len(server) :], notes


def peak_rss_bytes(pid: int) -> int | None:
    """VmHWM: the most resident memory the process ever had."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@contextlib.contextmanager
def serving(model: str, candidate: Candidate, cores: list[int], log_path: Path) -> Iterator[tuple[str, int]]:
    """`berth serve` of the model as the candidate says, on 127.0.0.1; yields (base URL, pid)."""
    port = free_port()
    threads = min(candidate.intra_op_threads, len(cores))
    command = [
        sys.executable,
        "-m",
        "berth_serving",
        "serve",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--intra-op-threads",
        str(threads),
        "--max-batch-size",
        str(candidate.max_batch_size),
        "--max-connections",
        "4096",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=lambda: os.sched_setaffinity(0, cores),
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                raise MeasureError(
                    f"berth serve exited with {process.returncode}: {log_path.read_text()[-400:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/ping", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise MeasureError(f"berth serve not ready after {READY_TIMEOUT_SECONDS:.0f} s")
            time.sleep(0.1)
        yield base, process.pid
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def load_step(url: str, payload: bytes, content_type: str, load: Load, cores: list[int]) -> Step:
    """One level of closed-loop load by the Locust child process (loadgen.py)."""
    warmup = min(1.0, load.seconds / 3)
    with tempfile.NamedTemporaryFile(prefix="berth-payload-", delete=False) as handle:
        handle.write(payload)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "berth_operator.recommend.loadgen",
                url,
                handle.name,
                content_type,
                str(load.users),
                str(warmup),
                str(load.seconds),
                str(load.users_per_minute),
            ],
            capture_output=True,
            text=True,
            timeout=warmup + load.seconds + 60,
            preexec_fn=lambda: os.sched_setaffinity(0, cores),
        )
    finally:
        os.unlink(handle.name)
    if done.returncode != 0:
        raise MeasureError(f"the load generator failed: {done.stderr.strip()[-400:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return Step(**figures)


def measure(
    model: str,
    candidate: Candidate,
    payload: bytes,
    content_type: str,
    next_load: Callable[[list[Step]], Load | None],
    workdir: Path,
    on_step: Callable[[Candidate, Step], None] | None = None,
) -> tuple[list[Step], int | None, int, list[str]]:
    """The candidate's stepped curve: (steps, peak RSS, cores it had, notes)."""
    server_cores, generator_cores, notes = split_cores(candidate.cpus)
    if candidate.intra_op_threads > len(server_cores):
        notes.append(f"ran with {len(server_cores)} intra-op thread(s): the cores it had here")
    steps: list[Step] = []
    log = (
        workdir
        / f"serve-{candidate.instance_type}-{candidate.intra_op_threads}-{candidate.max_batch_size}.log"
    )
    with serving(model, candidate, server_cores, log) as (base, pid):
        url = f"{base}/invocations"
        check = httpx.post(url, content=payload, headers={"Content-Type": content_type}, timeout=30)
        if check.status_code != 200:
            raise MeasureError(f"the payload is refused by the model: {check.status_code} {check.text[:300]}")
        while (load := next_load(steps)) is not None:
            step = load_step(url, payload, content_type, load, generator_cores)
            steps.append(step)
            if on_step is not None:
                on_step(candidate, step)
        rss = peak_rss_bytes(pid)
    if any(s.generator_busy > 0.9 for s in steps):
        notes.append("the load generator used a whole core at the top step: the server may do more")
    return steps, rss, len(server_cores), notes

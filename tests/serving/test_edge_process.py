"""`berth serve` as a real process under stalled clients, with its default edge limits:
memory stays bounded, and SIGTERM still ends within the drain's timeout."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from berth_serving.server import DRAIN_GRACE_SECONDS

from tests.serving.support import free_port, request, serve_subprocess, wait_until
from tests.support.rawhttp import MIB, head, rss_mb, stalled_uploads_rss

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def process(onnx_models, request: pytest.FixtureRequest) -> Iterator[tuple[subprocess.Popen[bytes], int]]:  # type: ignore[no-untyped-def]
    port = free_port()
    proc = serve_subprocess(onnx_models.logreg_plain, port, *getattr(request, "param", ()))
    try:
        wait_until(lambda: request_ok(port), timeout=30)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def request_ok(port: int) -> bool:
    return request(f"http://127.0.0.1:{port}/ping").status == 200


def test_memory_under_60_stalled_uploads_of_6_mib_is_bounded(process) -> None:  # type: ignore[no-untyped-def]
    """60 clients each declare 6 MiB and send one byte less. Unbounded, the server held all of
    it (101 -> 461 MB RSS here); the budget for bodies in transit admits 16 x 6 MiB at once."""
    proc, port = process
    idle = rss_mb(proc.pid)
    peak, after = asyncio.run(stalled_uploads_rss(proc.pid, port, "/invocations", 60, 6 * MIB))
    print(f"berth serve RSS: idle {idle:.0f} MB, peak {peak:.0f} MB, after the clients closed {after:.0f} MB")
    assert peak - idle < 200, (idle, peak)
    assert after - idle < 60, (idle, after)
    assert request_ok(port)


async def stall(port: int, count: int) -> list[asyncio.StreamWriter]:
    """Half the clients stall in the head, half in the body."""
    writers = []
    for index in range(count):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        if index % 2:
            writer.write(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
        else:
            writer.write(head("POST", "/invocations", 1000, Content_Type="application/json") + b"[[0.1")
        await writer.drain()
        writers.append(writer)
    return writers


@pytest.mark.parametrize("process", [("--timeout-seconds", "5")], indirect=True)
def test_sigterm_with_60_stalled_clients_exits_within_the_drain_timeout(process) -> None:  # type: ignore[no-untyped-def]
    """The drain waits at most timeout + grace (10 s here); stalled clients must not stretch it
    (before: 20.5 s, the drain's wait and then uvicorn's own, each for the stalled uploads)."""
    proc, port = process

    async def run() -> float:
        writers = await stall(port, 60)
        await asyncio.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
        elapsed = time.monotonic() - started
        for writer in writers:
            writer.close()
        assert code == 0
        return elapsed

    elapsed = asyncio.run(run())
    print(f"berth serve: SIGTERM with 60 stalled clients exited after {elapsed:.2f} s")
    assert elapsed < 5 + DRAIN_GRACE_SECONDS, elapsed
    assert elapsed < 3, "stalled clients are dropped at once, nothing in flight to wait for"

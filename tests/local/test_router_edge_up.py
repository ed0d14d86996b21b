"""Attacks on a real `berth up` (its router with the default edge limits, a real replica behind
it): a request smuggled in the path, connection reuse, memory under stalled uploads, and
SIGTERM with stalled clients."""

from __future__ import annotations

import asyncio
import http.client
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.rawhttp import (
    MIB,
    connect,
    head,
    read_response,
    rss_mb,
    stalled_uploads_rss,
    tcp_sockets_to,
)

from .support import BerthUp, config, endpoint, model, variant, write_yaml

pytestmark = pytest.mark.timeout(180)
PATH = "/endpoints/default/ep"


def manifests(directory: Path, model_dir: Path) -> Path:
    directory.mkdir(exist_ok=True)
    return write_yaml(
        directory / "ep.yaml",
        [
            model("logreg", f"file://{model_dir / 'logreg.onnx'}"),
            config("ep-v1", [variant("only", "logreg")]),
            endpoint("ep", "ep-v1"),
        ],
    )


@pytest.fixture(scope="module")
def up(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BerthUp]:
    tmp = tmp_path_factory.mktemp("edge-up")
    berth_up = BerthUp(manifests(tmp / "manifests", model_dir), tmp, "--no-watch")
    try:
        wait_serving(berth_up)
        yield berth_up
    finally:
        berth_up.stop()


def wait_serving(up: BerthUp) -> None:
    """Until the endpoint answers through the router (its phase is not what these tests check)."""
    up.wait(lambda: up.invoke("ep", {"instances": [[1, 2, 3, 4]]}).status_code == 200, 40, "ep serving")


def replica_port(up: BerthUp) -> int:
    (replica,) = up.endpoint("ep")["replicas"]
    return int(replica["port"])


def invocations(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "berth_invocations_total"
    )


def test_a_request_smuggled_in_the_path_never_runs_on_the_replica(up: BerthUp) -> None:
    """The decoded path used to be written into the request line to the replica, so this
    path made the replica run a second, injected inference request."""
    port = replica_port(up)
    # The router appends " HTTP/1.1", its own headers and the client's body to the target:
    # X-Rest swallows the first, and the injected POST gets the body.
    injected = (
        "/ping HTTP/1.1\r\nHost: r\r\n\r\n"
        "POST /invocations HTTP/1.1\r\nContent-Type: application/json\r\nX-Rest:"
    )
    body = b"[[1,2,3,4]]"
    before = invocations(port)
    with connect(up.port) as sock:
        sock.sendall(head("POST", PATH + urllib.parse.quote(injected, safe="/:"), len(body)) + body)
        answer = read_response(sock)
    assert answer is not None and answer.status == 400, answer
    time.sleep(0.3)
    assert invocations(port) == before
    assert up.invoke("ep", {"instances": [[1, 2, 3, 4]]}).status_code == 200


def test_sequential_requests_reuse_the_connection_to_the_replica(up: BerthUp) -> None:
    """Counted on the host: sockets ever opened to the replica's port while 300 requests go
    through one client connection (before: one each, left in TIME-WAIT)."""
    port = replica_port(up)
    before = tcp_sockets_to(port)
    connection = http.client.HTTPConnection("127.0.0.1", up.port, timeout=10)
    try:
        for _ in range(300):
            connection.request(
                "POST",
                PATH + "/invocations",
                body=b"[[1,2,3,4]]",
                headers={"Content-Type": "application/json"},
            )
            response = connection.getresponse()
            response.read()
            assert response.status == 200
    finally:
        connection.close()
    opened = tcp_sockets_to(port) - before
    assert len(opened) <= 2, f"{len(opened)} connections to the replica for 300 requests"


def test_router_memory_under_stalled_uploads_is_bounded(up: BerthUp) -> None:
    """12 clients each declare 63 MiB and send one byte less (before: 58 -> 1,531 MB peak,
    814 MB while they stalled): the router admits bodies in transit up to its budget."""
    pid = up.process.pid
    idle = rss_mb(pid)
    before = invocations(replica_port(up))

    peak, after = asyncio.run(stalled_uploads_rss(pid, up.port, PATH + "/invocations", 12, 63 * MIB))
    print(f"berth up RSS: idle {idle:.0f} MB, peak {peak:.0f} MB, after the clients closed {after:.0f} MB")
    assert peak - idle < 400, (idle, peak)
    assert after - idle < 100, (idle, after)
    assert invocations(replica_port(up)) == before, "no partial body reached the replica"
    assert up.invoke("ep", {"instances": [[1, 2, 3, 4]]}).status_code == 200


def test_sigterm_with_60_stalled_clients_stops_promptly(model_dir: Path, tmp_path: Path) -> None:
    """Before: the router waited its whole 5 s graceful timeout for stalled uploads."""
    berth_up = BerthUp(manifests(tmp_path / "manifests", model_dir), tmp_path, "--no-watch")
    try:
        wait_serving(berth_up)

        async def stall() -> list[asyncio.StreamWriter]:
            writers = []
            for index in range(60):
                _, writer = await asyncio.open_connection("127.0.0.1", berth_up.port)
                if index % 2:
                    writer.write(f"POST {PATH}/invocations HTTP/1.1\r\nHost: x\r\n".encode())
                else:
                    writer.write(head("POST", PATH + "/invocations", 1000) + b"[[1")
                await writer.drain()
                writers.append(writer)
            return writers

        async def run() -> float:
            writers = await stall()
            await asyncio.sleep(0.5)
            started = time.monotonic()
            code = await asyncio.to_thread(berth_up.stop, 30)
            elapsed = time.monotonic() - started
            for writer in writers:
                writer.close()
            assert code == 0
            return elapsed

        elapsed = asyncio.run(run())
    finally:
        berth_up.stop()
    print(f"berth up: SIGTERM with 60 stalled clients stopped after {elapsed:.2f} s")
    assert elapsed < 5.0, elapsed

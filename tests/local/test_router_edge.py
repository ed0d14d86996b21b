"""Adversarial HTTP against `berth up`'s router (the real Router and QuietServer in a thread,
raw sockets) in front of a replica that records every byte it is sent: slow heads and
bodies, huge heads, uploads cut short, connection floods.

The edge limits are shortened so each attack ends in seconds; test_router_edge_up.py runs
attacks against a real `berth up` with its defaults.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from functools import partial

import pytest
from berth_operator.local.router import ROUTER_LIMITS, STATUS_PATH, QuietServer

from tests.support.rawhttp import (
    connect,
    head,
    read_response,
    seconds_until_closed,
    send_ignoring_reset,
    sockets,
    trickle,
)

from .router_support import PREFIX, RecordingReplica, RouterServer

pytestmark = pytest.mark.timeout(60)
SHORT = {
    "header_timeout_seconds": 1.0,
    "body_idle_seconds": 1.0,
    "body_timeout_seconds": 3.0,
    "keep_alive_seconds": 1.0,
}


@pytest.fixture
def replica() -> Iterator[RecordingReplica]:
    recording = RecordingReplica().start()
    try:
        yield recording
    finally:
        recording.stop()


@pytest.fixture
def router(replica: RecordingReplica, request: pytest.FixtureRequest) -> Iterator[RouterServer]:
    limits = replace(ROUTER_LIMITS, **{**SHORT, **getattr(request, "param", {})})
    server = RouterServer(replica.port, partial(QuietServer, limits=limits)).start()
    try:
        yield server
    finally:
        server.stop()


def status_seconds(router: RouterServer) -> float:
    started = time.monotonic()
    assert router.get(STATUS_PATH) == 200
    return time.monotonic() - started


def settle() -> None:
    """Give the router a moment to forward anything it was going to forward."""
    time.sleep(0.3)


# --- slow clients -----------------------------------------------------------------------------


def test_a_connection_that_sends_nothing_is_closed(router: RouterServer) -> None:
    with connect(router.port) as sock:
        waited = seconds_until_closed(sock, timeout=5)
    assert waited is not None and waited < 2.0, waited


def test_slow_heads_are_cut_off_and_the_router_keeps_answering(
    router: RouterServer, replica: RecordingReplica
) -> None:
    with sockets(router.port, 10, f"POST {PREFIX}/invocations HTTP/1.1\r\nHost: x\r\n".encode()) as socks:
        probes: list[float] = []
        prober = threading.Thread(target=lambda: probes.extend(status_seconds(router) for _ in range(5)))
        prober.start()
        closed_after = trickle(socks, b"X-Slow: 1\r\n", interval=0.2, timeout=6)
        prober.join(10)
    assert len(closed_after) == 10 and max(closed_after.values()) < 2.0, closed_after
    assert len(probes) == 5 and max(probes) < 0.5, probes
    assert replica.requests == []


def test_a_stalled_body_is_cut_off_and_never_forwarded(
    router: RouterServer, replica: RecordingReplica
) -> None:
    with connect(router.port) as sock:
        started = time.monotonic()
        sock.sendall(head("POST", PREFIX + "/invocations", 1000) + b"[[0.1, 0.1")
        answer = read_response(sock, timeout=5)
        waited = time.monotonic() - started
    assert answer is not None and answer.status == 408, answer
    assert 0.9 < waited < 2.0, waited
    settle()
    assert replica.requests == [] and not any(replica.received)


def test_a_trickled_body_hits_the_total_deadline(router: RouterServer, replica: RecordingReplica) -> None:
    with connect(router.port) as sock:
        sock.sendall(head("POST", PREFIX + "/invocations", 100_000) + b"[")
        closed_after = trickle([sock], b" ", interval=0.2, timeout=8)
    assert 0 in closed_after and 2.5 < closed_after[0] < 4.0, closed_after
    settle()
    assert replica.requests == []


def test_a_client_that_leaves_mid_upload_forwards_nothing(
    router: RouterServer, replica: RecordingReplica
) -> None:
    """The router holds a body until it is whole: half a body is never sent on, not even
    truncated (before: the partial body went to the replica with its own Content-Length)."""
    for sent in (1, 50_000, 99_999):
        with connect(router.port) as sock:
            sock.sendall(head("POST", PREFIX + "/invocations", 100_000) + b"x" * sent)
            time.sleep(0.1)
    settle()
    assert replica.requests == [] and not any(replica.received)
    assert router.get(PREFIX + "/ping") == 200 and len(replica.requests) == 1


# --- huge heads and floods ---------------------------------------------------------------------


def test_a_huge_head_is_refused_431_without_stalling_others(
    router: RouterServer, replica: RecordingReplica
) -> None:
    probes: list[float] = []
    with connect(router.port) as sock:
        sock.sendall(f"GET {PREFIX}/ping HTTP/1.1\r\nHost: x\r\nX-Huge: ".encode())
        prober = threading.Thread(target=lambda: probes.extend(status_seconds(router) for _ in range(5)))
        prober.start()
        sent = 0
        while sent < 8 * 2**20 and send_ignoring_reset(sock, b"a" * 65536):
            sent += 65536
        answer = read_response(sock, timeout=5)
        prober.join(10)
    assert answer is not None and answer.status == 431, answer
    assert sent < 8 * 2**20
    assert len(probes) == 5 and max(probes) < 0.5, probes
    assert replica.requests == []


@pytest.mark.parametrize("router", [{"max_connections": 16, "body_idle_seconds": 20.0}], indirect=True)
def test_a_flood_of_busy_connections_gets_503_while_status_answers(
    router: RouterServer, replica: RecordingReplica
) -> None:
    with sockets(router.port, 16, head("POST", PREFIX + "/invocations", 1000) + b"[["):
        time.sleep(0.2)
        with connect(router.port) as sock:
            sock.sendall(head("POST", PREFIX + "/invocations", 4) + b"[[1]")
            refused = read_response(sock)
        assert refused is not None and refused.status == 503, refused
        assert refused.headers["retry-after"] == "1" and refused.headers["connection"] == "close"
        assert status_seconds(router) < 0.5
    assert replica.requests == []


@pytest.mark.parametrize("router", [{"max_connections": 16}], indirect=True)
def test_a_flood_of_idle_connections_does_not_lock_clients_out(router: RouterServer) -> None:
    with sockets(router.port, 50, b"G") as socks:
        time.sleep(0.2)
        assert router.get(PREFIX + "/ping") == 200
        assert sum(seconds_until_closed(sock, 0.05) is not None for sock in socks) >= 50 - 16
    assert len(router.server.server.server_state.connections) <= 16 + 1

"""Adversarial HTTP against a real `berth serve` (uvicorn + httptools in a thread, raw sockets):
slow heads, slow bodies, huge heads, CR/LF in paths, uploads cut short, connection floods.

The edge limits are shortened here so each attack ends in seconds; the defaults are checked
in test_edge_process.py against the real process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import orjson
import pytest
from berth_serving.config import ServeConfig
from berth_serving.httpedge import EdgeLimits
from berth_serving.server import Service, serve_limits
from prometheus_client.parser import text_string_to_metric_families

from tests.serving.support import ThreadedServer, request
from tests.support.rawhttp import (
    connect,
    head,
    read_response,
    seconds_until_closed,
    send_ignoring_reset,
    sockets,
    trickle,
)

pytestmark = pytest.mark.timeout(60)
ROW = orjson.dumps([[0.1] * 16])
SHORT = {
    "header_timeout_seconds": 1.0,
    "body_idle_seconds": 1.0,
    "body_timeout_seconds": 3.0,
    "keep_alive_seconds": 1.0,
}


class EdgeServer(ThreadedServer):
    """ThreadedServer with chosen edge limits."""

    def __init__(self, config: ServeConfig, **limits: object) -> None:
        super().__init__(config)
        self.limits: EdgeLimits = replace(serve_limits(self.config), **limits)  # type: ignore[arg-type]
        self.service = Service(self.config, limits=self.limits)


@pytest.fixture
def server(onnx_models, request: pytest.FixtureRequest) -> Iterator[EdgeServer]:  # type: ignore[no-untyped-def]
    limits = {**SHORT, **getattr(request, "param", {})}
    edge_server = EdgeServer(ServeConfig(model_uri=str(onnx_models.logreg_plain)), **limits)
    edge_server.start()
    try:
        yield edge_server
    finally:
        edge_server.stop()


def invocations(url: str, code: str) -> float:
    text = request(url + "/metrics").body.decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "berth_invocations_total" and sample.labels.get("code") == code
    )


def ping_seconds(url: str) -> float:
    started = time.monotonic()
    assert request(url + "/ping", timeout=5).status == 200
    return time.monotonic() - started


def wait_idle(server: EdgeServer, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while server.service.app.inflight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.service.app.inflight == 0


def test_a_connection_that_sends_nothing_is_closed(server: EdgeServer) -> None:
    with connect(server.port) as sock:
        waited = seconds_until_closed(sock, timeout=5)
    assert waited is not None and waited < 1.0 + 1.0, waited


def test_slow_heads_are_cut_off_and_ping_keeps_answering(server: EdgeServer) -> None:
    """Slowloris: 10 clients each send a header line every 0.2 s and never end the head."""
    with sockets(server.port, 10, b"POST /invocations HTTP/1.1\r\nHost: x\r\n") as socks:
        pings: list[float] = []
        pinger = threading.Thread(target=lambda: pings.extend(ping_seconds(server.url) for _ in range(5)))
        pinger.start()
        closed_after = trickle(socks, b"X-Slow: 1\r\n", interval=0.2, timeout=6)
        pinger.join(10)
    assert len(closed_after) == 10, "every slow head is cut off"
    assert max(closed_after.values()) < 1.0 + 1.0, closed_after
    assert len(pings) == 5 and max(pings) < 0.5, pings


def test_a_slow_head_is_answered_408(server: EdgeServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
        answer = read_response(sock, timeout=5)
    assert answer is not None and answer.status == 408
    assert answer.headers["connection"] == "close"


def test_a_stalled_body_is_cut_off_and_never_runs(server: EdgeServer) -> None:
    """Declares 1,000 bytes, sends 10, stalls: 408 after the body idle limit, no inference."""
    before = invocations(server.url, "200")
    with connect(server.port) as sock:
        started = time.monotonic()
        sock.sendall(head("POST", "/invocations", 1000, Content_Type="application/json") + b"[[0.1, 0.1")
        answer = read_response(sock, timeout=5)
        waited = time.monotonic() - started
    assert answer is not None and answer.status == 408, answer
    assert "body" in answer.error()
    assert 0.9 < waited < 1.0 + 1.0, waited
    wait_idle(server)
    assert invocations(server.url, "200") == before


def test_a_trickled_body_hits_the_total_deadline(server: EdgeServer) -> None:
    """One byte every 0.2 s beats the idle limit; the total body deadline (3 s) still ends it."""
    with connect(server.port) as sock:
        sock.sendall(head("POST", "/invocations", 100_000, Content_Type="application/json") + b"[")
        closed_after = trickle([sock], b" ", interval=0.2, timeout=8)
    assert 0 in closed_after and 2.5 < closed_after[0] < 3.0 + 1.0, closed_after
    wait_idle(server)


def test_a_huge_head_is_refused_431_without_stalling_others(server: EdgeServer) -> None:
    """A header value that never ends (up to 8 MiB offered): 431 and closed past 64 KiB; /ping
    answers meanwhile."""
    pings: list[float] = []
    with connect(server.port) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Huge: ")
        pinger = threading.Thread(target=lambda: pings.extend(ping_seconds(server.url) for _ in range(5)))
        pinger.start()
        sent = 0
        while sent < 8 * 2**20 and send_ignoring_reset(sock, b"a" * 65536):
            sent += 65536
        answer = read_response(sock, timeout=5)
        pinger.join(10)
    assert answer is not None and answer.status == 431, answer
    assert sent < 8 * 2**20, "the server stopped reading"
    assert len(pings) == 5 and max(pings) < 0.5, pings


def test_many_small_headers_are_refused_431_too(server: EdgeServer) -> None:
    lines = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))  # about 100 KiB in one write
    with connect(server.port) as sock:
        send_ignoring_reset(sock, b"GET /ping HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
        answer = read_response(sock)
    assert answer is not None and answer.status == 431


@pytest.mark.parametrize(
    "target",
    [
        "/ping%0d%0aX-Injected:%20yes",
        "/ping%0aGET%20/metrics",
        "/ping%00",
        "/pi%20ng",
        "/ping%09",
        "/ping%7f",
    ],
)
def test_control_characters_in_the_decoded_path_are_400(server: EdgeServer, target: str) -> None:
    with connect(server.port) as sock:
        sock.sendall(head("GET", target))
        answer = read_response(sock)
        assert answer is not None and answer.status == 400, answer
        assert "path" in answer.error()
        assert seconds_until_closed(sock, timeout=2) is not None


def test_raw_crlf_and_percent_encoding(server: EdgeServer) -> None:
    # A raw CR/LF or space in the request line is the parser's 400.
    with connect(server.port) as sock:
        sock.sendall(b"GET /ping\r\nX: y HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_response(sock)
        assert answer is not None and answer.status == 400
    # Percent-encoding of ordinary characters is fine: /pin%67 is /ping.
    with connect(server.port) as sock:
        sock.sendall(head("GET", "/pin%67") + head("GET", "/ping"))
        first, second = read_response(sock), read_response(sock)
    assert first is not None and first.status == 200
    assert second is not None and second.status == 200


def test_a_client_that_leaves_mid_upload_runs_nothing(server: EdgeServer) -> None:
    before = invocations(server.url, "200")
    body = orjson.dumps([[0.1] * 16] * 500)
    with connect(server.port) as sock:
        sock.sendall(head("POST", "/invocations", len(body), Content_Type="application/json"))
        sock.sendall(body[: len(body) // 2])
        time.sleep(0.2)
    wait_idle(server)
    assert invocations(server.url, "200") == before
    assert (
        request(server.url + "/invocations", "POST", ROW, {"Content-Type": "application/json"}).status == 200
    )


@pytest.mark.parametrize("server", [{"max_connections": 16, "body_idle_seconds": 20.0}], indirect=True)
def test_a_flood_of_busy_connections_gets_503_while_ping_answers(server: EdgeServer) -> None:
    """Every slot holds an upload in progress (nothing to evict): a new request is refused 503
    with Retry-After and Connection: close; /ping still answers for the kubelet."""
    upload = head("POST", "/invocations", 1000, Content_Type="application/json") + b"[["
    with sockets(server.port, 16, upload):
        time.sleep(0.2)
        with connect(server.port) as sock:
            sock.sendall(head("POST", "/invocations", len(ROW), Content_Type="application/json") + ROW)
            refused = read_response(sock)
            assert refused is not None and refused.status == 503, refused
            assert refused.headers["retry-after"] == "1"
            assert refused.headers["connection"] == "close"
            assert seconds_until_closed(sock, timeout=2) is not None
        assert ping_seconds(server.url) < 0.5
    wait_idle(server)


@pytest.mark.parametrize("server", [{"max_connections": 16}], indirect=True)
def test_a_flood_of_idle_connections_does_not_lock_clients_out(server: EdgeServer) -> None:
    """50 connections that sent one byte of a head: the oldest idle ones make room."""
    with sockets(server.port, 50, b"G") as socks:
        time.sleep(0.2)
        answer = request(server.url + "/invocations", "POST", ROW, {"Content-Type": "application/json"})
        assert answer.status == 200
        assert ping_seconds(server.url) < 0.5
        assert sum(seconds_until_closed(sock, 0.05) is not None for sock in socks) >= 50 - 16
    assert len(server.service.server.server_state.connections) <= 16 + 1


@pytest.mark.parametrize("server", [{"max_body_bytes_in_transit": 64 * 1024}], indirect=True)
def test_bodies_in_transit_have_a_memory_budget(server: EdgeServer) -> None:
    """One upload holds 60 KiB of a 64 KiB budget: a second that declares 10 KiB is refused 503
    at once; a small request still fits."""
    with connect(server.port) as holder:
        holder.sendall(head("POST", "/invocations", 60 * 1024, Content_Type="application/json") + b"[[")
        time.sleep(0.1)
        with connect(server.port) as sock:
            sock.sendall(head("POST", "/invocations", 10 * 1024, Content_Type="application/json"))
            refused = read_response(sock)
        assert refused is not None and refused.status == 503, refused
        assert refused.headers["retry-after"] == "1"
        answer = request(server.url + "/invocations", "POST", ROW, {"Content-Type": "application/json"})
        assert answer.status == 200

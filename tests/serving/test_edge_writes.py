"""An answer of a real `berth serve` (uvicorn + httptools in a thread) leaves in one TCP
segment: head and body in one send(), counted by the kernel on the client's socket
(Linux TCP_INFO tcpi_data_segs_in). uvicorn alone writes them in two."""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Iterator

import orjson
import pytest
from berth_serving.config import ServeConfig

from tests.serving.support import ThreadedServer
from tests.support.rawhttp import connect, head, read_response

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO is Linux's"),
]
ROW = orjson.dumps([[0.1] * 16])
# struct tcp_info (linux/tcp.h): tcpi_data_segs_in, a __u32 after 152 bytes of older fields.
_DATA_SEGS_IN = 152


def data_segments_in(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, _DATA_SEGS_IN)[0])


@pytest.fixture(scope="module")
def server(onnx_models) -> Iterator[ThreadedServer]:  # type: ignore[no-untyped-def]
    threaded = ThreadedServer(ServeConfig(model_uri=str(onnx_models.logreg_plain)))
    threaded.start()
    try:
        yield threaded
    finally:
        threaded.stop()


def segments_per_answer(server: ThreadedServer, request: bytes, count: int = 20) -> tuple[float, set[int]]:
    with connect(server.port) as sock:
        before = data_segments_in(sock)
        statuses = set()
        for _ in range(count):
            sock.sendall(request)
            answer = read_response(sock)
            assert answer is not None
            statuses.add(answer.status)
        return (data_segments_in(sock) - before) / count, statuses


def test_an_inference_answer_is_one_segment(server: ThreadedServer) -> None:
    request = head("POST", "/invocations", len(ROW), Content_Type="application/json") + ROW
    segments, statuses = segments_per_answer(server, request)
    assert statuses == {200}
    assert segments == 1.0


def test_error_and_rest_answers_are_one_segment_too(server: ThreadedServer) -> None:
    bad = head("POST", "/invocations", 3, Content_Type="application/json") + b"[[x"
    assert segments_per_answer(server, bad) == (1.0, {400})
    # The v2 routes go through FastAPI (rest.py): its own two sends, the same single write.
    assert segments_per_answer(server, head("GET", "/v2/health/ready")) == (1.0, {200})


def test_a_head_answer_has_its_head_and_nothing_else(server: ThreadedServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(head("HEAD", "/ping"))
        sock.settimeout(5)
        data = sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\n")
        # The connection still serves: the head was not held back waiting for a body.
        sock.sendall(head("POST", "/invocations", len(ROW), Content_Type="application/json") + ROW)
        answer = read_response(sock)
        assert answer is not None and answer.status == 200


def test_100_continue_goes_before_the_body_is_sent(server: ThreadedServer) -> None:
    with connect(server.port) as sock:
        sock.sendall(
            head("POST", "/invocations", len(ROW), Content_Type="application/json", Expect="100-continue")
        )
        sock.settimeout(5)
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(ROW)
        answer = read_response(sock)
        assert answer is not None and answer.status == 200
        assert len(orjson.loads(answer.body)["outputs"]["label"]) == 1

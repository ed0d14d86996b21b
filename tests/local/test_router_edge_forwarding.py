"""The router of `berth up` forwards what it is sent and nothing more: the path stays
percent-encoded on its way to the replica, a target or header that would end the request
line or head early is refused, and requests share pooled connections to the replica.
Raw sockets against the real Router and QuietServer, in front of a replica that records
every byte it gets."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator

import pytest
from berth_operator.local.upstream import encode_head

from tests.support.rawhttp import connect, head, read_response

from .router_support import PREFIX, RecordingReplica, RouterServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def replica() -> Iterator[RecordingReplica]:
    recording = RecordingReplica().start()
    try:
        yield recording
    finally:
        recording.stop()


@pytest.fixture
def router(replica: RecordingReplica) -> Iterator[RouterServer]:
    server = RouterServer(replica.port).start()
    try:
        yield server
    finally:
        server.stop()


def settle() -> None:
    """Give the router a moment to forward anything it was going to forward."""
    time.sleep(0.3)


# --- smuggling ---------------------------------------------------------------------------------


SMUGGLED = (
    "/x%20HTTP/1.1%0d%0aHost:%20replica%0d%0a%0d%0aGET%20/smuggled%20HTTP/1.1%0d%0aX-Rest:%20",
    "/x%0aGET%20/smuggled",
    "/x%0d",
    "/x%00",
    "/x%20y",
    "/x%09",
    "/x%7f",
)


@pytest.mark.parametrize("rest", SMUGGLED)
def test_control_characters_in_the_path_are_400_and_nothing_reaches_the_replica(
    router: RouterServer, replica: RecordingReplica, rest: str
) -> None:
    with connect(router.port) as sock:
        sock.sendall(head("GET", PREFIX + rest))
        answer = read_response(sock)
    assert answer is not None and answer.status == 400, answer
    settle()
    assert replica.requests == [] and not any(replica.received)


def test_the_replica_gets_the_still_encoded_target(router: RouterServer, replica: RecordingReplica) -> None:
    """The prefix is rewritten on the raw bytes: %2F stays %2F, the query passes untouched."""
    with connect(router.port) as sock:
        sock.sendall(head("GET", PREFIX + "/v2/models/a%2Fb%41/ready?x=%41%26y&z"))
        answer = read_response(sock)
    assert answer is not None and answer.status == 200
    (seen,) = replica.requests
    assert seen.target == b"/v2/models/a%2Fb%41/ready?x=%41%26y&z"
    assert bytes(replica.received[0]).startswith(b"GET /v2/models/a%2Fb%41/ready?x=%41%26y&z HTTP/1.1\r\n")


def test_a_folded_header_is_400_and_never_forwarded(router: RouterServer, replica: RecordingReplica) -> None:
    with connect(router.port) as sock:
        sock.sendall(
            b"GET " + PREFIX.encode() + b"/x HTTP/1.1\r\nHost: r\r\nX-A: a\r\n GET /smuggled\r\n\r\n"
        )
        answer = read_response(sock)
    assert answer is not None and answer.status == 400
    settle()
    assert replica.requests == []


@pytest.mark.parametrize(
    "header",
    [
        (b"x-a", b"a\r\nGET /smuggled HTTP/1.1"),
        (b"x-a", b"a\nb"),
        (b"x-a", b"a\rb"),
        (b"x-a", b"\x00"),
        (b"x\r\n", b"a"),
    ],
)
def test_a_head_with_cr_or_lf_in_a_header_is_never_encoded(header: tuple[bytes, bytes]) -> None:
    with pytest.raises(ValueError, match="header"):
        encode_head("GET", b"/x", b"replica:1", [header], 0)


@pytest.mark.parametrize("target", [b"/x y", b"/x\r\nGET /smuggled", b"/x\n", b"x", b""])
def test_a_target_that_is_not_a_clean_origin_form_is_never_encoded(target: bytes) -> None:
    with pytest.raises(ValueError, match="target"):
        encode_head("GET", target, b"replica:1", [], 0)


# --- keep-alive ------------------------------------------------------------------------------


def test_sequential_requests_reuse_one_replica_connection(
    router: RouterServer, replica: RecordingReplica
) -> None:
    """200 requests one after another: the replica sees one connection (before: 200)."""
    connection = http.client.HTTPConnection("127.0.0.1", router.port, timeout=10)
    try:
        for index in range(200):
            connection.request("POST", PREFIX + "/invocations", body=b"[[%d]]" % index)
            response = connection.getresponse()
            assert response.read() == b"ok" and response.status == 200
    finally:
        connection.close()
    assert len(replica.requests) == 200
    assert [r.body for r in replica.requests] == [b"[[%d]]" % i for i in range(200)]
    assert replica.connections == 1


def test_concurrent_clients_share_a_bounded_set_of_replica_connections(
    router: RouterServer, replica: RecordingReplica
) -> None:
    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", router.port, timeout=10)
        for _ in range(50):
            connection.request("GET", PREFIX + "/ping")
            connection.getresponse().read()
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(replica.requests) == 400
    assert replica.connections <= 8

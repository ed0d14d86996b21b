"""The worker's loopback HTTP client against real servers on 127.0.0.1: uvicorn, and raw
asyncio servers that frame their answers each way HTTP/1.1 allows (or break them)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvicorn
from berth_serving.asyncinf.replica_client import (
    ReplicaClient,
    ReplicaProtocolError,
    ReplicaUnreachable,
)

from tests.support.envtest import free_port

pytestmark = pytest.mark.timeout(30)


def run_in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server on loopback; yields its URL and the count of connections it accepted."""
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/invocations", accepted
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


@contextlib.asynccontextmanager
async def echo_uvicorn() -> AsyncIterator[str]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        inference = dict(scope["headers"]).get(b"x-berth-inference-id", b"")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-id", inference)]})
        await send({"type": "http.response.body", "body": body[::-1]})

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/invocations"
    finally:
        server.should_exit = True
        await task


@run_in_loop
async def test_answers_from_uvicorn_reuse_one_kept_alive_connection() -> None:
    async with echo_uvicorn() as url:
        client = ReplicaClient(url, max_connections=4)
        for number in range(20):
            body = f"request {number}".encode()
            answer = await client.post({"X-Berth-Inference-Id": f"id-{number}"}, body, len(body))
            assert (answer.status, answer.body, answer.headers["x-id"]) == (200, body[::-1], f"id-{number}")
        assert len(client._idle) == 1  # one connection carried all twenty
        await client.close()


@run_in_loop
async def test_a_streamed_body_arrives_whole() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"ab", b"cd", b"ef"):
            yield part

    async with echo_uvicorn() as url:
        client = ReplicaClient(url, max_connections=1)
        answer = await client.post({}, chunks(), 6)
        assert answer.body == b"fedcba"
        await client.close()


@run_in_loop
async def test_a_chunked_answer_is_read_and_its_connection_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n"
            )
            await writer.drain()

    async with raw_server(handler) as (url, accepted):
        client = ReplicaClient(url, max_connections=1)
        for _ in range(3):
            assert (await client.post({}, b"x", 1)).body == b"abcde"
        assert len(accepted) == 1
        await client.close()


@run_in_loop
async def test_an_answer_framed_by_the_connections_end_is_read_and_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        await writer.drain()

    async with raw_server(handler) as (url, accepted):
        client = ReplicaClient(url, max_connections=1)
        assert (await client.post({}, b"x", 1)).body == b"all of it"
        assert (await client.post({}, b"x", 1)).body == b"all of it"
        assert len(accepted) == 2
        await client.close()


@run_in_loop
async def test_a_kept_alive_connection_the_server_closed_is_retried_on_a_new_one() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_request(reader)  # the second request arrives, then the server hangs up silently

    async with raw_server(handler) as (url, accepted):
        client = ReplicaClient(url, max_connections=1)
        assert (await client.post({}, b"x", 1)).body == b"ok"
        assert (await client.post({}, b"y", 1)).body == b"ok"
        assert len(accepted) == 2
        await client.close()


@run_in_loop
async def test_an_early_refusal_of_a_streamed_body_is_heard() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        message = b'{"error": {"code": "PayloadTooLarge", "message": "over 6 MiB"}}'
        writer.write(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % len(message)
        )
        writer.write(message)
        await writer.drain()

    async def big() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"0" * 1024 * 1024

    async with raw_server(handler) as (url, _):
        client = ReplicaClient(url, max_connections=1)
        answer = await client.post({}, big(), 64 * 1024 * 1024)
        assert answer.status == 413 and b"over 6 MiB" in answer.body
        assert not client._idle  # the replica closed it
        await client.close()


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"SMTP ready\r\n\r\n", "not an HTTP/1.1 answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "inside its answer"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", "head is over"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"a" * 2000, "over 1000 bytes"),
    ],
)
@run_in_loop
async def test_a_broken_answer_is_a_protocol_error_naming_the_fault(answer: bytes, message: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()

    async with raw_server(handler) as (url, _):
        client = ReplicaClient(url, max_connections=1, max_answer_bytes=1000)
        with pytest.raises(ReplicaProtocolError, match=message):
            await client.post({}, b"x", 1)
        await client.close()


@run_in_loop
async def test_a_server_that_never_answers_is_bounded_by_the_callers_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(60)

    async with raw_server(handler) as (url, _):
        client = ReplicaClient(url, max_connections=1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await client.post({}, b"x", 1)
        assert not client._idle  # a cancelled exchange leaves nothing to reuse
        await client.close()


@run_in_loop
async def test_nobody_listening_is_unreachable() -> None:
    client = ReplicaClient(f"http://127.0.0.1:{free_port()}/invocations", max_connections=1)
    with pytest.raises(ReplicaUnreachable, match="cannot connect"):
        await client.post({}, b"x", 1)


@run_in_loop
async def test_a_header_value_with_a_line_break_is_refused_before_sending() -> None:
    client = ReplicaClient("http://127.0.0.1:1/invocations", max_connections=1)
    with pytest.raises(ValueError, match="line break"):
        await client.post({"X-Evil": "a\r\nHost: other"}, b"x", 1)

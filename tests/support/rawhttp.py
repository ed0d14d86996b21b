"""Raw-socket HTTP for the adversarial edge tests of `berth serve` and `berth up`'s router.

Attacks need bytes no client library sends: a head that never ends, a body shorter than
its Content-Length, a percent-encoded CRLF. Every helper here is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> str:
        document = orjson.loads(self.body)
        error = document["error"]
        return str(error["message"] if isinstance(error, dict) else error)


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# Bytes read past the end of a response (pipelined answers arrive together), per socket.
_unread: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def read_response(sock: socket.socket, timeout: float = 5.0) -> RawResponse | None:
    """One response, or None when the peer closes (or resets) before a whole one arrives."""
    deadline = time.monotonic() + timeout
    data = _unread.pop(sock, b"")
    while b"\r\n\r\n" not in data:
        chunk = _recv(sock, deadline)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = _recv(sock, deadline)
        if not chunk:
            return None
        body += chunk
    _unread[sock] = body[length:]
    return RawResponse(int(status_line.split()[1]), headers, body[:length])


def _recv(sock: socket.socket, deadline: float) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("no answer in time")
    sock.settimeout(remaining)
    try:
        return sock.recv(65536)
    except (ConnectionResetError, BrokenPipeError):
        return b""


def closed(sock: socket.socket) -> bool:
    """True once the peer has closed (EOF or reset); reads and drops anything it sent."""
    while True:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True


def seconds_until_closed(sock: socket.socket, timeout: float) -> float | None:
    """How long until the peer closes the connection; None if it is still open after timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if closed(sock):
            return time.monotonic() - started
        select.select([sock], [], [], 0.02)
    return None


def send_ignoring_reset(sock: socket.socket, data: bytes) -> bool:
    """False when the peer has already closed the connection."""
    try:
        sock.sendall(data)
        return True
    except (ConnectionResetError, BrokenPipeError, TimeoutError):
        return False


def head(method: str, target: str, length: int | None = None, **headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: edge-test"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@contextlib.contextmanager
def sockets(port: int, count: int, first: bytes = b"") -> Iterator[list[socket.socket]]:
    """`count` connections, each having sent `first`; all closed afterwards."""
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = connect(port)
            if first:
                sock.sendall(first)
            opened.append(sock)
        yield opened
    finally:
        for sock in opened:
            sock.close()


def trickle(socks: list[socket.socket], piece: bytes, interval: float, timeout: float) -> dict[int, float]:
    """Send `piece` on every socket each `interval` until the peer closes it; returns, per socket
    index, the seconds until it was closed (sockets still open at `timeout` are missing)."""
    started = time.monotonic()
    open_ = dict(enumerate(socks))
    closed_after: dict[int, float] = {}
    while open_ and time.monotonic() - started < timeout:
        for index, sock in list(open_.items()):
            if closed(sock) or not send_ignoring_reset(sock, piece):
                closed_after[index] = time.monotonic() - started
                del open_[index]
        time.sleep(interval)
    return closed_after


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for {pid}")


def tcp_sockets_to(port: int) -> set[int]:
    """Local ports of every IPv4 TCP socket on this host whose remote port is `port`, in any
    state (TIME-WAIT included): the client side of each connection ever made to `port` lately."""
    found: set[int] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(remote.rsplit(":", 1)[1], 16) == port:
            found.add(int(local.rsplit(":", 1)[1], 16))
    return found


MIB = 2**20


async def stalled_upload(port: int, path: str, declared: int, sent: int) -> asyncio.StreamWriter | None:
    """Declares `declared` bytes and sends `sent`; None when the server refused or closed."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head("POST", path, declared, Content_Type="application/json"))
        chunk = b" " * MIB
        while sent > 0:
            writer.write(chunk[: min(sent, MIB)])
            sent -= min(sent, MIB)
            await asyncio.wait_for(writer.drain(), 10)
        return writer
    except (OSError, TimeoutError):
        return None


async def stalled_uploads_rss(
    pid: int, port: int, path: str, clients: int, declared: int
) -> tuple[float, float]:
    """Peak RSS of `pid` while `clients` uploads of declared-1 bytes stall, and RSS after they close."""
    peak = rss_mb(pid)

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_mb(pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.ensure_future(sample())
    writers = await asyncio.gather(
        *(stalled_upload(port, path, declared, declared - 1) for _ in range(clients))
    )
    await asyncio.sleep(1.0)
    for writer in writers:
        if writer is not None:
            writer.close()
    await asyncio.sleep(2.0)
    sampler.cancel()
    return peak, rss_mb(pid)

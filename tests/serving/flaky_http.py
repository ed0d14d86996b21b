"""Real HTTP servers on 127.0.0.1 that misbehave on purpose, for the fetch tests.

`FlakyServer` answers each path from a plan, one step per request (the last step repeats): a
whole body, a body shorter than its Content-Length, a chunked body cut before its end, a body
that stalls, a status code. `FlakyS3` is a proxy in front of moto's S3 server that can do the
same to object downloads, so boto3 meets the failures on the real wire protocol.
"""

from __future__ import annotations

import http.client
import http.server
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.serving.support import free_port


@dataclass(frozen=True)
class Step:
    kind: str  # "whole", "short", "chunked", "chunked-cut", "stall", "status"
    body: bytes = b""
    sent: int = 0  # short / chunked-cut / stall: bytes of the body sent before stopping
    status: int = 200


def whole(body: bytes) -> Step:
    return Step("whole", body)


def short(body: bytes, sent: int) -> Step:
    """Content-Length says len(body); only `sent` bytes come, then the connection closes."""
    return Step("short", body, sent)


def chunked(body: bytes) -> Step:
    return Step("chunked", body)


def chunked_cut(body: bytes, sent: int) -> Step:
    """Transfer-Encoding chunked; the connection closes after `sent` bytes, without the last chunk."""
    return Step("chunked-cut", body, sent)


def stall(body: bytes, sent: int) -> Step:
    """Content-Length says len(body); `sent` bytes come, then nothing until the test ends."""
    return Step("stall", body, sent)


def status(code: int) -> Step:
    return Step("status", status=code)


class _Plans:
    def __init__(self) -> None:
        self.steps: dict[str, list[Step]] = {}
        self.requests: defaultdict[str, int] = defaultdict(int)
        self.lock = threading.Lock()
        self.released = threading.Event()  # ends stalls

    def next(self, path: str) -> Step | None:
        with self.lock:
            self.requests[path] += 1
            steps = self.steps.get(path)
            if not steps:
                return None
            return steps.pop(0) if len(steps) > 1 else steps[0]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        step = self.server.plans.next(self.path)
        if step is None:
            self.send_error(404)
            return
        self.play(step)

    def play(self, step: Step) -> None:
        if step.kind == "status":
            self.send_response(step.status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if step.kind.startswith("chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            body = step.body if step.kind == "chunked" else step.body[: step.sent]
            for start in range(0, len(body), 4096):
                piece = body[start : start + 4096]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            if step.kind == "chunked":
                self.wfile.write(b"0\r\n\r\n")
            self.close_connection = True
            return
        self.send_header("Content-Length", str(len(step.body)))
        self.end_headers()
        if step.kind == "whole":
            self.wfile.write(step.body)
            return
        self.wfile.write(step.body[: step.sent])
        self.wfile.flush()
        if step.kind == "stall":
            self.server.plans.released.wait(30)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    plans: _Plans


class FlakyServer:
    def __init__(self, server: _Server) -> None:
        self._server = server
        self.base = f"http://127.0.0.1:{server.server_address[1]}"

    def plan(self, path: str, *steps: Step) -> str:
        """Answer `path` with `steps` in turn; returns its URL."""
        self._server.plans.steps[path] = list(steps)
        return self.base + path

    def requests(self, path: str) -> int:
        return self._server.plans.requests[path]


@contextmanager
def flaky_server() -> Iterator[FlakyServer]:
    server = _Server(("127.0.0.1", free_port()), _Handler)
    server.plans = _Plans()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FlakyServer(server)
    finally:
        server.plans.released.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


# --------------------------------------------------------------------------- S3 in front of moto

_HOP_BY_HOP = {"connection", "transfer-encoding", "content-length", "keep-alive"}


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        path = self.path.split("?", 1)[0]  # botocore adds ?x-id=GetObject
        step = self.server.plans.next(path) if self.command == "GET" else None
        if step is not None and step.kind == "status":
            payload = f"<Error><Code>Status{step.status}</Code><Message>planned</Message></Error>".encode()
            self.send_response(step.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.moto_port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in _HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if step is not None and step.kind == "short" and answer.status == 200:
            self.wfile.write(data[: step.sent])
            self.close_connection = True
            return
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = forward

    def log_message(self, format: str, *args: object) -> None:
        pass


class _ProxyServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    plans: _Plans
    moto_port: int


class FlakyS3:
    """Object GETs by path (`/BUCKET/KEY`) follow a plan: `short(b"", sent)` cuts moto's body
    after `sent` bytes, `status(503)` answers an S3 error; everything else passes through."""

    def __init__(self, server: _ProxyServer) -> None:
        self._server = server
        self.endpoint = f"http://127.0.0.1:{server.server_address[1]}"

    def plan(self, bucket: str, key: str, *steps: Step) -> None:
        self._server.plans.steps[f"/{bucket}/{key}"] = list(steps)

    def requests(self, bucket: str, key: str) -> int:
        return self._server.plans.requests[f"/{bucket}/{key}"]


@contextmanager
def flaky_s3(moto_endpoint: str) -> Iterator[FlakyS3]:
    server = _ProxyServer(("127.0.0.1", free_port()), _ProxyHandler)
    server.plans = _Plans()
    server.moto_port = int(moto_endpoint.rsplit(":", 1)[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FlakyS3(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

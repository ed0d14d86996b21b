"""Helpers for the async inference tests: a stand-in model server (slow, failing, counting),
a webhook receiver, `berth async-worker` / `berth async-frontdoor` child processes and a
routes file."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berth_serving.asyncinf.keys import Routes, RouteVariant, stream_key

from tests.serving.support import REPO, free_port, request

BERTH = str(Path(sys.executable).parent / "berth")
NAMESPACE = "default"


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll until `condition()` is truthy; its value. Fails naming the timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ConnectionError):
            last = condition()
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last value {last!r})")


# --------------------------------------------------------------------------- stand-in model


class _ModelServer(http.server.ThreadingHTTPServer):
    request_queue_size = 512  # a worker may open hundreds of connections at once (listen(5) drops them)


class StandInModel:
    """A real HTTP server on 127.0.0.1 that honours the serving contract's /ping and
    /invocations. The body says what to do: `sleep:SECONDS`, `fail:CODE`, anything else is
    answered as `echo:BODY`. Every call is recorded (inference id, body size)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.started: list[str] = []
        self.ready = True
        self.running = 0
        self.most_running = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                status = 200 if owner.ready and self.path == "/ping" else 503
                self._answer(status, b'{"status":"ok"}' if status == 200 else b'{"error":{"message":"x"}}')

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                inference_id = self.headers.get("x-berth-inference-id", "")
                owner.started.append(inference_id)
                with owner._lock:
                    owner.running += 1
                    owner.most_running = max(owner.most_running, owner.running)
                try:
                    body = self.rfile.read(length)
                    if body.startswith(b"sleep:"):
                        time.sleep(float(body[6:]))
                finally:
                    with owner._lock:
                        owner.running -= 1
                owner.calls.append((inference_id, len(body)))
                if body.startswith(b"fail:"):
                    code = int(body[5:8])
                    message = json.dumps({"error": {"code": code, "message": "the model cannot take this"}})
                    self._answer(code, message.encode())
                    return
                content_type = self.headers.get("content-type", "")
                self._answer(200, b"echo:" + content_type.encode() + b":" + body, "text/plain")

            def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = _ModelServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.invoke_url = f"http://127.0.0.1:{self.port}/invocations"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StandInModel:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- webhook receiver


class Webhook:
    """A real HTTP server that answers 503 to the first `fail_first` POSTs, then 204."""

    def __init__(self, fail_first: int = 0, status: int = 503) -> None:
        self.fail_first = fail_first
        self.attempts: list[tuple[float, str, bytes]] = []  # (time, content type, body)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                owner.attempts.append((time.monotonic(), self.headers.get("content-type", ""), body))
                code = status if len(owner.attempts) <= owner.fail_first else 204
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=secret"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, _, body in self.attempts]

    def __enter__(self) -> Webhook:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- processes


@dataclass
class Child:
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_child(argv: list[str], log_path: Path, env: dict[str, str] | None = None, port: int = 0) -> Child:
    log = log_path.open("wb")
    process = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(env or {})}
    )
    return Child(process, log_path, port)


@dataclass
class Variant:
    name: str
    config: str
    weight: float
    output_uri: str
    failure_uri: str
    endpoint: str = "ep"

    @property
    def stream(self) -> str:
        return stream_key(NAMESPACE, self.endpoint, self.config, self.name)

    def route(self) -> RouteVariant:
        return RouteVariant(
            variantName=self.name,
            endpointConfigName=self.config,
            weight=self.weight,
            stream=self.stream,
            outputUri=self.output_uri,
            failureUri=self.failure_uri,
        )


def write_routes(path: Path, variants: list[Variant], endpoint: str = "ep") -> None:
    routes = Routes(namespace=NAMESPACE, endpoint=endpoint, variants=[v.route() for v in variants])
    partial = path.with_suffix(".partial")
    partial.write_text(routes.model_dump_json(by_alias=True))
    os.replace(partial, path)


def start_worker(
    redis_url: str,
    variant: Variant,
    invoke_url: str,
    log_path: Path,
    *extra: str,
    consumer: str = "w1",
    concurrency: int = 2,
    claim_idle: float = 2.0,
    env: dict[str, str] | None = None,
) -> Child:
    metrics_port = free_port()
    argv = [
        BERTH, "async-worker", "--redis-url", redis_url, "--stream", variant.stream,
        "--consumer", consumer, "--invoke-url", invoke_url, "--max-concurrency", str(concurrency),
        "--variant", variant.name, "--endpoint-config", variant.config,
        "--claim-idle-seconds", str(claim_idle), "--metrics-port", str(metrics_port),
        "--metrics-host", "127.0.0.1", *extra,
    ]  # fmt: skip
    return start_child(argv, log_path, env, metrics_port)


def start_frontdoor(
    redis_url: str, routes: Path, log_path: Path, *extra: str, env: dict[str, str] | None = None
) -> Child:
    port = free_port()
    argv = [BERTH, "async-frontdoor", "--routes", str(routes), "--redis-url", redis_url,
            "--host", "127.0.0.1", "--port", str(port), *extra]  # fmt: skip
    child = start_child(argv, log_path, env, port)
    try:
        wait_for(lambda: child.process.poll() is not None or request(child.url + "/ping").status == 200)
    except AssertionError:
        child.stop()
        raise AssertionError("front door did not become ready:\n" + child.log()) from None
    assert child.process.poll() is None, child.log()
    return child


@dataclass
class Posted:
    status: int
    headers: dict[str, str]
    body: bytes
    json: Any = field(default=None)


def post(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Posted:
    answer = request(url + "/async-invocations", "POST", body, headers or {})
    try:
        payload = json.loads(answer.body)
    except ValueError:
        payload = None
    return Posted(answer.status, answer.headers, answer.body, payload)


def status_of(url: str, inference_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    answer = request(f"{url}/async-invocations/{inference_id}", headers=headers)
    assert answer.status == 200, (answer.status, answer.body)
    return dict(json.loads(answer.body))


def wait_done(
    url: str, inference_id: str, timeout: float = 30.0, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    return dict(wait_for(lambda: _finished(status_of(url, inference_id, headers)), timeout))


def _finished(state: dict[str, Any]) -> dict[str, Any] | None:
    return state if state["state"] in ("Succeeded", "Failed") else None


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of sample `name` whose labels include `labels`, from an exposition."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{key}="{wanted}"' in head for key, wanted in labels.items()):
            return float(value)
    return None


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in started:
            child.stop()


def start_redis_on(port: int, directory: Path) -> subprocess.Popen[bytes]:
    """A redis-server on a given port (to stop one and bring it back where clients expect it)."""
    from tests.support.redisserver import require_redis_binary

    argv = [require_redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(directory)]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    wait_for(lambda: redis.Redis(port=port, socket_timeout=0.5).ping(), 10)
    return process

"""The async front door of one Endpoint (`berth async-frontdoor`): a plain ASGI app that
queues invocations on the variants' streams and tells their state.

- `POST /async-invocations`: an inline body (up to the payload limit, staged to
  `<outputUri>/inputs/ID.in`) or `X-Berth-Input-Location` (s3:// or file://, stays where it
  is); answered 202 `{"inferenceId", "outputLocation", "failureLocation"}` once queued. A
  repeated `X-Berth-Inference-Id` answers the first request's locations and queues nothing.
- `GET /async-invocations/ID`: `{"state", "reason", ...}`, or 404.
- `GET /ping`: 200 once a routes file was read (not while draining); `GET /metrics`.

Bad input is a 400 naming what was expected; Redis or storage away is a 503 with Retry-After.
Served under the same HTTP edge and invoke auth as `berth serve`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
import redis.exceptions
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from berth_serving.asyncinf import queue
from berth_serving.asyncinf.keys import (
    DEFAULT_INVOCATION_TIMEOUT_SECONDS,
    DEFAULT_TTL_SECONDS,
    MAX_INVOCATION_TIMEOUT_SECONDS,
    MAX_TTL_SECONDS,
    RouteVariant,
    inference_key,
)
from berth_serving.asyncinf.routes import NoRoute, RoutesFile, choose
from berth_serving.asyncinf.storage import (
    LocationError,
    StorageCalls,
    StorageError,
    check_location,
    object_under,
)
from berth_serving.errors import HTTPError, error_body, error_headers

log = logging.getLogger("berth.async.frontdoor")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

PATH = "/async-invocations"
INFERENCE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

# Metric names, spelled once.
BACKLOG_METRIC = "berth_async_backlog"
BACKLOG_PENDING_METRIC = "berth_async_backlog_pending"
OLDEST_AGE_METRIC = "berth_async_oldest_message_age_seconds"
ENQUEUED_METRIC = "berth_async_enqueued"  # berth_async_enqueued_total{variant,endpoint_config}
QUEUE_UP_METRIC = "berth_async_queue_up"

_JSON = b"application/json"
_HEADERS_READ = (
    b"x-berth-inference-id",
    b"x-berth-input-location",
    b"x-berth-request-ttl-seconds",
    b"x-berth-invocation-timeout-seconds",
    b"x-berth-target-variant",
    b"content-type",
    b"accept",
    b"content-length",
    b"transfer-encoding",
)


class RequestGone(Exception):
    """The client went away before its body was whole."""


@dataclass(frozen=True)
class AsyncRequest:
    """What POST /async-invocations asked, checked."""

    inference_id: str
    client_id: bool  # the id came from X-Berth-Inference-Id (it may have been queued before)
    input_location: str | None
    ttl_seconds: int
    timeout_seconds: int
    target_variant: str | None
    content_type: str
    accept: str
    content_length: int | None
    has_body: bool


def _unavailable(what: str) -> HTTPError:
    return HTTPError(503, f"{what} is unavailable; retry", retry_after=1)


def read_request(raw: list[tuple[bytes, bytes]], new_id: Callable[[], str]) -> AsyncRequest:
    """The request's headers, or HTTPError(400) naming the one that is wrong."""
    seen: dict[bytes, str] = {}
    for key, value in raw:
        if key in _HEADERS_READ:
            if key in seen:
                raise HTTPError(400, f"more than one {key.decode()} header: send exactly one")
            seen[key] = value.decode("latin-1")
    inference_id = seen.get(b"x-berth-inference-id")
    if inference_id is not None and not INFERENCE_ID.fullmatch(inference_id):
        raise HTTPError(400, "X-Berth-Inference-Id must be 1 to 128 characters of A-Z a-z 0-9 . _ -")
    location = seen.get(b"x-berth-input-location")
    if location is not None:
        try:
            check_location(location)
        except LocationError as error:
            raise HTTPError(400, str(error)) from None
    length_text = seen.get(b"content-length")
    length = int(length_text) if length_text is not None and length_text.isdigit() else None
    has_body = (length or 0) > 0 or b"transfer-encoding" in seen
    if location is not None and has_body:
        raise HTTPError(400, "send the input inline or name it in X-Berth-Input-Location, not both")
    if location is None and not has_body:
        raise HTTPError(
            400, "no input: send a request body or name one in X-Berth-Input-Location (s3:// or file://)"
        )
    return AsyncRequest(
        inference_id=inference_id or new_id(),
        client_id=inference_id is not None,
        input_location=location,
        ttl_seconds=_seconds(seen, b"x-berth-request-ttl-seconds", DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS),
        timeout_seconds=_seconds(
            seen,
            b"x-berth-invocation-timeout-seconds",
            DEFAULT_INVOCATION_TIMEOUT_SECONDS,
            MAX_INVOCATION_TIMEOUT_SECONDS,
        ),
        target_variant=seen.get(b"x-berth-target-variant"),
        content_type=seen.get(b"content-type") or "application/json",
        accept=seen.get(b"accept", ""),
        content_length=length,
        has_body=has_body,
    )


def _seconds(seen: dict[bytes, str], header: bytes, default: int, most: int) -> int:
    text = seen.get(header)
    if text is None:
        return default
    name = "-".join(part.capitalize() for part in header.decode().split("-")).replace("Ttl", "TTL")
    if not text.strip().isdigit() or not 1 <= int(text) <= most:
        raise HTTPError(400, f"{name} must be a whole number of seconds from 1 to {most}, not {text!r}")
    return int(text)


class FrontDoor:
    """The ASGI app. `routes` is the watched routes file; `client` talks to Redis."""

    def __init__(self, routes: RoutesFile, client: aioredis.Redis, max_payload_bytes: int) -> None:
        self.routes = routes
        self.client = client
        self.enqueuer = queue.Enqueuer(client)
        self.storage = StorageCalls()
        self.max_payload_bytes = max_payload_bytes
        self.draining = False
        self.registry = CollectorRegistry()
        self.enqueued = Counter(
            ENQUEUED_METRIC,
            "Async invocations queued, by variant and endpoint config.",
            ["variant", "endpoint_config"],
            registry=self.registry,
        )
        self._snapshot: list[tuple[RouteVariant, queue.Backlog]] | None = None
        self.registry.register(_BacklogExporter(self))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            if path == PATH:
                if method != "POST":
                    raise HTTPError(405, f"use POST for {PATH}")
                await self._invoke(scope, receive, send)
            elif path.startswith(PATH + "/"):
                if method not in ("GET", "HEAD"):
                    raise HTTPError(405, f"use GET for {PATH}/ID")
                await self._status(path[len(PATH) + 1 :], send)
            elif path == "/ping":
                if self.draining:
                    raise HTTPError(503, "the front door is shutting down", retry_after=1)
                if self.routes.routes is None:
                    raise HTTPError(503, self.routes.problem, retry_after=1)
                await _respond(send, 200, b'{"status":"ok"}')
            elif path == "/metrics":
                await self._metrics(send)
            else:
                raise HTTPError(404, f"no route {path}; this front door serves POST {PATH} and GET {PATH}/ID")
        except HTTPError as error:
            await _error(send, error)
        except RequestGone:
            pass
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as error:
            log.warning("redis unavailable", extra={"fields": {"error": str(error)}})
            await _error(send, _unavailable("the queue"))
        except redis.exceptions.RedisError as error:
            log.error("redis refused a command", extra={"fields": {"error": str(error)}})
            await _error(send, _unavailable("the queue"))

    # --- POST /async-invocations ---------------------------------------------------------
    async def _invoke(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.draining:
            raise HTTPError(503, "the front door is shutting down", retry_after=1)
        request = read_request(scope["headers"], lambda: uuid.uuid4().hex)
        routes = self.routes.routes
        if routes is None:
            raise HTTPError(503, self.routes.problem, retry_after=1)
        try:
            variant = choose(routes, request.target_variant)
        except NoRoute as error:
            raise HTTPError(
                error.status, error.message, retry_after=1 if error.status == 503 else None
            ) from None
        limit = self.max_payload_bytes
        if request.content_length is not None and request.content_length > limit:
            raise HTTPError(413, f"payload of {request.content_length} bytes is over the limit of {limit} bytes; "
                            "put larger inputs in storage and name them in X-Berth-Input-Location")  # fmt: skip
        record_key = inference_key(routes.namespace, routes.endpoint, request.inference_id)
        if request.client_id:  # a new id cannot have a record: one round trip saved
            existing = await queue.read_record(self.client, record_key)
            if existing is not None:  # answered before its body is read or staged again
                await self._accepted(send, request.inference_id, existing)
                return
        output = object_under(variant.output_uri, f"{request.inference_id}.out")
        failure = object_under(variant.failure_uri, f"{request.inference_id}-error.out")
        if request.input_location is None:
            body = await _read_body(receive, limit)
            if not body:
                raise HTTPError(400, "no input: the request body is empty")
            input_uri = object_under(variant.output_uri, f"inputs/{request.inference_id}.in")
            try:
                await self.storage.write_bytes(input_uri, body)
            except StorageError as error:
                log.error("cannot stage input", extra={"fields": {"error": str(error)}})
                raise _unavailable(f"staging the input ({error})") from None
            del body
        else:
            input_uri = request.input_location
        now = time.time()
        record = {
            queue.R_STATE: queue.QUEUED,
            queue.R_OUTPUT: output,
            queue.R_FAILURE: failure,
            queue.R_VARIANT: variant.variant_name,
            queue.R_CONFIG: variant.endpoint_config_name,
            queue.R_UPDATED_AT: f"{now:.3f}",
        }
        message = {
            queue.F_ID: request.inference_id,
            queue.F_RECORD: record_key,
            queue.F_INPUT: input_uri,
            queue.F_CONTENT_TYPE: request.content_type,
            queue.F_ACCEPT: request.accept,
            queue.F_ENQUEUED_AT: f"{now:.3f}",
            queue.F_EXPIRES_AT: f"{now + request.ttl_seconds:.3f}",
            queue.F_TIMEOUT: request.timeout_seconds,
            queue.F_OUTPUT_URI: output,
            queue.F_FAILURE_URI: failure,
            queue.F_STAGED: "0" if request.input_location else "1",
        }
        expire = request.ttl_seconds + queue.RECORD_RETENTION_SECONDS
        first = await self.enqueuer.enqueue(variant.stream, record_key, record, message, expire)
        if first is None:
            self.enqueued.labels(variant.variant_name, variant.endpoint_config_name).inc()
        await self._accepted(send, request.inference_id, first or record)

    async def _accepted(self, send: Send, inference_id: str, record: dict[str, str]) -> None:
        body = orjson.dumps(
            {
                "inferenceId": inference_id,
                "outputLocation": record.get(queue.R_OUTPUT, ""),
                "failureLocation": record.get(queue.R_FAILURE, ""),
            }
        )
        await _respond(send, 202, body, _answer_headers(inference_id, record))

    # --- GET /async-invocations/ID -------------------------------------------------------
    async def _status(self, inference_id: str, send: Send) -> None:
        if not INFERENCE_ID.fullmatch(inference_id):
            raise HTTPError(400, "an inference id is 1 to 128 characters of A-Z a-z 0-9 . _ -")
        routes = self.routes.routes
        if routes is None:
            raise HTTPError(503, self.routes.problem, retry_after=1)
        record = await queue.read_record(
            self.client, inference_key(routes.namespace, routes.endpoint, inference_id)
        )
        if record is None:
            raise HTTPError(
                404, f"no async inference {inference_id!r} on endpoint {routes.endpoint} (or it has expired)"
            )
        body = orjson.dumps(
            {
                "inferenceId": inference_id,
                "state": record.get(queue.R_STATE, ""),
                "reason": record.get(queue.R_REASON, ""),
                "outputLocation": record.get(queue.R_OUTPUT, ""),
                "failureLocation": record.get(queue.R_FAILURE, ""),
                "variant": record.get(queue.R_VARIANT, ""),
                "endpointConfig": record.get(queue.R_CONFIG, ""),
                "updatedAt": float(record.get(queue.R_UPDATED_AT) or 0),
            }
        )
        await _respond(send, 200, body, _answer_headers(inference_id, record))

    # --- GET /metrics ----------------------------------------------------------------------
    async def _metrics(self, send: Send) -> None:
        routes = self.routes.routes
        snapshot: list[tuple[RouteVariant, queue.Backlog]] | None = []
        if routes is not None:
            now = time.time()
            try:
                backlogs = await asyncio.gather(
                    *(queue.read_backlog(self.client, variant.stream, now) for variant in routes.variants)
                )
                snapshot = list(zip(routes.variants, backlogs, strict=True))
            except (redis.exceptions.RedisError, OSError):
                snapshot = None
        self._snapshot = snapshot
        body = generate_latest(self.registry)  # the collector reads the snapshot just taken
        await _respond(send, 200, body, (), b"text/plain; version=0.0.4; charset=utf-8")

    def backlog_families(self) -> Iterator[Metric]:
        snapshot = self._snapshot
        up = GaugeMetricFamily(QUEUE_UP_METRIC, "1 when the last scrape could read Redis.")
        up.add_metric([], 0.0 if snapshot is None else 1.0)
        yield up
        labels = ["variant", "endpoint_config"]
        size = GaugeMetricFamily(BACKLOG_METRIC, "Messages queued or in flight, per variant.", labels=labels)
        pending = GaugeMetricFamily(BACKLOG_PENDING_METRIC, "Messages a worker is answering.", labels=labels)
        oldest = GaugeMetricFamily(OLDEST_AGE_METRIC, "Age of the oldest message, seconds.", labels=labels)
        for variant, backlog in snapshot or []:
            values = [variant.variant_name, variant.endpoint_config_name]
            size.add_metric(values, backlog.size)
            pending.add_metric(values, backlog.pending)
            oldest.add_metric(values, backlog.oldest_age_seconds)
        yield from (size, pending, oldest)


class _BacklogExporter:
    def __init__(self, door: FrontDoor) -> None:
        self._door = door

    def collect(self) -> Iterator[Metric]:
        return self._door.backlog_families()


def _answer_headers(inference_id: str, record: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-berth-inference-id", inference_id.encode()),
        (b"x-berth-variant", record.get(queue.R_VARIANT, "").encode()),
        (b"x-berth-endpoint-config", record.get(queue.R_CONFIG, "").encode()),
    ]


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"payload is over the limit of {limit} bytes; put larger inputs in storage "
                            "and name them in X-Berth-Input-Location")  # fmt: skip
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    extra: list[tuple[bytes, bytes]] | tuple[()] = (),
    content_type: bytes = _JSON,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, error: HTTPError) -> None:
    if error.code >= 500:
        log.info("request refused", extra={"fields": {"code": error.code, "error": error.message}})
    await _respond(send, error.code, error_body(error, False), error_headers(error))

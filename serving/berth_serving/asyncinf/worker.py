"""The async worker beside one replica (`berth async-worker`, a sidecar of the serving pod).

It takes at most `max_concurrency` messages of its variant's stream at once, calls the
replica's /invocations with each one's input streamed from storage, writes the answer to the
message's output object (or `{"reason", "code"}` to its failure object) atomically, and only
then acknowledges it. While a message runs its id is re-claimed every few seconds
(heartbeat), so other workers take over only the messages of a worker that died; a message
delivered more than `max_attempts` times goes to the failure path.

SIGTERM: no new message is taken, the ones in flight finish, the process exits 0 (the kubelet's
SIGKILL at the end of the pod's grace leaves the rest pending: another worker redelivers them).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import signal
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import httpx
import orjson
import redis.exceptions
from prometheus_client import CollectorRegistry, Counter, Gauge

from berth_serving.asyncinf import queue
from berth_serving.asyncinf.notify import Notifier, RetryPolicy, cloud_event
from berth_serving.asyncinf.replica_client import ReplicaClient, ReplicaProtocolError, ReplicaUnreachable
from berth_serving.asyncinf.storage import (
    MAX_INPUT_BYTES,
    LocationError,
    StorageCalls,
    StorageError,
    check_location,
    open_input,
)
from berth_serving.storage import open_output, parse_uri

log = logging.getLogger("berth.async.worker")

# Metric names, spelled once.
OUTCOMES_METRIC = "berth_async_outcomes"  # berth_async_outcomes_total{variant,outcome,reason}
INFLIGHT_METRIC = "berth_async_inflight"
NOTIFICATION_FAILURES_METRIC = "berth_async_notification_failures"  # ..._total{variant}

# The reason label of a failure: a few classes, so the metric stays bounded whatever the
# models say (the whole reason is in the failure object and the record).
REASON_MODEL = "model_error"
REASON_TIMEOUT = "timeout"
REASON_EXPIRED = "expired"
REASON_INPUT = "input"
REASON_WORKER_DIED = "worker_died"
REASON_STORAGE = "storage"
REASON_MALFORMED = "malformed"

# How long a blocking read waits for a message before the loop looks around again (stop
# requested, reclaim due); a new message ends the wait at once.
READ_BLOCK_MS = 1000
REDIS_RETRY_SECONDS = 1.0
PING_INTERVAL_SECONDS = 0.5
ERROR_MESSAGE_CHARS = 2000
ERROR_BODY_BYTES = 64 * 1024
WRITE_BYTES = 1024 * 1024  # pieces of an answer handed to the storage writer
# Inputs up to this size are read whole and sent on the kept-alive loopback client, their
# answers held whole; larger ones are streamed both ways (httpx), never held in memory.
IN_MEMORY_INPUT_BYTES = 8 * 1024 * 1024
# How long a model server gets to answer a request's head alone (early_refusal).
EARLY_ANSWER_SECONDS = 3.0


@dataclass(frozen=True)
class WorkerOptions:
    redis_url: str
    stream: str
    consumer: str
    invoke_url: str
    max_concurrency: int
    variant: str
    endpoint_config: str
    success_webhook: str = ""
    error_webhook: str = ""
    max_attempts: int = 3
    claim_idle_seconds: float = 60.0
    metrics_port: int = 9091
    metrics_host: str = "0.0.0.0"

    @property
    def ping_url(self) -> str:
        parts = urllib.parse.urlsplit(self.invoke_url)
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/ping", "", ""))

    @property
    def heartbeat_seconds(self) -> float:
        """Well inside claim_idle_seconds: a live worker's messages never look idle."""
        return max(0.2, min(5.0, self.claim_idle_seconds / 4))

    @property
    def reclaim_every_seconds(self) -> float:
        return max(0.5, min(30.0, self.claim_idle_seconds / 2))


@dataclass(frozen=True)
class Result:
    outcome: str  # succeeded, failed, expired
    reason: str = ""
    reason_class: str = ""
    code: int = 200


class ModelUnreachable(Exception):
    """The replica did not take the call: the message is left for redelivery, not failed."""


class WorkerMetrics:
    def __init__(self, variant: str, inflight: Any) -> None:
        self.variant = variant
        self.registry = CollectorRegistry()
        self.outcomes = Counter(
            OUTCOMES_METRIC,
            "Async inferences answered by this worker, by outcome (succeeded, failed, expired, "
            "redelivered) and failure reason class.",
            ["variant", "outcome", "reason"],
            registry=self.registry,
        )
        gauge = Gauge(
            INFLIGHT_METRIC, "Messages this worker is answering.", ["variant"], registry=self.registry
        )
        gauge.labels(variant).set_function(inflight)
        self.notification_failures = Counter(
            NOTIFICATION_FAILURES_METRIC,
            "Webhook notifications dropped after their last retry.",
            ["variant"],
            registry=self.registry,
        )
        self.notification_failures.labels(variant)

    def outcome(self, outcome: str, reason: str = "") -> None:
        self.outcomes.labels(self.variant, outcome, reason).inc()


class Worker:
    def __init__(self, options: WorkerOptions, notify_policy: RetryPolicy | None = None) -> None:
        self.options = options
        self.inflight: dict[str, queue.Delivery] = {}
        self.metrics = WorkerMetrics(options.variant, lambda: len(self.inflight))
        self._notify_policy = notify_policy
        self._stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._model_up = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._redis_down_since: float | None = None

    def stop(self) -> None:
        if not self._stopping.is_set():
            log.info(
                "stopping: finishing messages in flight", extra={"fields": {"inflight": len(self.inflight)}}
            )
        self._stopping.set()
        self._slot_freed.set()
        self._model_up.set()

    # --- the loop -----------------------------------------------------------------------
    async def run(self) -> int:
        options = self.options
        # Storage calls wait on the disk or the network, not the CPU: one thread for each
        # message in flight (asyncio's default of cores + 4 made the queue wait for threads).
        asyncio.get_running_loop().set_default_executor(
            concurrent.futures.ThreadPoolExecutor(options.max_concurrency + 2, thread_name_prefix="storage")
        )
        # A connection for each message in flight, the blocking read and the heartbeat.
        self.client = queue.connect(options.redis_url, max_connections=options.max_concurrency + 4)
        self.acks = queue.Acknowledger(self.client)
        self.storage = StorageCalls()
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0))
        self.replica = ReplicaClient(options.invoke_url, options.max_concurrency)
        self.notifier = Notifier(
            self._notify_policy, on_dropped=self.metrics.notification_failures.labels(options.variant).inc
        )
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            await self._wait_for_model()
            await self._with_redis(lambda: queue.ensure_group(self.client, options.stream))
            log.info(
                "taking messages",
                extra={"fields": {"stream": options.stream, "max_concurrency": options.max_concurrency}},
            )
            await self._take_messages()
            if self._tasks:
                await asyncio.wait(set(self._tasks))
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self.notifier.aclose()
            await self.http.aclose()
            await self.replica.close()
            await self.client.aclose()
        return 0

    async def _take_messages(self) -> None:
        options = self.options
        loop = asyncio.get_running_loop()
        next_reclaim = 0.0
        while not self._stopping.is_set():
            free = options.max_concurrency - len(self.inflight)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            if not self._model_up.is_set():
                await self._wait_for_model()
                continue
            try:
                deliveries: list[queue.Delivery] = []
                if loop.time() >= next_reclaim:
                    deliveries = await queue.reclaim(
                        self.client, options.stream, options.consumer, options.claim_idle_seconds, free
                    )
                    next_reclaim = loop.time() + options.reclaim_every_seconds
                    retried = sum(1 for d in deliveries if d.deliveries <= options.max_attempts)
                    if retried:
                        await queue.count(self.client, options.stream, "redelivered", retried)
                        for _ in range(retried):
                            self.metrics.outcome("redelivered")
                if not deliveries:
                    deliveries = await queue.read_new(
                        self.client, options.stream, options.consumer, free, READ_BLOCK_MS
                    )
                self._redis_back()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as error:
                self._redis_lost(error)
                await self._sleep(REDIS_RETRY_SECONDS)
                continue
            await self._mark_running(deliveries)
            for delivery in deliveries:
                self.inflight[delivery.message_id] = delivery
                task = asyncio.create_task(self._answer(delivery))
                self._tasks.add(task)
                task.add_done_callback(self._done)

    async def _mark_running(self, deliveries: list[queue.Delivery]) -> None:
        """Running, on the records of the messages about to be called: one round trip for all
        that one read brought (a round trip per message was a tenth of the worker's CPU)."""
        marks = [
            (delivery.fields[queue.F_RECORD], self._running_fields(delivery))
            for delivery in deliveries
            if delivery.fields.get(queue.F_RECORD)
            and delivery.deliveries <= self.options.max_attempts
            and malformed(delivery.fields) is None
            and not _expired(delivery.fields)
        ]
        if marks:
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                await queue.mark_running_many(self.client, marks)

    @staticmethod
    def _running_fields(delivery: queue.Delivery) -> dict[str, Any]:
        return {
            queue.R_STATE: queue.RUNNING,
            queue.R_UPDATED_AT: _now(),
            queue.R_ATTEMPTS: delivery.deliveries,
        }

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("message handling failed", exc_info=task.exception())

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _wait_for_model(self) -> None:
        """Until the replica's /ping is 200 (or a stop)."""
        url = self.options.ping_url
        said = False
        while not self._stopping.is_set():
            try:
                if (await self.http.get(url, timeout=5.0)).status_code == 200:
                    self._model_up.set()
                    return
            except httpx.HTTPError:
                pass
            if not said:
                log.info("waiting for the model server", extra={"fields": {"ping": url}})
                said = True
            await self._sleep(PING_INTERVAL_SECONDS)

    async def _with_redis(self, call: Any) -> None:
        while not self._stopping.is_set():
            try:
                await call()
                self._redis_back()
                return
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as error:
                self._redis_lost(error)
                await self._sleep(REDIS_RETRY_SECONDS)

    def _redis_lost(self, error: Exception) -> None:
        if self._redis_down_since is None:
            self._redis_down_since = time.monotonic()
            log.warning("redis unavailable; retrying", extra={"fields": {"error": str(error)}})

    def _redis_back(self) -> None:
        if self._redis_down_since is not None:
            log.info(
                "redis back",
                extra={"fields": {"after_s": round(time.monotonic() - self._redis_down_since, 1)}},
            )
            self._redis_down_since = None

    async def _heartbeat(self) -> None:
        options = self.options
        while True:
            await asyncio.sleep(options.heartbeat_seconds)
            ids = list(self.inflight)
            if not ids:
                continue
            try:
                await queue.heartbeat(self.client, options.stream, options.consumer, ids)
            except (redis.exceptions.RedisError, OSError) as error:
                log.warning("heartbeat failed", extra={"fields": {"error": str(error)}})

    # --- one message ----------------------------------------------------------------------
    async def _answer(self, delivery: queue.Delivery) -> None:
        try:
            await self._answer_one(delivery)
        finally:
            self.inflight.pop(delivery.message_id, None)

    async def _answer_one(self, delivery: queue.Delivery) -> None:
        options = self.options
        fields = delivery.fields
        inference_id = fields.get(queue.F_ID, delivery.message_id)
        problem = malformed(fields)
        if problem is not None:
            # Nothing to call and nowhere sure to write: acknowledged as failed so it cannot loop.
            log.error(
                "malformed message dropped", extra={"fields": {"id": delivery.message_id, "error": problem}}
            )
            dropped = {queue.R_STATE: queue.FAILED, queue.R_REASON: problem, queue.R_UPDATED_AT: _now()}
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                if await self.acks.finish(queue.Finish(options.stream, delivery, "failed", dropped)):
                    self.metrics.outcome("failed", REASON_MALFORMED)
            return
        if delivery.deliveries > options.max_attempts:
            attempts = delivery.deliveries - 1
            result = Result(
                "failed", f"gave up after {attempts} attempts: worker died", REASON_WORKER_DIED, 500
            )
        elif _expired(fields):
            result = Result("expired", _expiry_reason(fields), REASON_EXPIRED, 410)
        else:
            try:
                result = await self._invoke(fields, inference_id)
            except ModelUnreachable as error:
                # Not the message's fault: leave it pending (redelivered after claim-idle), and
                # take no more until the replica answers /ping again.
                log.warning("model server unreachable", extra={"fields": {"error": str(error)}})
                self._model_up.clear()
                return
        record: dict[str, Any] = {
            queue.R_STATE: queue.SUCCEEDED,
            queue.R_REASON: "",
            queue.R_UPDATED_AT: _now(),
        }
        if result.outcome != "succeeded":
            record[queue.R_STATE] = queue.FAILED
            record[queue.R_REASON] = result.reason
            failure = orjson.dumps({"reason": result.reason, "code": result.code})
            try:
                await self.storage.write_bytes(fields[queue.F_FAILURE_URI], failure)
            except (StorageError, KeyError) as error:
                log.error(
                    "cannot write failure object; left for redelivery",
                    extra={"fields": {"error": str(error)}},
                )
                return
        try:
            done = await self.acks.finish(queue.Finish(options.stream, delivery, result.outcome, record))
        except (redis.exceptions.RedisError, OSError) as error:
            log.warning("cannot acknowledge; redelivered later", extra={"fields": {"error": str(error)}})
            return
        if not done:
            return  # another worker answered it meanwhile: its outcome is the one counted
        self.metrics.outcome(result.outcome, result.reason_class)
        # Every outcome is in the record, the counters and the metrics; a line per success would
        # be a log line per request at thousands per second. Failures are worth one each.
        log.log(
            logging.DEBUG if result.outcome == "succeeded" else logging.INFO,
            "answered",
            extra={"fields": {"id": inference_id, "outcome": result.outcome, "reason": result.reason}},
        )
        self._notify(fields, inference_id, result)

    def _notify(self, fields: dict[str, str], inference_id: str, result: Result) -> None:
        succeeded = result.outcome == "succeeded"
        url = self.options.success_webhook if succeeded else self.options.error_webhook
        if not url:
            return
        location = fields.get(queue.F_OUTPUT_URI if succeeded else queue.F_FAILURE_URI, "")
        source = f"berth/{self.options.endpoint_config}/{self.options.variant}"
        event = cloud_event(
            succeeded=succeeded,
            source=source,
            inference_id=inference_id,
            location=location,
            reason=result.reason,
        )
        self.notifier.send(url, event)

    async def _invoke_small(
        self, body: bytes, headers: dict[str, str], timeout: float, output_uri: str
    ) -> Result:
        """A small input: read whole, sent on a kept-alive loopback connection, its answer
        held and written whole (the per-call cost is what bounds a queue of small requests)."""
        try:
            async with asyncio.timeout(timeout):
                answer = await self.replica.post(headers, body, len(body))
        except TimeoutError:
            return Result("failed", f"timed out after {timeout:g} s", REASON_TIMEOUT, 504)
        except ReplicaUnreachable as error:
            raise ModelUnreachable(str(error)) from None
        except (ReplicaProtocolError, OSError) as error:
            return Result("failed", f"invocation failed: {error}", REASON_MODEL, 502)
        if answer.status >= 300:
            message = _error_message(answer.body)
            return Result("failed", f"model answered {answer.status}: {message}", REASON_MODEL, answer.status)
        try:
            await self.storage.write_bytes(output_uri, answer.body)
        except StorageError as error:
            return Result("failed", f"cannot write the answer: {error}", REASON_STORAGE, 502)
        return Result("succeeded")

    async def _invoke(self, fields: dict[str, str], inference_id: str) -> Result:
        try:
            where = check_location(fields.get(queue.F_INPUT, ""), "input")
            # One trip off the loop for the size and, when small, the whole input.
            size, small_body = await self.storage.read_if_small(where, IN_MEMORY_INPUT_BYTES)
        except (LocationError, StorageError) as error:
            return Result("failed", str(error), REASON_INPUT, 400)
        if size > MAX_INPUT_BYTES:
            return Result(
                "failed",
                f"input of {size} bytes is over the limit of {MAX_INPUT_BYTES} bytes",
                REASON_INPUT,
                413,
            )
        timeout = float(fields.get(queue.F_TIMEOUT) or 900)
        headers = {
            "content-type": fields.get(queue.F_CONTENT_TYPE) or "application/json",
            "content-length": str(size),
            "x-berth-inference-id": inference_id,
        }
        if fields.get(queue.F_ACCEPT):
            headers["accept"] = fields[queue.F_ACCEPT]
        if small_body is not None:
            headers["content-length"] = str(len(small_body))
            return await self._invoke_small(small_body, headers, timeout, fields[queue.F_OUTPUT_URI])
        try:
            stream = await asyncio.to_thread(open_input, where)
        except StorageError as error:
            return Result("failed", str(error), REASON_INPUT, 400)
        output_uri = fields.get(queue.F_OUTPUT_URI, "")
        try:
            async with (
                asyncio.timeout(timeout),
                self.http.stream(
                    "POST", self.options.invoke_url, content=_read(stream), headers=headers
                ) as answer,
            ):
                if answer.status_code >= 300:
                    message = _error_message(await _read_some(answer, ERROR_BODY_BYTES))
                    status = answer.status_code
                    return Result("failed", f"model answered {status}: {message}", REASON_MODEL, status)
                await _write_answer(answer, output_uri)
        except TimeoutError:
            return Result("failed", f"timed out after {timeout:g} s", REASON_TIMEOUT, 504)
        except AnswerNotWritten as error:
            return Result("failed", f"cannot write the answer: {error}", REASON_STORAGE, 502)
        except httpx.ConnectError as error:
            raise ModelUnreachable(str(error) or type(error).__name__) from None
        except (httpx.HTTPError, StorageError) as error:
            refusal = None
            if isinstance(error, httpx.TransportError):
                refusal = await early_refusal(self.options.invoke_url, headers)
            if refusal is not None:
                status, message = refusal
                return Result("failed", f"model answered {status}: {message}", REASON_MODEL, status)
            text = str(error) or type(error).__name__
            return Result("failed", f"invocation failed: {text}", REASON_MODEL, 502)
        finally:
            await asyncio.to_thread(stream.close)
        return Result("succeeded")


async def early_refusal(url: str, headers: dict[str, str]) -> tuple[int, str] | None:
    """The answer the model server gives to the request's head alone, if it gives one within
    EARLY_ANSWER_SECONDS: (status, message). A replica refuses a body over its payload limit
    from the Content-Length and closes the connection while the body is still being sent;
    the reset that follows can lose that answer, so the head is sent again, with no body, to
    hear it. None when the server waits for the body (it was not refused by its size)."""
    parts = urllib.parse.urlsplit(url)
    lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer = None
    try:
        async with asyncio.timeout(EARLY_ANSWER_SECONDS):
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split()[1])
            length = 0
            for line in header_lines:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = await reader.readexactly(min(length, 64 * 1024))
    except (TimeoutError, OSError, ValueError, IndexError, asyncio.IncompleteReadError):
        return None
    finally:
        if writer is not None:
            writer.close()
    return (status, _error_message(body)) if status >= 400 else None


class AnswerNotWritten(Exception):
    """The model answered but its answer could not be stored; the message names the URI."""


async def _write_answer(answer: httpx.Response, uri: str) -> None:
    """Stream the answer into its object, atomically: written in WRITE_BYTES pieces off the
    event loop, visible only once whole (an answer of any size never sits in memory)."""
    try:
        writer = await asyncio.to_thread(open_output, parse_uri(uri), False)
    except StorageError as error:
        raise AnswerNotWritten(str(error)) from None
    try:
        pending = bytearray()
        async for chunk in answer.aiter_bytes():
            pending += chunk
            if len(pending) >= WRITE_BYTES:
                await asyncio.to_thread(writer.write, bytes(pending))
                pending.clear()
        if pending:
            await asyncio.to_thread(writer.write, bytes(pending))
        await asyncio.to_thread(writer.commit)
    except StorageError as error:
        await asyncio.to_thread(writer.abort)
        raise AnswerNotWritten(str(error)) from None
    except BaseException:
        await asyncio.to_thread(writer.abort)
        raise


async def _read_some(answer: httpx.Response, most: int) -> bytes:
    """Up to `most` bytes of an answer's body (an error message; the rest is not read)."""
    body = bytearray()
    async for chunk in answer.aiter_bytes():
        body += chunk
        if len(body) >= most:
            break
    return bytes(body[:most])


async def _read(stream: BinaryIO) -> AsyncIterator[bytes]:
    """The input in chunks read off the event loop: a 1 GB input never sits in memory."""
    while True:
        data = await asyncio.to_thread(stream.read, 1024 * 1024)
        if not data:
            return
        yield data


def _now() -> str:
    return f"{time.time():.3f}"


_REQUIRED = (queue.F_ID, queue.F_INPUT, queue.F_OUTPUT_URI, queue.F_FAILURE_URI)
_NUMBERS = (queue.F_ENQUEUED_AT, queue.F_EXPIRES_AT, queue.F_TIMEOUT)


def malformed(fields: dict[str, str]) -> str | None:
    """Why a message cannot be answered at all (not written by a front door), or None."""
    missing = [name for name in _REQUIRED if not fields.get(name)]
    if missing:
        return f"malformed message: no {', '.join(missing)}"
    for name in _NUMBERS:
        value = fields.get(name)
        if value is not None:
            try:
                number = float(value)
            except ValueError:
                return f"malformed message: {name} is not a number: {value[:40]!r}"
            if number != number or number in (float("inf"), float("-inf")):
                return f"malformed message: {name} is not a finite number"
    return None


def _expired(fields: dict[str, str]) -> bool:
    expires = fields.get(queue.F_EXPIRES_AT)
    return bool(expires) and time.time() > float(expires)  # type: ignore[arg-type]


def _expiry_reason(fields: dict[str, str]) -> str:
    waited = time.time() - float(fields.get(queue.F_ENQUEUED_AT) or time.time())
    ttl = float(fields[queue.F_EXPIRES_AT]) - float(
        fields.get(queue.F_ENQUEUED_AT) or fields[queue.F_EXPIRES_AT]
    )
    return f"expired: waited {waited:.0f} s in the queue, past its TTL of {ttl:.0f} s"


def _error_message(body: bytes) -> str:
    """The model's `error.message` (or `error`), else its body as text; bounded."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
    else:
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict) and "message" in error:
            text = str(error["message"])
        elif isinstance(error, str):
            text = error
        else:
            text = body.decode("utf-8", "replace").strip()
    return text[:ERROR_MESSAGE_CHARS] or "(empty answer)"


def run(options: WorkerOptions) -> int:
    """Run until SIGTERM/SIGINT; the process exit code."""
    from prometheus_client import start_http_server

    async def main() -> int:
        worker = Worker(options)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        if options.metrics_port:
            start_http_server(options.metrics_port, options.metrics_host, registry=worker.metrics.registry)
        return await worker.run()

    import uvloop

    return uvloop.run(main())

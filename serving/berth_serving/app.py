"""The ASGI application of `berth serve`.

Hot routes (`/invocations`, v2 `infer`, `/ping`) are plain ASGI handlers: no routing
framework, no per-request objects beyond the job. The rest (v2 health and metadata,
`/metrics`) goes through a small FastAPI app (rest.py) that reads this app as a DataPlane.
Every answer carries `X-Berth-Variant` and, when set, `X-Berth-Endpoint-Config`; inference
answers carry `X-Berth-Inference-Id`.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path, PurePosixPath
from typing import Any

from berth_serving import codecs, tensors
from berth_serving.admission import ADMISSION_WAIT_SECONDS, BODY_BUDGET_PAYLOADS, BodyBudget
from berth_serving.capture import Capturer
from berth_serving.cgroup import resident_bytes
from berth_serving.config import ServeConfig
from berth_serving.errors import HTTPError, error_body, error_headers, not_ready
from berth_serving.loaded import LoadedModel, batch_delay_seconds, start_model
from berth_serving.metrics import Metrics
from berth_serving.multimodel.host import MultiModelHost
from berth_serving.multimodel.names import CACHE_HEADER, model_key
from berth_serving.multimodel.peers import FORWARDED_HEADER, RELAYED_ANSWER_HEADERS, Peers, parse_peers
from berth_serving.multimodel.rendezvous import SATURATED_BATCHES
from berth_serving.multimodel.routes import add_repository_routes, multi_model_exposition
from berth_serving.pipeline import FAILED_STAGE_HEADER, PipelineSession, StageFailed, load_pipeline
from berth_serving.rest import build_rest_app
from berth_serving.signature import Signature, SignatureError
from berth_serving.uuids import Uuid4s
from berth_serving.v2 import HEADER_LENGTH, InferRequest, model_metadata

log = logging.getLogger("berth.serving")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = b"application/json"
FORWARDED_KEY = FORWARDED_HEADER.lower().encode()
_CACHE_HIT = (CACHE_HEADER, b"hit")
_CACHE_MISS = (CACHE_HEADER, b"miss")


def peers_of(config: ServeConfig) -> Peers:
    """The variant's replicas as this one sees them; saturated at two full batches in flight."""
    me = f"{config.pod_ip}:{config.port}"
    return Peers(parse_peers(config.peers), me, saturated_inflight=SATURATED_BATCHES * config.max_batch_size)


_V2_PREFIX = "/v2/models/"


# An X-Berth-Inference-Id from a client: at most this long, printable ASCII only.
MAX_INFERENCE_ID_LENGTH = 256


def _v2_name(path: str) -> str | None:
    """The model a v2 infer path names, else None."""
    if not (path.startswith(_V2_PREFIX) and path.endswith("/infer")):
        return None
    return path[len(_V2_PREFIX) : -len("/infer")].split("/versions/", 1)[0]


class RequestHeaders:
    """The few request headers the inference routes read, in one pass."""

    __slots__ = (
        "accept",
        "content_length",
        "content_type",
        "inference_header_length",
        "inference_id",
        "output",
        "target_model",
        "target_variant",
    )

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.content_type = self.accept = b""
        self.content_length: int | None = None
        self.inference_header_length: int | None = None  # v2 binary tensor extension
        self.output: str | None = None  # X-Berth-Output: the tensor a CSV/NPY answer carries
        self.inference_id: bytes | None = None
        self.target_variant: bytes | None = None
        self.target_model: str | None = None  # multi-model endpoints
        for key, value in raw:
            if key == b"content-type":
                self.content_type = value
            elif key == b"accept":
                self.accept = value
            elif key == b"content-length":
                self.content_length = int(value) if value.isdigit() else None
            elif key[:8] == b"x-berth-":
                if key == b"x-berth-inference-id":
                    self.inference_id = value
                elif key == b"x-berth-output":
                    self.output = value.decode("latin-1")
                elif key == b"x-berth-target-variant":
                    self.target_variant = value
                elif key == b"x-berth-target-model":
                    self.target_model = value.decode("latin-1")
            elif key == b"x-amzn-sagemaker-target-model":
                self.target_model = value.decode("latin-1")
            elif key == b"inference-header-content-length":
                self.inference_header_length = int(value) if value.isdigit() else -1  # refused by v2


def valid_inference_id(value: bytes) -> bool:
    return 0 < len(value) <= MAX_INFERENCE_ID_LENGTH and value.isascii() and value.decode().isprintable()


class InferenceIds:
    """New X-Berth-Inference-Id values: uuid4 in hex. Event loop thread only."""

    __slots__ = ("_uuids",)

    def __init__(self) -> None:
        self._uuids = Uuid4s()

    def next(self) -> bytes:
        return self._uuids.hex().encode()


def target_variant_header(raw: list[tuple[bytes, bytes]]) -> bytes | None:
    for key, value in raw:
        if key == b"x-berth-target-variant":
            return value
    return None


class ClientGone(Exception):
    """The client disconnected before sending its whole body."""


PIPELINE_NAME = "pipeline"  # the v2 name of a pipeline with no --model-name


def initial_model_name(config: ServeConfig) -> str:
    """The v2 model name as far as it is known before loading (a URI naming a .onnx file)."""
    if config.model_name:
        return config.model_name
    if config.pipeline:
        return PIPELINE_NAME
    path = PurePosixPath(config.model_uri.split("?", 1)[0])
    return path.stem if path.suffix == ".onnx" else ""


class ServingApp:
    def __init__(self, config: ServeConfig, sha256: str | None = None) -> None:
        self.config = config
        self.sha256 = sha256
        self.variant = config.variant or "default"
        self.model: LoadedModel | None = None
        self.draining = False
        self.inflight = 0
        # Request tasks the HTTP server holds, started or not (set by server.Service): 1 means
        # no other request exists at all, and a fast model's call may then run at once.
        self.requests_in_server: Callable[[], int] | None = None
        self.exit_code = 0
        self.warming = bool(config.warmup_requests)  # /ping says ready only after the warm-ups
        # Data capture: None when off (the request path then does nothing more).
        self.capture = Capturer(config.capture) if config.capture is not None else None
        self.metrics = self._new_metrics(initial_model_name(config))
        # Headers every answer carries.
        self._static_headers: tuple[tuple[bytes, bytes], ...] = ((b"x-berth-variant", self.variant.encode()),)
        if config.endpoint_config:
            self._static_headers += ((b"x-berth-endpoint-config", config.endpoint_config.encode()),)
        self._variants = frozenset(name.encode() for name in config.endpoint_variants)
        self.body_budget = BodyBudget(BODY_BUDGET_PAYLOADS * config.max_payload_bytes)
        self._new_ids = InferenceIds()
        tensors.quiet_overflow_warnings()
        # Where remote models are fetched; created only when needed (a local model is used in place).
        self._scratch = Path(tempfile.gettempdir()) / f"berth-model-{uuid.uuid4().hex[:12]}"
        self._loop: asyncio.AbstractEventLoop | None = None
        # A multi-model endpoint: models come from this per request instead of self.model.
        self.models = MultiModelHost(config, self.variant, self._scratch) if config.multi_model else None
        self._models_started = False
        # Model affinity across the variant's replicas (a cluster; local mode's router does it).
        self.peers = peers_of(config) if config.multi_model and config.peers else None
        self._rest = build_rest_app(self)
        if self.models is not None:
            add_repository_routes(self._rest, self.models)

    def _new_metrics(self, model_name: str) -> Metrics:
        metrics = Metrics(self.variant, model_name)
        metrics.track_inflight(lambda: self.inflight)
        capture = self.capture
        if capture is not None:
            stats = capture.stats
            metrics.track_capture(lambda: (stats.written, dict(stats.dropped), capture.buffer.bytes))
        return metrics

    # --- lifecycle -------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        loaded = self.model is not None or self._models_started
        return loaded and not self.draining and not self.warming

    async def warm_up(self) -> str | None:
        """Answer the configured warm-up requests through /invocations, as a client's would be
        (codecs, batcher, the model's first-call costs), without counting them as invocations.
        None when each got a 2xx, else the first failure in one line."""
        requests = self.config.warmup_requests
        counted, self.metrics = self.metrics, self._new_metrics(self.metrics.model)
        started = time.perf_counter()
        try:
            for i, request in enumerate(requests, 1):
                status, body = await self._call_in_process(request.content_type, request.body.encode())
                if not 200 <= status < 300:
                    text = body.decode("utf-8", "replace").strip()[:300]
                    return f"warm-up request {i} of {len(requests)} answered {status}: {text}"
        finally:
            self.metrics = counted
        counted.warmup_seconds = time.perf_counter() - started
        self.warming = False
        return None

    async def _call_in_process(self, content_type: str, body: bytes) -> tuple[int, bytes]:
        scope: Scope = {
            "type": "http",
            "method": "POST",
            "path": "/invocations",
            "headers": [
                (b"content-type", content_type.encode("latin-1")),
                (b"content-length", str(len(body)).encode()),
            ],
        }
        sent = False
        status, chunks = 0, []

        async def receive() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self._inference(scope, receive, send, v2_name=None)
        return status, b"".join(chunks)

    async def load(self) -> None:
        """Fetch and load the model off the event loop; the server answers 503 meanwhile."""
        self._loop = asyncio.get_running_loop()
        if self.capture is not None:
            self.capture.start()
        if self.models is not None:
            if self.peers is not None:
                await self.peers.start()
            await self.models.start()
            self._models_started = True
            return
        started = time.perf_counter()
        twin = None
        if self.config.pipeline:
            session = await asyncio.to_thread(load_pipeline, self.config, self._scratch)
            path, signature = self._scratch, session.signature
        else:
            path, session, twin = await asyncio.to_thread(self._load_blocking, self._scratch)
            signature = await asyncio.to_thread(Signature.from_session, session, path)
        name = self.config.model_name or (PIPELINE_NAME if self.config.pipeline else path.stem)
        if name != initial_model_name(self.config):
            self.metrics = self._new_metrics(name)
        metrics = self.metrics
        if isinstance(session, PipelineSession):
            metrics.stages = [(stage.name, stage.latency) for stage in session.stages]
        names = tuple(dict.fromkeys((name, *self.config.model_aliases)))
        self.model = start_model(
            self.config, self._loop, name, path, session, signature, metrics, names, one_thread_twin=twin
        )
        batch_delay = batch_delay_seconds(self.config, session.get_providers())
        seconds = time.perf_counter() - started
        metrics.model_load_seconds = seconds
        log.info(
            "model loaded",
            extra={
                "fields": {
                    "model": name,
                    "path": str(path),
                    "seconds": round(seconds, 3),
                    "inputs": [spec.describe() for spec in signature.inputs],
                    "outputs": [spec.describe() for spec in signature.outputs],
                    "dynamic_batching": signature.batchable,
                    "batch_delay_ms": batch_delay * 1000,
                    "one_thread_twin": twin is not None,
                }
            },
        )

    def _load_blocking(self, scratch: Path) -> tuple[Path, Any, Any | None]:
        """The model's path, its session and the session's one-thread twin (or None)."""
        from berth_serving.fetch import resolve_model
        from berth_serving.session import load_one_thread_twin, load_session

        path = resolve_model(self.config.model_uri, scratch, self.sha256)
        optimization = self.config.graph_optimization_level
        before = resident_bytes()
        session = load_session(
            path,
            threads=self.config.intra_op_threads,
            optimization=optimization,
            providers=self.config.providers,
        )
        twin = load_one_thread_twin(path, session, optimization, grown_bytes=resident_bytes() - before)
        return path, session, twin

    async def aclose(self) -> None:
        if self.capture is not None:  # bounded (SHUTDOWN_SECONDS); off the event loop
            await asyncio.to_thread(self.capture.close)
        self.close()
        if self.peers is not None:
            await self.peers.close()

    def close(self) -> None:
        if self.capture is not None:
            self.capture.close()
        if self.model is not None:
            self.model.batcher.stop()
        if self.models is not None:
            self.models.close()
        shutil.rmtree(self._scratch, ignore_errors=True)

    # --- ASGI ------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path == "/invocations":
            if scope["method"] == "POST":
                await self._inference(scope, receive, send, v2_name=None)
            else:
                await self._error(send, HTTPError(405, "use POST for /invocations"), v2=False)
        elif path == "/ping":
            if self.ready:
                await self._respond(send, 200, b'{"status":"ok"}', _JSON)
            else:
                await self._error(send, self.unavailable(), v2=False)
        elif path.startswith(_V2_PREFIX) and path.endswith("/infer") and scope["method"] == "POST":
            await self._inference(scope, receive, send, v2_name=_v2_name(path))
        else:
            if path.startswith(_V2_PREFIX) and self._variants:
                wrong = self._wrong_variant(target_variant_header(scope["headers"]))
                if wrong is not None:
                    await self._error(send, wrong, v2=True)
                    return
            try:
                await self._rest(scope, receive, self._with_static_headers(send))
            except Exception:
                # The client already has a JSON 500 (rest.py); this is the one log line.
                log.exception("request failed", extra={"fields": {"path": path}})

    def _with_static_headers(self, send: Send) -> Send:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self._static_headers]
            await send(message)

        return send_with_headers

    def unavailable(self) -> HTTPError:
        if self.draining:
            return HTTPError(503, "server is shutting down", retry_after=1)
        return not_ready()

    def _wrong_variant(self, target: bytes | None) -> HTTPError | None:
        """X-Berth-Target-Variant naming none of the endpoint config's variants (routing to a
        listed one is the gateway's job: this replica serves whichever reached it)."""
        if target is None or not self._variants or target in self._variants:
            return None
        variants = ", ".join(self.config.endpoint_variants)
        where = f" in endpoint config {self.config.endpoint_config}" if self.config.endpoint_config else ""
        return HTTPError(400, f"no variant {target.decode('latin-1')!r}{where}; its variants are {variants}")

    def _target_model(self, headers: RequestHeaders, v2_name: str | None) -> str:
        """The model a multi-model request names: its v2 path, else X-Berth-Target-Model."""
        assert self.models is not None
        if v2_name is not None:
            return v2_name
        if headers.target_model is None:
            raise HTTPError(
                400,
                "a multi-model endpoint needs the model to run: set X-Berth-Target-Model (or"
                f" X-Amzn-SageMaker-Target-Model) to its path under {self.models.repository.prefix}",
            )
        return headers.target_model

    def _owner(self, requested: str, raw: list[tuple[bytes, bytes]]) -> str | None:
        """The peer that should serve this model's request, or None to serve it here: no
        peers, a request a peer already passed on (one hop at most), or this replica's turn."""
        if self.peers is None or self.models is None:
            return None
        if any(key == FORWARDED_KEY for key, _ in raw):
            return None
        key = model_key(requested)
        busy = self.models.inflight(key) >= self.peers.saturated_inflight
        first = self.peers.candidates(key, busy)[0]
        return None if first == self.peers.me else first

    async def _pass_on(
        self, peer: str, scope: Scope, body: bytes, send: Send, id_header: tuple[bytes, bytes]
    ) -> bool:
        """Relay the owner's answer; on its 503 try the model's second choice once. False
        when the request is to be served here (no peer reachable, or this is the second)."""
        assert self.peers is not None
        raw: list[tuple[bytes, bytes]] = scope["headers"]
        if not any(key == b"x-berth-inference-id" for key, _ in raw):
            raw = [*raw, id_header]  # the owner answers with this request's id
        path = scope["path"]
        key = model_key(self._target_model(RequestHeaders(raw), _v2_name(path)))
        answer = await self.peers.forward(peer, path, raw, body)
        if answer is not None and answer.status == 503:
            others = [p for p in self.peers.candidates(key, busy_here=False) if p != peer]
            if others and others[0] == self.peers.me:
                return False
            if others:
                answer = await self.peers.forward(others[0], path, raw, body) or answer
        if answer is None:
            return False
        headers = [
            (name.encode(), answer.headers[name].encode("latin-1"))
            for name in RELAYED_ANSWER_HEADERS
            if name in answer.headers
        ]
        await self._respond_raw(send, answer.status, answer.body, headers)
        return True

    async def _respond_raw(
        self, send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        headers = [(b"content-length", str(len(body)).encode()), *self._static_headers, *headers]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _unknown_model(self, name: str, model: LoadedModel) -> HTTPError:
        serves = ", ".join(map(repr, model.names))
        return HTTPError(404, f"unknown model {name!r}; this server serves {serves}")

    async def _inference(self, scope: Scope, receive: Receive, send: Send, v2_name: str | None) -> None:
        started = time.perf_counter()
        self.inflight += 1
        code = 200
        model_seconds = 0.0
        metrics = self.metrics
        reserved = 0
        headers = RequestHeaders(scope["headers"])
        client_id = headers.inference_id
        inference_id = client_id if client_id is not None and valid_inference_id(client_id) else None
        id_header = (b"x-berth-inference-id", inference_id or self._new_ids.next())
        extra: tuple[tuple[bytes, bytes], ...] = (id_header,)
        entry = None
        model: LoadedModel | None = None
        peer: str | None = None  # multi-model: the replica this request is passed on to
        try:
            if client_id is not None and inference_id is None:
                raise HTTPError(
                    400,
                    f"X-Berth-Inference-Id must be 1 to {MAX_INFERENCE_ID_LENGTH} printable ASCII characters",
                )
            if self.draining or (self.model is None and not self._models_started):
                raise self.unavailable()
            if headers.target_variant is not None:
                wrong = self._wrong_variant(headers.target_variant)
                if wrong is not None:
                    raise wrong
            if self.models is None:
                model = self.model
                assert model is not None
                if v2_name is not None and v2_name not in model.names:
                    raise self._unknown_model(v2_name, model)
            else:
                requested = self._target_model(headers, v2_name)
                peer = self._owner(requested, scope["headers"])
            kind = codecs.JSON
            carried = None
            # The answer's type is settled before anything is read or run (a JSON answer with
            # no X-Berth-Output, the usual case, needs no call). Multi-model: once the model is.
            settle = v2_name is None and (bool(headers.accept) or headers.output is not None)
            if settle and model is not None:
                kind = codecs.response_type(headers.accept)
                carried = codecs.carried_output(kind, headers.output, model.output_names)
            size = self._reservation(headers.content_length)
            if not self.body_budget.try_acquire(size):
                await self.body_budget.acquire(size, self._admission_wait(started))
            reserved = size
            body = await self._read_body(receive, headers.content_length)
            if self.models is not None:
                if peer is not None and await self._pass_on(peer, scope, body, send, id_header):
                    code = 0  # counted by the replica that served it, not twice
                    return
                entry = self.models.take_loaded(requested)
                hit = entry is not None
                if entry is None:
                    entry, hit = await self.models.acquire(requested)
                model, metrics = entry.model, self.models.metrics_for(entry.key)
                extra = (id_header, _CACHE_HIT if hit else _CACHE_MISS)
                assert model is not None
                if settle:
                    kind = codecs.response_type(headers.accept)
                    carried = codecs.carried_output(kind, headers.output, model.output_names)
            assert model is not None
            arrays, rows, request = self._decode(model, headers, body, v2_name)
            # Data capture: keep the body only for a sampled request (and the warm-ups are not captured).
            capture = self.capture
            if capture is not None and not self.warming and capture.sampled(id_header[1]):
                captured = body
            else:
                capture = captured = None
            del body
            outputs, model_seconds = await self._run(model, arrays, rows, started)
            del arrays
            named = dict(zip(model.output_names, outputs, strict=True))
            if request is None:
                answer, answer_type = codecs.encode(named, kind, carried), kind.encode()
                await self._respond(send, 200, answer, answer_type, extra)
            else:
                answer, json_length = request.encode(v2_name or model.name, named)
                if json_length is None:
                    answer_type = _JSON
                    await self._respond(send, 200, answer, answer_type, extra)
                else:
                    answer_type = b"application/octet-stream"
                    binary = (*extra, (HEADER_LENGTH.encode(), str(json_length).encode()))
                    await self._respond(send, 200, answer, answer_type, binary)
            if capture is not None:
                capture.offer(id_header[1], headers.content_type, captured, answer_type, answer)
        except HTTPError as error:
            code = error.code
            await self._error(send, error, v2_name is not None, id_header)
        except SignatureError as error:
            code = 400
            await self._error(send, HTTPError(400, str(error)), v2_name is not None, id_header)
        except StageFailed as error:
            code = error.code
            failed = (FAILED_STAGE_HEADER, error.stage.encode("latin-1", "replace"))
            await self._error(send, HTTPError(code, error.message), v2_name is not None, id_header, failed)
        except ClientGone:
            code = 499
        except Exception as error:
            code, public = self._classify(error, model)
            await self._error(send, HTTPError(code, public), v2_name is not None, id_header)
        finally:
            if entry is not None and self.models is not None:
                self.models.release(entry)
            if reserved:
                self.body_budget.release(reserved)
            self.inflight -= 1
            if code:
                metrics.count(code)
            if code == 200:
                metrics.model_latency.observe(model_seconds)
                metrics.overhead_latency.observe(time.perf_counter() - started - model_seconds)

    def _reservation(self, content_length: int | None) -> int:
        """The bytes a request holds in the body budget: its declared length, or the payload
        limit for a chunked body. Over the limit is a 413 at once."""
        limit = self.config.max_payload_bytes
        if content_length is None:
            return limit
        if content_length > limit:
            raise HTTPError(413, f"payload of {content_length} bytes is over the limit of {limit} bytes")
        return content_length

    def _admission_wait(self, started: float) -> float:
        remaining = self.config.timeout_seconds - (time.perf_counter() - started)
        return min(ADMISSION_WAIT_SECONDS, remaining)

    @staticmethod
    def _decode(
        model: LoadedModel, headers: RequestHeaders, body: bytes, v2_name: str | None
    ) -> tuple[dict[str, Any], int, InferRequest | None]:
        """Body -> the model's arrays. The body and the decoded values (Python lists, several
        times the body's size for JSON) are dropped on return, before the model runs."""
        if v2_name is None:
            values = codecs.decode(codecs.media_type(headers.content_type), body, model.signature)
            arrays, rows = model.signature.prepare(values)
            return arrays, rows, None
        request = InferRequest(body, headers.inference_header_length)
        request.check_outputs(model.output_names)
        arrays, rows = model.signature.prepare(request.take_inputs())
        return arrays, rows, request

    def _classify(self, error: Exception, model: LoadedModel | None) -> tuple[int, str]:
        """ONNX Runtime's InvalidArgument is the client's input; anything else is ours (logged once)."""
        if type(error).__name__ == "InvalidArgument":
            first_line = str(error).splitlines()[0] if str(error) else "invalid input"
            message = f"model rejected the input: {first_line}"
            if model is not None:
                message += f"; {model.signature.expected()}"
            return 400, message
        log.error("inference failed", exc_info=error)
        return 500, f"internal error ({type(error).__name__}); see the server log"

    async def _read_body(self, receive: Receive, length: int | None) -> bytes:
        """The request body, refusing (413) past the payload limit without buffering it all:
        the declared Content-Length is checked first (_reservation), then the bytes as they
        stream in."""
        limit = self.config.max_payload_bytes
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"payload is over the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _run(
        self, model: LoadedModel, arrays: dict[str, Any], rows: int, started: float
    ) -> tuple[Any, float]:
        batcher = model.batcher
        if batcher.pending >= self.config.max_queue_size:
            raise HTTPError(
                503, f"queue is full ({self.config.max_queue_size} requests waiting)", retry_after=1
            )
        remaining = self.config.timeout_seconds - (time.perf_counter() - started)
        if remaining <= 0:
            raise self._timeout()
        # Alone in flight: straight to the worker; else with the rest of this loop iteration's.
        # The batcher fails the job with a 504 at the deadline (one timer for all its jobs).
        loop = self._loop or asyncio.get_running_loop()
        in_server = self.requests_in_server
        job = batcher.submit(
            arrays,
            rows,
            alone=self.inflight <= 1,
            deadline=loop.time() + remaining,
            timeout=self._timeout,
            idle=in_server is not None and in_server() <= 1,
        )
        return await job.future

    def _timeout(self) -> HTTPError:
        return HTTPError(504, f"inference took longer than the {self.config.timeout_seconds:g} s timeout")

    async def _respond(
        self,
        send: Send,
        status: int,
        body: bytes,
        content_type: bytes,
        extra: tuple[tuple[bytes, bytes], ...] | list[tuple[bytes, bytes]] = (),
    ) -> None:
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            *self._static_headers,
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _error(
        self,
        send: Send,
        error: HTTPError,
        v2: bool,
        id_header: tuple[bytes, bytes] | None = None,
        more: tuple[bytes, bytes] | None = None,
    ) -> None:
        if error.code >= 500 and error.code not in (503, 504):
            pass  # already logged with its traceback by _classify
        elif error.code >= 400:
            log.info("request refused", extra={"fields": {"code": error.code, "error": error.message}})
        extra = error_headers(error)
        if id_header is not None:
            extra.append(id_header)
        if more is not None:
            extra.append(more)
        await self._respond(send, error.code, error_body(error, v2), _JSON, extra)

    # --- the DataPlane the REST routes read ---------------------------------------------
    def metadata(self, name: str) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        if self.models is not None:
            if not self.ready:
                raise self.unavailable()
            return self.models.metadata(name)
        model = self.model
        if model is None:
            raise not_ready()
        if name not in model.names:
            raise self._unknown_model(name, model)
        return model_metadata(model.signature, name)

    def exposition(self) -> bytes:
        if self.models is None:
            return self.metrics.exposition()
        return multi_model_exposition(self.metrics, self.models)

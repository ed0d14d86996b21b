"""One replica's side of a multi-model endpoint: the prefix's models, loaded on demand into
the cache, each with its own batcher and metrics. The app asks it for a model per request."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import shutil
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from berth_serving.cgroup import host_memory, memory_limit, resident_bytes
from berth_serving.config import DEFAULT_CACHE_SHARE, ServeConfig
from berth_serving.errors import HTTPError
from berth_serving.fetch import FetchError, human_size
from berth_serving.loaded import LoadedModel, start_model
from berth_serving.metrics import Metrics
from berth_serving.multimodel.cache import Entry, Loaded, ModelSet
from berth_serving.multimodel.names import model_key, name_problem
from berth_serving.multimodel.repository import Repository
from berth_serving.signature import Signature, SignatureError

log = logging.getLogger("berth.serving.multimodel")

# A rollout's warm-up (--warm-from) gives up after this long in all: the fleet must come up.
WARM_SECONDS = 120.0
# An ONNX model of one Identity node (IR 8, opset 17): loaded once at start, so ONNX Runtime's
# one-time costs in a process (tens of MiB) are not measured as the first model's size.
_PRIMER = (
    b'\x08\x08:7\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x01wZ\x0f\n\x01x\x12\n\n\x08\x08\x01'
    b"\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\x11"
)


def default_cache_bytes() -> int:
    limit = memory_limit()
    return int(DEFAULT_CACHE_SHARE * (limit if limit is not None else host_memory()))


def _return_freed_memory() -> None:
    """glibc keeps freed heap for reuse; give it back, so the next load's growth is measured."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class MultiModelHost:
    def __init__(self, config: ServeConfig, variant: str, scratch: Path) -> None:
        self.config = config
        self.variant = variant
        self.repository = Repository(config.model_uri, scratch)
        self.models: ModelSet[LoadedModel] = ModelSet(
            config.cache_bytes or default_cache_bytes(), config.max_loaded_models, self._load, self._unload
        )
        self._metrics: dict[str, Metrics] = {}
        self._scratch_of: dict[str, Path] = {}  # key -> the directory its fetched copy is in
        # Sessions are created one at a time, so the process's growth across one is that model's.
        self._session_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """List the prefix once: a prefix that is not there fails the start, loudly."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._prime_runtime)
        names = await asyncio.to_thread(self.repository.index, True)
        log.info(
            "multi-model prefix listed",
            extra={
                "fields": {
                    "prefix": self.repository.prefix,
                    "models": "unlisted (http)" if names is None else len(names),
                    "cache_bytes": self.models.capacity,
                    "max_loaded_models": self.models.max_models,
                }
            },
        )
        if self.config.warm_from and self.config.warm_models:
            await self.warm(self.config.warm_from, self.config.warm_models)

    async def warm(self, url: str, count: int) -> list[str]:
        """Load the `count` most requested models of another fleet before this one says ready.
        `url` is its GET /models; a headless Service's name reaches every replica (each lists
        the models it holds), so their lists are merged. Best effort: an old fleet that is
        gone or a model that fails to load is logged and skipped."""
        deadline = time.monotonic() + WARM_SECONDS
        try:
            lists = await asyncio.to_thread(_models_of_fleet, url)
        except (OSError, ValueError) as error:
            log.warning("cannot read the models to warm", extra={"fields": {"url": url, "error": str(error)}})
            return []
        keys = most_requested(lists, count)
        warmed: list[str] = []
        for key in keys:
            if time.monotonic() > deadline:
                log.warning("warm-up stopped at its time limit", extra={"fields": {"warmed": len(warmed)}})
                break
            try:
                entry, _ = await self.models.acquire(key)
            except HTTPError as error:
                log.warning("warm-up load failed", extra={"fields": {"model": key, "error": error.message}})
                continue
            self.models.release(entry)
            warmed.append(key)
        log.info("warmed models", extra={"fields": {"from": url, "models": warmed}})
        return warmed

    def close(self) -> None:
        self.models.close()

    # --- per request -----------------------------------------------------------------
    def take_loaded(self, requested: str) -> Entry[LoadedModel] | None:
        """The hot path: a model already loaded, with no coroutine (None: `acquire` it). Only
        loaded keys can match, so a name needs no check here."""
        return self.models.take_loaded(model_key(requested))

    async def acquire(self, requested: str) -> tuple[Entry[LoadedModel], bool]:
        problem = name_problem(requested)
        if problem is not None:
            raise HTTPError(400, f"bad model name {requested[:100]!r}: {problem}")
        return await self.models.acquire(model_key(requested))

    def release(self, entry: Entry[LoadedModel]) -> None:
        self.models.release(entry)

    def inflight(self, key: str) -> float:
        return self.models.inflight(key)

    def metrics_for(self, key: str) -> Metrics:
        metrics = self._metrics.get(key)
        if metrics is None:
            metrics = self._metrics[key] = Metrics(self.variant, key)
            metrics.track_inflight(lambda: self.models.inflight(key))
        return metrics

    async def metadata(self, requested: str) -> dict[str, Any]:
        from berth_serving.v2 import model_metadata

        entry, _ = await self.acquire(requested)
        try:
            assert entry.model is not None
            return model_metadata(entry.model.signature, requested)
        finally:
            self.release(entry)

    # --- the repository API ------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """GET /models: the loaded models first (most recently used first), with their sizes."""
        loaded = [self.models.describe(entry) for entry in reversed(self.models.loaded())]
        return {
            "prefix": self.repository.prefix,
            "cacheBytes": self.models.capacity,
            "usedBytes": self.models.used_bytes,
            "maxLoadedModels": self.models.max_models,
            "models": loaded,
        }

    async def index(self) -> list[dict[str, Any]]:
        """Triton's POST /v2/repository/index: every model under the prefix and its state."""
        names = await asyncio.to_thread(self.repository.index, True)
        loaded = {entry.key: entry for entry in self.models.loaded()}
        if names is None:  # an http prefix cannot be listed: what this replica has loaded
            return [{"name": key, "state": "READY"} for key in sorted(loaded)]
        return [
            {"name": model_key(name), "state": "READY" if model_key(name) in loaded else "UNAVAILABLE"}
            for name in names
        ]

    async def load(self, requested: str) -> None:
        entry, _ = await self.acquire(requested)
        self.release(entry)

    def unload(self, requested: str) -> bool:
        return self.models.unload(model_key(requested))

    # --- loading (ModelSet's loader) -------------------------------------------------
    async def _load(self, key: str) -> Loaded[LoadedModel]:
        started = time.perf_counter()
        try:
            path = await asyncio.to_thread(self._fetch, key)
        except FetchError as error:
            raise HTTPError(424, f"model {key!r} failed to load: {error}") from None
        session, size = await asyncio.to_thread(self._open, key, path)
        try:
            signature = await asyncio.to_thread(Signature.from_session, session, path)
        except SignatureError as error:
            raise HTTPError(424, f"model {key!r} failed to load: {error}") from None
        metrics = self.metrics_for(key)
        loop = self._loop or asyncio.get_running_loop()
        model = start_model(self.config, loop, key, path, session, signature, metrics, (key,))
        seconds = time.perf_counter() - started
        metrics.model_load_seconds = seconds
        return Loaded(model, size, seconds)

    def _fetch(self, key: str) -> Path:
        path, scratch = self.repository.fetch(self.repository.resolve(key))
        self._scratch_of[key] = scratch
        return path

    def _prime_runtime(self) -> None:
        import numpy as np
        import onnxruntime as ort

        from berth_serving.cgroup import intra_op_threads
        from berth_serving.session import session_options

        options = session_options(intra_op_threads(self.config.intra_op_threads), "all")
        with self._session_lock:
            session = ort.InferenceSession(_PRIMER, sess_options=options, providers=["CPUExecutionProvider"])
            session.run(None, {"x": np.zeros(1, np.float32)})

    def _open(self, key: str, path: Path) -> tuple[Any, int]:
        """The session and its measured size: the process's resident growth across creating
        it, never less than the .onnx file (its weights are in memory once loaded)."""
        from berth_serving.session import load_session

        with self._session_lock:
            before = resident_bytes()
            try:
                session = load_session(
                    path,
                    threads=self.config.intra_op_threads,
                    optimization=self.config.graph_optimization_level,
                    providers=self.config.providers,
                )
            except Exception as error:  # ONNX Runtime's load errors have no common base class
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise HTTPError(424, f"model {key!r} failed to load: {first[:500]}") from None
            _return_freed_memory()  # parsing's transient copies are not the model's to keep
            grown = resident_bytes() - before
        size = max(grown, path.stat().st_size)
        log.debug(
            "model measured", extra={"fields": {"model": key, "bytes": size, "human": human_size(size)}}
        )
        return session, size

    def _unload(self, model: LoadedModel) -> None:
        """Stop its batcher now; destroy the session (milliseconds for a large one) and delete
        its files in a worker thread, not on the event loop."""
        model.batcher.stop(timeout=0)
        scratch = self._scratch_of.pop(model.name, None)
        holder = [model]
        del model
        loop = self._loop
        if loop is None or loop.is_closed():
            self._release(holder, scratch)
        else:
            # From the next loop iteration: the caller's frames, which still reference the
            # model, are gone by then, so the worker's is the last reference.
            loop.call_soon(loop.run_in_executor, None, self._release, holder, scratch)

    def _release(self, holder: list[LoadedModel], scratch: Path | None) -> None:
        # Under the session lock: a load measuring its growth meanwhile would see this shrink.
        with self._session_lock:
            holder.clear()  # the last reference: the session is destroyed here
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            _return_freed_memory()

    # --- metrics ---------------------------------------------------------------------
    def model_families(self) -> Iterator[Metric]:
        labels = ["variant", "model"]
        hits = CounterMetricFamily(
            "berth_model_cache_hits", "Requests whose model was loaded.", labels=labels
        )
        misses = CounterMetricFamily(
            "berth_model_cache_misses", "Requests that waited for their model to load.", labels=labels
        )
        loads = CounterMetricFamily("berth_model_loads", "Times a model was loaded.", labels=labels)
        unloads = CounterMetricFamily("berth_model_unloads", "Times a model was unloaded.", labels=labels)
        loaded_bytes = GaugeMetricFamily(
            "berth_model_loaded_bytes", "Measured memory of each loaded model.", labels=labels
        )
        for key, stats in sorted(self.models.known().items()):
            values = [self.variant, key]
            hits.add_metric(values, stats.hits)
            misses.add_metric(values, stats.misses)
            loads.add_metric(values, stats.loads)
            unloads.add_metric(values, stats.unloads)
        for entry in self.models.loaded():
            loaded_bytes.add_metric([self.variant, entry.key], entry.bytes)
        capacity = GaugeMetricFamily(
            "berth_model_cache_capacity_bytes", "Memory the loaded models may hold.", labels=["variant"]
        )
        capacity.add_metric([self.variant], self.models.capacity)
        count = GaugeMetricFamily("berth_loaded_models", "Models loaded now.", labels=["variant"])
        count.add_metric([self.variant], len(self.models.loaded()))
        yield from (hits, misses, loads, unloads, loaded_bytes, capacity, count)

    def per_model_metrics(self) -> list[Metrics]:
        return [self._metrics[key] for key in sorted(self._metrics)]


def most_requested(lists: list[Any], count: int) -> list[str]:
    """The `count` keys with the most requests over several GET /models answers."""
    requests: dict[str, int] = {}
    for document in lists:
        for model in document.get("models", []) if isinstance(document, dict) else []:
            key = model.get("key") if isinstance(model, dict) else None
            if isinstance(key, str) and key:
                requests[key] = requests.get(key, 0) + int(model.get("requests", 0) or 0)
    return sorted(requests, key=lambda key: (-requests[key], key))[:count]


def _models_of_fleet(url: str) -> list[Any]:
    """GET /models of every address the URL's host resolves to (one, or each ready replica)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"--warm-from must be http://HOST:PORT/models, not {url!r}")
    port = parts.port or 80
    addresses = sorted(
        {str(info[4][0]) for info in socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)}
    )
    found, errors = [], []
    for address in addresses:
        host = f"[{address}]" if ":" in address else address
        try:
            found.append(
                _get_json(urllib.parse.urlunsplit(("http", f"{host}:{port}", parts.path, parts.query, "")))
            )
        except (OSError, ValueError) as error:
            errors.append(f"{address}: {error}")
    if not found:
        raise OSError("; ".join(errors) or f"{parts.hostname} resolves to no address")
    return found


def _get_json(url: str) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return orjson.loads(response.read(16 * 1024 * 1024))

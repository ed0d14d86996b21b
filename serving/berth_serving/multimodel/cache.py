"""The models a multi-model replica holds: loaded on first use, evicted least recently used.

Admission is by measured size in memory (memory.py): a model that does not fit evicts the
least recently used *idle* models (never one with requests in flight); one larger than the
whole cache is refused with 507. Concurrent first requests for one model share one load.
A failed load is remembered for FAILED_SECONDS, so a broken model costs one load per window,
not one per request. Event loop thread only; loading runs in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from berth_serving.errors import HTTPError
from berth_serving.fetch import human_size

log = logging.getLogger("berth.serving.multimodel")

M = TypeVar("M")

FAILED_SECONDS = 10.0
# How long a load that fits only once busy models go idle waits for them before a 503.
ADMISSION_WAIT_SECONDS = 2.0
# Models whose last load failed, remembered at most (oldest forgotten first).
MAX_REMEMBERED_FAILURES = 1024


@dataclass(frozen=True)
class Loaded(Generic[M]):
    """What a loader returns: the model, its measured size and how long the load took."""

    model: M
    bytes: int
    seconds: float


@dataclass(eq=False)
class Stats:
    """A model's counters; kept after it is unloaded, so they only ever grow."""

    requests: int = 0
    hits: int = 0
    misses: int = 0
    loads: int = 0
    unloads: int = 0
    load_seconds: float = 0.0  # the last load
    last_used: float = 0.0  # wall clock


@dataclass(eq=False)
class Entry(Generic[M]):
    key: str
    stats: Stats
    model: M | None = None
    bytes: int = 0
    inflight: int = 0
    loading: asyncio.Future[HTTPError | None] | None = None
    unload_when_idle: bool = False

    @property
    def state(self) -> str:
        if self.model is not None:
            return "loaded"
        return "loading" if self.loading is not None else "unloaded"


@dataclass
class _Failure:
    error: HTTPError
    until: float


class TooLarge(HTTPError):
    def __init__(self, key: str, size: int, capacity: int) -> None:
        super().__init__(
            507,
            f"model {key!r} needs {size} bytes ({human_size(size)}) in memory, more than the whole"
            f" model cache of {capacity} bytes ({human_size(capacity)})",
        )


class ModelSet(Generic[M]):
    """The loaded models of one replica. `load(key)` fetches and loads one (HTTPError for the
    client's answer); `unload(model)` releases it."""

    def __init__(
        self,
        capacity_bytes: int,
        max_models: int,
        load: Callable[[str], Awaitable[Loaded[M]]],
        unload: Callable[[M], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity_bytes
        self.max_models = max_models  # 0: no count limit
        self._load = load
        self._unload = unload
        self._clock = clock
        self._entries: OrderedDict[str, Entry[M]] = OrderedDict()  # least recently used first
        self._stats: dict[str, Stats] = {}
        self._failures: OrderedDict[str, _Failure] = OrderedDict()
        self._idle = asyncio.Event()  # set whenever a request finishes

    # --- what the app calls ----------------------------------------------------------
    @property
    def used_bytes(self) -> int:
        return sum(entry.bytes for entry in self._entries.values() if entry.model is not None)

    def stats(self, key: str) -> Stats | None:
        """The counters of a model that has loaded at least once."""
        return self._stats.get(key)

    def take_loaded(self, key: str) -> Entry[M] | None:
        """A hit without a coroutine: the loaded model with one more request in flight, else
        None (then `acquire`). Pair with `release`."""
        entry = self._entries.get(key)
        if entry is None or entry.model is None:
            return None
        self._take(entry)
        entry.stats.hits += 1
        return entry

    async def acquire(self, key: str) -> tuple[Entry[M], bool]:
        """The loaded model for `key` with one more request in flight, and whether it was
        already loaded (a hit). Pair with `release`."""
        entry = self.take_loaded(key)
        if entry is not None:
            return entry, True
        failure = self._failures.get(key)
        if failure is not None:
            if self._clock() < failure.until:
                raise failure.error
            del self._failures[key]
        while True:
            entry = self._entries.get(key)
            if entry is None:
                # Counters are kept only for models that load: names that never do cost nothing.
                entry = self._entries[key] = Entry(key, self._stats.get(key) or Stats())
            if entry.model is not None:  # loaded while this request waited
                self._take(entry)
                entry.stats.misses += 1
                return entry, False
            if entry.loading is None:
                entry.loading = asyncio.ensure_future(self._load_entry(entry))
            # Shielded: a client that gives up does not cancel the load the others wait on.
            error = await asyncio.shield(entry.loading)
            if error is not None:
                raise error

    def release(self, entry: Entry[M]) -> None:
        entry.inflight -= 1
        entry.stats.last_used = time.time()
        if entry.inflight == 0:
            if entry.unload_when_idle:
                self._evict(entry)
            self._idle.set()

    def unload(self, key: str) -> bool:
        """Unload a model now when idle, else once its last request finishes. False when it
        was not loaded."""
        entry = self._entries.get(key)
        if entry is None or entry.model is None:
            return False
        if entry.inflight:
            entry.unload_when_idle = True
        else:
            self._evict(entry)
        return True

    def inflight(self, key: str) -> float:
        entry = self._entries.get(key)
        return float(entry.inflight) if entry is not None else 0.0

    def loaded(self) -> list[Entry[M]]:
        return [entry for entry in self._entries.values() if entry.model is not None]

    def known(self) -> dict[str, Stats]:
        return dict(self._stats)

    def close(self) -> None:
        for entry in self.loaded():
            self._evict(entry)

    # --- inside ----------------------------------------------------------------------
    def _take(self, entry: Entry[M]) -> None:
        entry.inflight += 1
        entry.unload_when_idle = False
        entry.stats.requests += 1
        entry.stats.last_used = time.time()
        self._entries.move_to_end(entry.key)

    async def _load_entry(self, entry: Entry[M]) -> HTTPError | None:
        """Load, measure and admit one model; the error its waiters answer with, else None."""
        try:
            loaded = await self._load(entry.key)
        except HTTPError as error:
            return self._fail(entry, error)
        except Exception as error:  # our bug, or a library's: logged, answered as a 500
            log.exception("model load failed", extra={"fields": {"model": entry.key}})
            return self._fail(
                entry, HTTPError(500, f"loading model {entry.key!r} failed ({type(error).__name__})")
            )
        try:
            await self._admit(entry.key, loaded.bytes)
        except HTTPError as error:
            self._unload(loaded.model)
            return self._fail(entry, error)
        entry.model, entry.bytes = loaded.model, loaded.bytes
        entry.loading = None
        self._stats[entry.key] = entry.stats
        entry.stats.loads += 1
        entry.stats.load_seconds = loaded.seconds
        self._entries.move_to_end(entry.key)
        log.info(
            "model loaded",
            extra={
                "fields": {
                    "model": entry.key,
                    "bytes": loaded.bytes,
                    "seconds": round(loaded.seconds, 3),
                    "cache_used_bytes": self.used_bytes,
                    "loaded_models": len(self.loaded()),
                }
            },
        )
        return None

    def _fail(self, entry: Entry[M], error: HTTPError) -> HTTPError:
        entry.loading = None
        if self._entries.get(entry.key) is entry and entry.model is None:
            del self._entries[entry.key]
        if error.code != 404:  # an unknown name is looked up again (it may be uploaded later)
            self._failures[entry.key] = _Failure(error, self._clock() + FAILED_SECONDS)
            self._failures.move_to_end(entry.key)
            while len(self._failures) > MAX_REMEMBERED_FAILURES:
                self._failures.popitem(last=False)
        log.info("model load refused", extra={"fields": {"model": entry.key, "error": error.message}})
        return error

    async def _admit(self, key: str, size: int) -> None:
        """Make room for `size` more bytes (and one more model): evict idle models, least
        recently used first; wait a little for busy ones to go idle; else 503."""
        if size > self.capacity:
            raise TooLarge(key, size, self.capacity)
        deadline = self._clock() + ADMISSION_WAIT_SECONDS
        while not self._fits(size):
            victim = next((e for e in self.loaded() if e.inflight == 0), None)
            if victim is not None:
                self._evict(victim)
                continue
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise HTTPError(
                    503,
                    f"model cache is full: {len(self.loaded())} models ({human_size(self.used_bytes)} of"
                    f" {human_size(self.capacity)}) all have requests in flight; cannot load {key!r} now",
                    retry_after=1,
                )
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), remaining)

    def _fits(self, size: int) -> bool:
        loaded = self.loaded()
        if self.max_models and len(loaded) + 1 > self.max_models:
            return False
        return sum(entry.bytes for entry in loaded) + size <= self.capacity

    def _evict(self, entry: Entry[M]) -> None:
        model, entry.model = entry.model, None
        entry.unload_when_idle = False
        if self._entries.get(entry.key) is entry and entry.loading is None:
            del self._entries[entry.key]
        if model is None:
            return
        entry.stats.unloads += 1
        self._unload(model)
        log.info(
            "model unloaded",
            extra={"fields": {"model": entry.key, "bytes": entry.bytes, "cache_used_bytes": self.used_bytes}},
        )
        entry.bytes = 0

    def describe(self, entry: Entry[Any]) -> dict[str, Any]:
        stats = entry.stats
        return {
            "key": entry.key,
            "state": entry.state,
            "bytes": entry.bytes,
            "inflight": entry.inflight,
            "requests": stats.requests,
            "hits": stats.hits,
            "misses": stats.misses,
            "loads": stats.loads,
            "unloads": stats.unloads,
            "loadSeconds": round(stats.load_seconds, 6),
            "lastUsed": stats.last_used,
        }

"""The KEDA HTTP add-on for `berth up`: its interceptor and its scaler, on the planner's objects.

On a cluster the HTTPRoute sends a serverless variant's traffic to the add-on's interceptor,
naming the variant in a header (X-Berth-Serverless-Target: NS/OBJECT); the interceptor finds
the HTTPScaledObject with that header, holds requests while the Deployment has no ready pod,
and the add-on scales the Deployment on requests in flight. Local mode does the same in the
router, keyed on that header filter and the HTTPScaledObject (never on the interceptor's
Service name, which comes from settings):

- admission (`admit`): a request goes on when the variant has a ready replica and fewer than
  berth.dev/max-concurrency requests in flight, and nobody is held before it; else it is held,
  up to berth.dev/max-held-requests at once; beyond that 429 with Retry-After. A held request
  waits at most berth.dev/cold-start-timeout-seconds, then gets 503 with Retry-After.
- scaling (`next_replicas`): ceil(demand / scalingMetric.concurrency.targetValue), demand
  being the most requests in flight plus held seen since the last look, the largest over the
  last scaledownPeriod seconds, clamped to [max(1, min), max]; none for scaledownPeriod: min.
  A request held at zero is looked at at once (no poll interval before a cold start begins).
- a cold start (`ColdStart`) is timed by phase: scheduled (the fleet acts on the new count),
  model fetched (the model file is in the cache), model loaded (the replica answers /ping),
  first answer (the first held request answered); the phases add up to the total.

Pure parts (HttpTarget, admit, next_replicas, ColdStart) are tested on their own; Gate and
LocalInterceptor keep state on the event loop and never block it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..planner import labels
from ..planner import serverless as planner_serverless
from ..planner.serverless import (
    COLD_START_TIMEOUT_ANNOTATION,
    HTTP_SCALED_OBJECT_KIND,
    MAX_CONCURRENCY_ANNOTATION,
    MAX_HELD_ANNOTATION,
    TARGET_HEADER,
)

log = logging.getLogger("berth.up")

Manifest = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)

POLL_SECONDS = 0.25
DEFAULT_MAX_HELD = 100  # the API's default, for an HTTPScaledObject without the annotation
DEFAULT_COLD_START_TIMEOUT = 180.0
DEFAULT_SCALEDOWN_SECONDS = 300.0  # the add-on's default scaledownPeriod
# Retry-After of a 429 (the held requests will move within a request's time) and of a 503 after
# a cold start that did not finish (the replica is still coming, or cannot load its model).
RETRY_AFTER_FULL_SECONDS = 1
RETRY_AFTER_COLD_SECONDS = 5
COLD_START_HEADER = planner_serverless.COLD_START_HEADER.lower().encode()
PHASES = ("scheduled", "modelFetched", "modelLoaded", "firstAnswer")
PHASE_NAMES = dict(zip(PHASES, ("scheduled", "model fetched", "model loaded", "first answer"), strict=True))

Outcome = Literal["go", "hold", "full"]


# --------------------------------------------------------------------------- the object


def _number(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _seconds(value: Any, default: float) -> float:
    """A Go duration as the add-on writes them ("180s", "2m"), or a number."""
    text = str(value or "").strip()
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix):
            return _number(text[: -len(suffix)], default / scale) * scale
    return _number(text, default)


@dataclass(frozen=True)
class HttpTarget:
    """One HTTPScaledObject, as far as local mode reads it."""

    namespace: str
    name: str
    deployment: str
    service: str
    header: str  # the X-Berth-Serverless-Target value that reaches it
    min_replicas: int
    max_replicas: int
    scaledown_seconds: float
    per_replica: int  # scalingMetric.concurrency.targetValue
    max_concurrency: int
    max_held: int
    cold_start_timeout: float
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> Key:
        return (self.namespace, self.deployment)

    @property
    def service_key(self) -> Key:
        return (self.namespace, self.service)

    @classmethod
    def from_manifest(cls, obj: Manifest) -> HttpTarget | None:
        """None for an object that names no target header (not one the planner writes)."""
        if obj.get("kind") != HTTP_SCALED_OBJECT_KIND:
            return None
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        namespace = meta.get("namespace", "default")
        header = next(
            (str(h.get("value", "")) for h in spec.get("headers") or [] if h.get("name") == TARGET_HEADER),
            "",
        )
        ref = spec.get("scaleTargetRef") or {}
        if not header or not ref.get("name"):
            return None
        annotations = meta.get("annotations") or {}
        replicas = spec.get("replicas") or {}
        minimum = max(0, int(_number(replicas.get("min"), 0)))
        maximum = max(minimum, 1, int(_number(replicas.get("max"), 100)))
        per_replica = (spec.get("scalingMetric") or {}).get("concurrency", {}).get("targetValue", 100)
        per_replica = max(1, int(_number(per_replica, 100)))
        timeout = _seconds((spec.get("timeouts") or {}).get("conditionWait"), DEFAULT_COLD_START_TIMEOUT)
        return cls(
            namespace=namespace,
            name=meta.get("name", ref["name"]),
            deployment=ref["name"],
            service=ref.get("service") or ref["name"],
            header=header,
            min_replicas=minimum,
            max_replicas=maximum,
            scaledown_seconds=_number(spec.get("scaledownPeriod"), DEFAULT_SCALEDOWN_SECONDS),
            per_replica=per_replica,
            max_concurrency=max(
                1, int(_number(annotations.get(MAX_CONCURRENCY_ANNOTATION), per_replica * maximum))
            ),
            max_held=max(0, int(_number(annotations.get(MAX_HELD_ANNOTATION), DEFAULT_MAX_HELD))),
            cold_start_timeout=_number(annotations.get(COLD_START_TIMEOUT_ANNOTATION), timeout),
            labels=dict(meta.get("labels") or {}),
        )


# --------------------------------------------------------------------------- pure decisions


def admit(target: HttpTarget, ready: int, in_flight: int, held: int) -> Outcome:
    """What a new request gets: on to a replica, held, or refused (429). First come, first
    served: while anyone is held a newcomer queues behind them."""
    if ready > 0 and in_flight < target.max_concurrency and held == 0:
        return "go"
    if held < target.max_held:
        return "hold"
    return "full"


def next_replicas(target: HttpTarget, history: deque[tuple[float, int]], peak: int, now: float) -> int:
    """The replica count for the demand seen: `peak` (most requests in flight plus held since the
    last look) joins `history`, which keeps scaledownPeriod seconds of looks; the largest wins,
    so the count falls only once the demand has been lower for that long, and to min once
    nothing came for that long."""
    history.append((now, math.ceil(peak / target.per_replica)))
    while history and history[0][0] < now - target.scaledown_seconds:
        history.popleft()
    wanted = max((w for _, w in history), default=0)
    if wanted == 0:
        return target.min_replicas
    return min(target.max_replicas, max(1, target.min_replicas, wanted))


@dataclass
class ColdStart:
    """A request held while its variant had no ready replica, until that request is answered.
    Times are time.monotonic(); a phase that never happened (the fleet was already up) is 0."""

    held_at: float
    scheduled_at: float | None = None  # the fleet acted on a count above zero
    fetched_at: float | None = None  # its model file was ready (a cache hit, or fetched)
    loaded_at: float | None = None  # a replica answered /ping
    answered_at: float | None = None  # the first held request was answered

    def phases(self) -> dict[str, float]:
        """Seconds per phase, in order; each from the end of the one before (never negative),
        so they add up to total()."""
        marks = [self.scheduled_at, self.fetched_at, self.loaded_at, self.answered_at]
        result: dict[str, float] = {}
        previous = self.held_at
        for name, mark in zip(PHASES, marks, strict=True):
            at = max(previous, mark if mark is not None else previous)
            result[name] = at - previous
            previous = at
        return result

    def total(self) -> float:
        return sum(self.phases().values())


# --------------------------------------------------------------------------- holding


@dataclass(frozen=True)
class Admission:
    outcome: Literal["go", "full", "timeout", "gone"]
    cold_ms: int | None = None  # ms held while the variant had no ready replica


class Gate:
    """The interceptor's queue for one target: requests in flight, held requests, ready replicas."""

    def __init__(self, target: HttpTarget, on_demand: Callable[[Gate], None]) -> None:
        self.target = target
        self.ready = 0
        self.in_flight = 0
        self.peak = 0  # most in flight + held since the scaler last looked
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.cold: ColdStart | None = None  # a cold start in progress
        self.last_cold: ColdStart | None = None
        self.cold_starts = 0
        self.refused = 0  # 429s
        self.timed_out = 0  # 503s after coldStartTimeoutSeconds
        self.reason = ""  # why no replica is ready, when one is known (the engine tells)
        self.last_error = ""
        self._on_demand = on_demand

    @property
    def held(self) -> int:
        return len(self.waiters)

    def _seen(self) -> None:
        self.peak = max(self.peak, self.in_flight + self.held)

    def set_ready(self, ready: int) -> None:
        self.ready = ready
        self._release()

    def _release(self) -> None:
        """Hand free slots to the held requests, first come first."""
        while self.waiters and self.ready > 0 and self.in_flight < self.target.max_concurrency:
            waiter = self.waiters.popleft()
            if waiter.done():
                continue
            self.in_flight += 1
            waiter.set_result(None)

    async def enter(self, disconnected: Callable[[], Awaitable[Any]] | None = None) -> Admission:
        """A slot for one request: at once, after holding, or not (full, timed out, client gone).
        disconnected: awaits the client's leaving (the ASGI receive, once the body is read)."""
        outcome = admit(self.target, self.ready, self.in_flight, self.held)
        if outcome == "go":
            self.in_flight += 1
            self._seen()
            return Admission("go")
        if outcome == "full":
            self.refused += 1
            self.peak = max(self.peak, self.in_flight + self.held + 1)  # still demand for the scaler
            self._on_demand(self)
            return Admission("full")
        loop = asyncio.get_running_loop()
        held_at = time.monotonic()
        cold = self.ready == 0
        if cold and self.cold is None:
            self.cold = ColdStart(held_at=held_at)
        waiter: asyncio.Future[None] = loop.create_future()
        self.waiters.append(waiter)
        self._seen()
        self._on_demand(self)
        gone = asyncio.ensure_future(disconnected()) if disconnected is not None else None
        try:
            waiting: set[asyncio.Future[Any]] = {waiter} if gone is None else {waiter, gone}
            await asyncio.wait(
                waiting, timeout=self.target.cold_start_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        finally:
            if gone is not None:
                gone.cancel()
        if waiter.done() and not waiter.cancelled():
            waited_ms = round((time.monotonic() - held_at) * 1000)
            return Admission("go", waited_ms if cold else None)
        self._abandon(waiter)
        if gone is not None and gone.done() and not gone.cancelled():
            return Admission("gone")
        self.timed_out += 1
        self.last_error = self.timeout_message()
        if cold and not self.waiters:
            self.cold = None  # that cold start failed; the next held request times its own
        return Admission("timeout")

    def _abandon(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done() and not waiter.cancelled():
            self.exit()  # it was given a slot it will not use
            return
        waiter.cancel()
        with contextlib.suppress(ValueError):
            self.waiters.remove(waiter)

    def exit(self) -> None:
        self.in_flight -= 1
        self._release()

    def answered(self, cold_ms: int | None) -> ColdStart | None:
        """A held request was answered: the cold start it waited for ends here (returned once)."""
        if cold_ms is None or self.cold is None:
            return None
        cold, self.cold = self.cold, None
        cold.answered_at = time.monotonic()
        self.last_cold = cold
        self.cold_starts += 1
        return cold

    def timeout_message(self) -> str:
        why = f": {self.reason}" if self.reason else ""
        return (
            f"no replica of {self.target.deployment} was ready within {self.target.cold_start_timeout:g} s "
            f"(coldStartTimeoutSeconds){why}"
        )


# --------------------------------------------------------------------------- the add-on


@dataclass
class _Scaling:
    replicas: int
    history: deque[tuple[float, int]] = field(default_factory=deque)


class LocalInterceptor:
    """Every HTTPScaledObject of `berth up`: a Gate each (in the router) and its replica count."""

    def __init__(self) -> None:
        self.targets: dict[str, HttpTarget] = {}  # by header value
        self.gates: dict[str, Gate] = {}
        self.scaling: dict[Key, _Scaling] = {}
        self.on_scale: Callable[[], None] = lambda: None
        self._poked: set[str] = set()

    # ------------------------------------------------------------------ configuration

    def set_objects(self, objects: Iterable[Manifest]) -> None:
        found = [t for t in (HttpTarget.from_manifest(o) for o in objects) if t is not None]
        targets = {t.header: t for t in found}
        now = time.monotonic()
        for header, target in targets.items():
            gate = self.gates.get(header)
            if gate is None:
                self.gates[header] = Gate(target, self._poke)
            else:
                gate.target = target
                gate._release()  # a higher maxConcurrency frees slots
            scaling = self.scaling.get(target.key)
            if scaling is None:
                # Seen for the first time: its scaledownPeriod starts now, as the add-on's does.
                scaling = self.scaling[target.key] = _Scaling(replicas=target.min_replicas)
                scaling.history.append((now, 0))
            scaling.replicas = min(target.max_replicas, max(scaling.replicas, target.min_replicas))
        for header in set(self.gates) - set(targets):
            gate = self.gates.pop(header)
            for waiter in gate.waiters:  # no target any more: they time out as 503s elsewhere
                if not waiter.done():
                    waiter.cancel()
        keys = {t.key for t in targets.values()}
        for key in set(self.scaling) - keys:
            del self.scaling[key]
        self.targets = targets

    def services(self) -> dict[str, Key]:
        """Header value -> the Service a backendRef with that header reaches."""
        return {header: t.service_key for header, t in self.targets.items()}

    def replicas(self, key: Key) -> int | None:
        scaling = self.scaling.get(key)
        return scaling.replicas if scaling is not None else None

    def set_ready(self, ready: Mapping[Key, int]) -> None:
        for gate in self.gates.values():
            gate.set_ready(ready.get(gate.target.service_key, 0))

    # ------------------------------------------------------------------ scaling

    def _poke(self, gate: Gate) -> None:
        """Demand on a gate at zero (or full): decide now, not at the next poll."""
        if gate.ready > 0 and gate.held == 0:
            return
        header = gate.target.header
        if header in self._poked:
            return
        self._poked.add(header)
        asyncio.get_running_loop().call_soon(self._decide_poked)

    def _decide_poked(self) -> None:
        poked, self._poked = self._poked, set()
        if self.decide(poked):
            self.on_scale()

    def decide(self, headers: Iterable[str] | None = None) -> bool:
        """One look at the demand of each gate; True when some replica count changed."""
        now = time.monotonic()
        changed = False
        for header in sorted(self.gates if headers is None else headers):
            gate = self.gates.get(header)
            target = self.targets.get(header)
            if gate is None or target is None:
                continue
            scaling = self.scaling[target.key]
            peak, gate.peak = gate.peak, gate.in_flight + gate.held
            after = next_replicas(target, scaling.history, peak, now)
            if after != scaling.replicas:
                log.info(
                    "%s/%s: local KEDA HTTP scales %d -> %d replicas (%d in flight, %d held)",
                    target.namespace, target.deployment, scaling.replicas, after, gate.in_flight, gate.held,
                )  # fmt: skip
                scaling.replicas = after
                changed = True
        return changed

    async def run(self, stop: asyncio.Event, interval: float = POLL_SECONDS) -> None:
        while not stop.is_set():
            if self.gates and self.decide():
                self.on_scale()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    # ------------------------------------------------------------------ cold starts

    def cold_starts(self) -> Iterable[tuple[Key, ColdStart]]:
        """The cold starts in progress, by Deployment (the engine fills in the fleet's times)."""
        return [(g.target.key, g.cold) for g in self.gates.values() if g.cold is not None]

    def set_reason(self, key: Key, reason: str) -> None:
        for gate in self.gates.values():
            if gate.target.key == key:
                gate.reason = reason

    @staticmethod
    def describe(target: HttpTarget, cold: ColdStart) -> str:
        phases = ", ".join(f"{PHASE_NAMES[name]} {seconds:.2f} s" for name, seconds in cold.phases().items())
        return f"{target.namespace}/{target.deployment}: cold start {cold.total():.2f} s ({phases})"

    def snapshot(self) -> list[dict[str, Any]]:
        items = []
        for header, gate in sorted(self.gates.items()):
            target = gate.target
            last = gate.last_cold
            items.append(
                {
                    "namespace": target.namespace,
                    "deployment": target.deployment,
                    "target": header,
                    "endpoint": target.labels.get(labels.ENDPOINT, ""),
                    "config": target.labels.get(labels.ENDPOINT_CONFIG, ""),
                    "variant": target.labels.get(labels.VARIANT, ""),
                    "replicas": self.replicas(target.key),
                    "minReplicas": target.min_replicas,
                    "maxReplicas": target.max_replicas,
                    "readyReplicas": gate.ready,
                    "inFlight": gate.in_flight,
                    "held": gate.held,
                    "maxConcurrency": target.max_concurrency,
                    "maxHeldRequests": target.max_held,
                    "coldStarts": gate.cold_starts,
                    "coldStarting": gate.cold is not None,
                    "lastColdStart": (
                        {"totalSeconds": last.total(), "phases": last.phases()} if last is not None else None
                    ),
                    "refused": gate.refused,
                    "timedOut": gate.timed_out,
                    "lastError": gate.last_error,
                }
            )
        return items

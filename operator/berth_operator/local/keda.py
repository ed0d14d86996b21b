"""KEDA for `berth up`: the planner's ScaledObjects on Redis streams, carried out on local fleets.

Only `redis-streams` triggers are read (the async fleets'); a ScaledObject on Prometheus is
left alone, as an HPA is, and its Deployment keeps minReplicaCount. The decision follows what
KEDA and the HPA it makes would do, polled more often than KEDA's default 30 s so that a
message waiting at zero replicas starts one at once:
- activation: a trigger is active when its value is above its activation threshold
  (activationLagCount, default 0); an active ScaledObject at zero replicas goes to
  max(1, minReplicaCount), and to zero again only after cooldownPeriod (default 300 s)
  with every trigger inactive;
- between one and maxReplicaCount, the HPA's rule: ceil(value / target) for each trigger
  (AverageValue), the largest wins, then the scale-up and scale-down stabilization windows
  of advanced.horizontalPodAutoscalerConfig.behavior (the HPA's defaults 0 s and 300 s).

Pure parts (ScaledStreams, Scaling.next_replicas) are tested on their own; LocalKeda polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger("berth.up")

Manifest = dict[str, Any]
Key = tuple[str, str]  # (namespace, Deployment name)

POLL_SECONDS = 0.25
DEFAULT_COOLDOWN_SECONDS = 300.0
DEFAULT_SCALE_UP_WINDOW = 0.0
DEFAULT_SCALE_DOWN_WINDOW = 300.0


@dataclass(frozen=True)
class StreamTrigger:
    stream: str
    metric: Literal["lag", "pending"]
    target: float  # per replica
    activation: float = 0.0

    def value(self, backlog: Any) -> int:
        return int(backlog.lag if self.metric == "lag" else backlog.pending)


def _number(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _trigger(raw: Mapping[str, Any]) -> StreamTrigger | None:
    if raw.get("type") != "redis-streams":
        return None
    meta = raw.get("metadata") or {}
    stream = meta.get("stream")
    if not stream:
        return None
    if "lagCount" in meta:  # KEDA: with lagCount the trigger scales on the group's lag
        return StreamTrigger(
            stream,
            "lag",
            max(1.0, _number(meta["lagCount"], 1)),
            _number(meta.get("activationLagCount"), 0.0),
        )
    return StreamTrigger(
        stream,
        "pending",
        max(1.0, _number(meta.get("pendingEntriesCount"), 5)),
        _number(meta.get("activationPendingEntriesCount"), 0.0),
    )


@dataclass(frozen=True)
class ScaledStreams:
    """One ScaledObject on Redis streams, as far as local mode reads it."""

    namespace: str
    name: str
    deployment: str
    min_replicas: int
    max_replicas: int
    cooldown_seconds: float
    scale_up_window: float
    scale_down_window: float
    triggers: tuple[StreamTrigger, ...]

    @property
    def key(self) -> Key:
        return (self.namespace, self.deployment)

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(sorted({t.stream for t in self.triggers}))

    @classmethod
    def from_manifest(cls, obj: Manifest) -> ScaledStreams | None:
        """None for a ScaledObject without redis-streams triggers."""
        spec = obj.get("spec") or {}
        triggers = tuple(t for t in (_trigger(raw) for raw in spec.get("triggers") or []) if t)
        if not triggers:
            return None
        behavior = ((spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}).get(
            "behavior"
        ) or {}
        up = (behavior.get("scaleUp") or {}).get("stabilizationWindowSeconds")
        down = (behavior.get("scaleDown") or {}).get("stabilizationWindowSeconds")
        minimum = int(spec.get("minReplicaCount", 0))
        return cls(
            namespace=obj["metadata"].get("namespace", "default"),
            name=obj["metadata"]["name"],
            deployment=spec["scaleTargetRef"]["name"],
            min_replicas=minimum,
            max_replicas=max(minimum, 1, int(spec.get("maxReplicaCount", 100))),
            cooldown_seconds=_number(spec.get("cooldownPeriod"), DEFAULT_COOLDOWN_SECONDS),
            scale_up_window=_number(up, DEFAULT_SCALE_UP_WINDOW),
            scale_down_window=_number(down, DEFAULT_SCALE_DOWN_WINDOW),
            triggers=triggers,
        )


@dataclass
class Scaling:
    """The state KEDA and its HPA keep for one ScaledObject: replicas, last activity, history."""

    replicas: int
    last_active: float | None = None
    history: deque[tuple[float, int]] = field(default_factory=deque)

    def next_replicas(self, scaled: ScaledStreams, backlogs: Mapping[str, Any], now: float) -> int:
        values = [(t, t.value(backlogs[t.stream])) for t in scaled.triggers if t.stream in backlogs]
        active = any(value > t.activation for t, value in values)
        wanted = max((math.ceil(value / t.target) for t, value in values), default=0)
        if active or self.last_active is None:
            self.last_active = now  # a ScaledObject seen for the first time starts its cooldown
        floor = max(1, scaled.min_replicas)
        if self.replicas == 0:
            if not active:
                self.replicas = scaled.min_replicas
                return self.replicas
            self.history.clear()
            self.replicas = min(scaled.max_replicas, max(floor, wanted))
            self.history.append((now, self.replicas))
            return self.replicas
        if not active and scaled.min_replicas == 0 and now - self.last_active >= scaled.cooldown_seconds:
            self.history.clear()
            self.replicas = 0
            return 0
        recommendation = min(scaled.max_replicas, max(floor, wanted))
        self.history.append((now, recommendation))
        horizon = max(scaled.scale_up_window, scaled.scale_down_window)
        while self.history and self.history[0][0] < now - horizon:
            self.history.popleft()
        up = min(r for t, r in self.history if t >= now - scaled.scale_up_window)
        down = max(r for t, r in self.history if t >= now - scaled.scale_down_window)
        replicas = min(max(self.replicas, up), down)  # the HPA's stabilized recommendation
        self.replicas = min(scaled.max_replicas, max(floor, replicas))
        return self.replicas


ReadBacklog = Callable[[str, float], Any]  # async (stream, now) -> Backlog


@dataclass
class ColdStart:
    """A scale from zero in progress: when its first message was queued, and when it was seen."""

    first_message_at: float
    seen_at: float


class LocalKeda:
    """Polls the streams of every ScaledObject and keeps the replica count of its Deployment."""

    def __init__(self, read_backlog: ReadBacklog, on_change: Callable[[], None]) -> None:
        self._read_backlog = read_backlog
        self._on_change = on_change
        self.scaled: dict[Key, ScaledStreams] = {}
        self.scaling: dict[Key, Scaling] = {}
        self.backlogs: dict[str, Any] = {}
        self.cold_starts: dict[Key, ColdStart] = {}
        self.cold_start_seconds: dict[Key, float] = {}  # the last scale from zero, per Deployment
        self.error = ""

    def set_objects(self, objects: Iterable[Manifest]) -> None:
        scaled = {s.key: s for s in (ScaledStreams.from_manifest(o) for o in objects) if s is not None}
        for key, item in scaled.items():
            if key not in self.scaling:
                self.scaling[key] = Scaling(replicas=item.min_replicas)
        for key in set(self.scaling) - set(scaled):
            del self.scaling[key]
            self.cold_starts.pop(key, None)
        self.scaled = scaled

    def replicas(self, key: Key) -> int | None:
        scaling = self.scaling.get(key)
        return scaling.replicas if scaling is not None else None

    def ready(self, key: Key, ready_replicas: int) -> float | None:
        """Told a Deployment's ready count: the seconds from its first message to a ready replica
        when this ends a scale from zero (logged once), else None."""
        cold = self.cold_starts.get(key)
        if cold is None or ready_replicas < 1:
            return None
        del self.cold_starts[key]
        seconds = time.time() - cold.first_message_at
        self.cold_start_seconds[key] = seconds
        log.info(
            "%s/%s: scaled from zero: %.2f s from the first queued message to a ready replica "
            "(%.2f s after it was seen)",
            key[0],
            key[1],
            seconds,
            time.time() - cold.seen_at,
        )
        return seconds

    async def poll_once(self) -> bool:
        """One look at every stream; True when some replica count changed."""
        now = time.time()
        streams = sorted({s for item in self.scaled.values() for s in item.streams})
        try:
            found = await asyncio.gather(*(self._read_backlog(s, now) for s in streams))
        except Exception as exc:  # Redis away: keep the counts, say so once
            message = f"local KEDA: cannot read the queue: {type(exc).__name__}: {exc}"
            if message != self.error:
                log.warning("%s", message)
            self.error = message
            return False
        self.error = ""
        self.backlogs = dict(zip(streams, found, strict=True))
        changed = False
        for key, item in list(self.scaled.items()):
            scaling = self.scaling[key]
            before = scaling.replicas
            after = scaling.next_replicas(item, self.backlogs, now)
            if after == before:
                continue
            changed = True
            if before == 0:
                oldest = max((self.backlogs[s].oldest_age_seconds for s in item.streams), default=0.0)
                self.cold_starts[key] = ColdStart(first_message_at=now - oldest, seen_at=now)
            if after == 0:
                self.cold_starts.pop(key, None)
            log.info("%s/%s: local KEDA scales %d -> %d replicas", key[0], key[1], before, after)
        return changed

    async def run(self, stop: asyncio.Event, interval: float = POLL_SECONDS) -> None:
        while not stop.is_set():
            if self.scaled and await self.poll_once():
                self._on_change()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

"""Events posted once and counted after: the same event about the same object within a window
raises the first one's count (at most one write a minute for it) instead of adding another.

A rollout of 50 Endpoints made 987 writes of which 249 were Events; a crash-looping fleet would
post the same Degraded event at every reconcile. client-go's EventCorrelator does the same.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .kube import KubeClient

REPEAT_WINDOW_SECONDS = 600.0  # the same event again within this: counted, not posted anew
COUNT_WRITE_SECONDS = 60.0  # the count of a repeated event is written at most this often
MAX_REMEMBERED = 10_000  # bounded memory: the oldest are forgotten first

Key = tuple[str, str, str, str, str]  # (namespace, involved uid or name, type, reason, message)


@dataclass
class _Seen:
    event_name: str
    namespace: str
    count: int
    first: float
    written: float  # when the count was last written


class EventRecorder:
    def __init__(self, kube: KubeClient, clock: Any = time.monotonic) -> None:
        self._kube = kube
        self._clock = clock
        self._seen: dict[Key, _Seen] = {}
        self.posted = 0
        self.counted = 0

    async def record(self, involved: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = involved["metadata"]
        namespace = meta.get("namespace", "default")
        key = (namespace, str(meta.get("uid") or meta["name"]), type_, reason, message)
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen.first <= REPEAT_WINDOW_SECONDS:
            seen.count += 1
            if now - seen.written >= COUNT_WRITE_SECONDS:
                seen.written = now
                self.counted += 1
                await self._kube.count_event(seen.namespace, seen.event_name, seen.count)
            return
        name = await self._kube.post_event(involved, type_, reason, message)
        self.posted += 1
        if name is not None:
            self._remember(key, _Seen(name, namespace, 1, now, now))

    def _remember(self, key: Key, seen: _Seen) -> None:
        self._seen.pop(key, None)
        self._seen[key] = seen
        while len(self._seen) > MAX_REMEMBERED:
            del self._seen[next(iter(self._seen))]

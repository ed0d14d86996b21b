"""A bounded in-memory queue of events between the request path and the writer thread.

`put` is a lock, an addition and a deque append (no wake-up call: the writer polls every
POLL_SECONDS), so a sampled request pays well under a microsecond for it."""

from __future__ import annotations

import threading
from collections import deque

from berth_serving.capture.event import Event


class EventBuffer:
    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.bytes = 0
        self._events: deque[Event] = deque()
        self._lock = threading.Lock()

    def put(self, event: Event) -> bool:
        """False when the event does not fit (the caller counts the drop)."""
        size = event.size
        with self._lock:
            if self.bytes + size > self.limit_bytes:
                return False
            self.bytes += size
            self._events.append(event)
        return True

    def take(self) -> list[Event]:
        """Everything queued, oldest first."""
        with self._lock:
            events = list(self._events)
            self._events.clear()
            self.bytes = 0
        return events

    def __len__(self) -> int:
        return len(self._events)

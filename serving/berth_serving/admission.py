"""A budget on the request bytes the server holds at once.

Each inference request reserves its body size (its Content-Length, or the payload limit
for a chunked body) before the body is read, and gives it back once its answer is sent; so
the bodies being read, decoded, queued for the model or answered add up to at most the
budget, `BODY_BUDGET_PAYLOADS` x the payload limit by default. A request that does not fit
waits, first come first served, while the socket keeps the rest of its body, and after
`wait_seconds` is a 503 with Retry-After. Event loop thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from berth_serving.errors import HTTPError

# Request bodies held at once, in payload limits: 4 x 6 MiB by default.
BODY_BUDGET_PAYLOADS = 4
# How long a request waits for room before it is refused: brief, as its unread body looks
# stalled to the client (and to an HTTP edge that drops bodies idle for 10 s).
ADMISSION_WAIT_SECONDS = 5.0


class BodyBudget:
    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.used = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    def try_acquire(self, size: int) -> bool:
        """Reserve `size` bytes if they fit now and nobody waits ahead (the usual case)."""
        if not self._waiting and self.used + size <= self.limit:
            self.used += size
            return True
        return False

    async def acquire(self, size: int, wait_seconds: float) -> None:
        """Reserve `size` bytes, waiting at most `wait_seconds` for them (HTTPError 503)."""
        if self.try_acquire(size):
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = (size, future)
        self._waiting.append(entry)
        timer = loop.call_later(max(0.0, wait_seconds), self._give_up, entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(size)  # granted just as the request was cancelled
            else:
                self._forget(entry)
            raise
        finally:
            timer.cancel()

    def release(self, size: int) -> None:
        self.used -= size
        while self._waiting:
            size_wanted, future = self._waiting[0]
            if future.done():
                self._waiting.popleft()
                continue
            if self.used + size_wanted > self.limit:
                break
            self._waiting.popleft()
            self.used += size_wanted
            future.set_result(None)

    def _give_up(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        self._forget(entry)
        if not entry[1].done():
            entry[1].set_exception(
                HTTPError(
                    503,
                    f"too many request bytes in flight (limit {self.limit} bytes); retry shortly",
                    retry_after=1,
                )
            )

    def _forget(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        with contextlib.suppress(ValueError):  # already granted or given up
            self._waiting.remove(entry)
        # A waiter that left may have been what held the others back.
        self.release(0)

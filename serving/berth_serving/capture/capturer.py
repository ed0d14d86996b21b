"""What callers use: `sampled(inference_id)` (cheap, decide before keeping a body) and
`offer(...)` (append to the bounded buffer, never wait). The realtime server calls both on
its event loop; the async worker and batch transform can do the same with their own source."""

from __future__ import annotations

import threading
import time

from berth_serving.capture.buffer import EventBuffer
from berth_serving.capture.event import EVENT_OVERHEAD_BYTES, Event
from berth_serving.capture.sampling import SAMPLING_BUCKETS, threshold
from berth_serving.capture.settings import CaptureConfig
from berth_serving.capture.writer import CaptureWriter

# How long a stopping server waits for the buffer and the open file to be uploaded.
SHUTDOWN_SECONDS = 5.0


class CaptureStats:
    """Events written and dropped (by reason): read by /metrics."""

    def __init__(self) -> None:
        self.written = 0
        self.dropped: dict[str, int] = {}
        self._lock = threading.Lock()

    def add_written(self, count: int) -> None:
        with self._lock:
            self.written += count

    def add_dropped(self, reason: str, count: int) -> None:
        if count:
            with self._lock:
                self.dropped[reason] = self.dropped.get(reason, 0) + count


class Capturer:
    def __init__(self, config: CaptureConfig) -> None:
        from zlib import crc32

        self.config = config
        self.stats = CaptureStats()
        self.buffer = EventBuffer(config.buffer_bytes)
        self.writer = CaptureWriter(config, self.buffer, self.stats.add_written, self.stats.add_dropped)
        self._crc32 = crc32
        self._threshold = threshold(config.sampling_percentage)
        self._input = config.captures_input
        self._output = config.captures_output
        self._started = False
        self._closed = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self.writer.start()

    def sampled(self, inference_id: bytes) -> bool:
        return self._crc32(inference_id) % SAMPLING_BUCKETS < self._threshold

    def offer(
        self,
        inference_id: bytes,
        input_type: bytes,
        data: bytes | None,
        output_type: bytes,
        answer: bytes | None,
        source: str | None = None,
    ) -> bool:
        """Queue a sampled event; False when it was dropped (the buffer is full, or closed)."""
        if self._closed:
            self.stats.add_dropped("shutdown", 1)
            return False
        data = data if self._input else None
        answer = answer if self._output else None
        size = EVENT_OVERHEAD_BYTES + (len(data) if data else 0) + (len(answer) if answer else 0)
        event = Event(
            inference_id,
            time.time(),
            input_type,
            data,
            output_type,
            answer,
            source or self.config.source,
            size,
        )
        if self.buffer.put(event):
            return True
        self.stats.add_dropped("buffer_full", 1)
        return False

    def close(self, timeout: float = SHUTDOWN_SECONDS) -> None:
        """Flush and upload what is buffered; what is not done within `timeout` is dropped."""
        if self._closed:
            return
        self._closed = True
        if not self._started:
            self.stats.add_dropped("shutdown", len(self.buffer.take()))
            return
        self.stats.add_dropped("shutdown", self.writer.close(timeout))

"""The writer thread: events -> JSON lines -> files DEST/ENDPOINT/VARIANT/yyyy/mm/dd/hh/UUID.jsonl.

A file is closed and committed (storage.open_output: renamed into place, or one S3 PUT /
completed multipart upload) when it reaches maxFileBytes, is maxFileAgeSeconds old, or the
hour of its events changes. A write or commit that fails drops that file's events (counted,
reason upload_failed); the next file tries again, so the writer recovers when the
destination is back."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from berth_serving.capture.buffer import EventBuffer
from berth_serving.capture.event import Event, EventIds, event_line, hour_path
from berth_serving.capture.settings import CaptureConfig
from berth_serving.storage import AtomicWriter, Location, StorageError, open_output, parse_uri

log = logging.getLogger("berth.serving")

# How often the writer looks at the buffer and the open file's age.
POLL_SECONDS = 0.02


def file_location(root: Location, config: CaptureConfig, at: float) -> Location:
    return root.child(f"{config.endpoint}/{config.variant}/{hour_path(at)}/{uuid.uuid4()}.jsonl")


class _OpenFile:
    def __init__(self, where: Location, hour: str) -> None:
        self.where = where
        self.hour = hour
        self.opened = time.monotonic()
        self.bytes = 0
        self.events = 0
        self.output: AtomicWriter | None = None  # opened with the first line


class CaptureWriter:
    def __init__(
        self,
        config: CaptureConfig,
        buffer: EventBuffer,
        written: Callable[[int], None],
        dropped: Callable[[str, int], None],
    ) -> None:
        self.config = config
        self.root = parse_uri(config.destination_uri)
        self.buffer = buffer
        self._written = written
        self._dropped = dropped
        self._file: _OpenFile | None = None
        self._ids = EventIds()
        self._failing = False
        self._stop = threading.Event()
        self._abandoned = False  # close() ran out of time: what is left was counted as shutdown
        self._lock = threading.Lock()  # held while events are between the buffer and a commit
        self._thread = threading.Thread(target=self._run, name="berth-capture", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self.step()
        self.step()
        with self._lock:
            self._close_file()

    def step(self) -> None:
        with self._lock:
            for event in self.buffer.take():
                self._append(event)
            current = self._file
            if current is not None and time.monotonic() - current.opened >= self.config.max_file_age_seconds:
                self._close_file()

    def _append(self, event: Event) -> None:
        line = event_line(event, self.config, self._ids)
        hour = hour_path(event.at)
        current = self._file
        if current is not None and current.hour != hour:
            self._close_file()
            current = None
        if current is None:
            current = self._file = _OpenFile(file_location(self.root, self.config, event.at), hour)
        try:
            if current.output is None:
                current.output = open_output(current.where, durable=False, bounded=True)
            current.output.write(line)
        except StorageError as error:
            current.events += 1
            self._fail(current, error)
            return
        current.events += 1
        current.bytes += len(line)
        if current.bytes >= self.config.max_file_bytes:
            self._close_file()

    def _close_file(self) -> None:
        current = self._file  # stays the open file during the commit: close() may count it
        if current is None or current.output is None:
            self._file = None
            return
        try:
            current.output.commit()
        except StorageError as error:
            self._fail(current, error)
            return
        self._file = None
        if not self._abandoned:
            self._written(current.events)
        if self._failing:
            self._failing = False
            log.info("capture destination is back", extra={"fields": {"uri": current.where.uri}})

    def _fail(self, current: _OpenFile, error: StorageError) -> None:
        if current.output is not None:
            current.output.abort()
        if self._file is current:
            self._file = None
        if not self._abandoned:
            self._dropped("upload_failed", current.events)
        if not self._failing:
            self._failing = True
            log.warning("capture upload failed", extra={"fields": {"error": str(error)}})

    def close(self, timeout: float) -> int:
        """Flush the buffer and commit the open file within `timeout`; the events left
        unwritten when it ran out (the caller counts them as dropped, reason shutdown)."""
        self._stop.set()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            return 0
        self._abandoned = True
        left = len(self.buffer)
        current = self._file
        return left + (current.events if current is not None else 0)

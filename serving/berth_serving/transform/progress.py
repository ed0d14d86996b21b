"""A one-line progress display on stderr (redrawn in place) when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from berth_serving.transform.engine import Listener, Summary

REDRAW_SECONDS = 0.2


class ProgressLine(Listener):
    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.total = 0
        self.finished_objects = 0
        self.records = 0
        self.current = ""
        self.started_at = time.monotonic()
        self._drawn_at = 0.0

    def started(self, total_objects: int) -> None:
        self.total = total_objects
        self.started_at = time.monotonic()
        self._draw(force=True)

    def object_started(self, name: str) -> None:
        self.current = name
        self._draw(force=True)

    def records_done(self, count: int) -> None:
        self.records += count
        self._draw()

    def object_finished(self, name: str, skipped: bool) -> None:
        self.finished_objects += 1
        self._draw(force=True)

    def finished(self, summary: Summary) -> None:
        self._draw(force=True)
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn_at < REDRAW_SECONDS:
            return
        self._drawn_at = now
        rate = self.records / max(now - self.started_at, 1e-9)
        width = 20
        filled = width * self.finished_objects // self.total if self.total else width
        bar = "#" * filled + "-" * (width - filled)
        line = (
            f"[{bar}] {self.finished_objects}/{self.total} objects  {self.records:,} records"
            f"  {rate:,.0f} records/s  {self.current}"
        )
        self.stream.write("\r" + line[:150].ljust(100))
        self.stream.flush()

"""Random (version 4) UUIDs cut from one os.urandom read per 256: uuid.uuid4() per request
cost several times more. One thread per instance (the event loop, or the capture writer)."""

from __future__ import annotations

import os

_BATCH = 256


class Uuid4s:
    __slots__ = ("_at", "_pool")

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def hex(self) -> str:
        """32 hex digits, no dashes."""
        if self._at >= len(self._pool):
            self._pool, self._at = os.urandom(16 * _BATCH), 0
        raw = bytearray(self._pool[self._at : self._at + 16])
        self._at += 16
        raw[6] = raw[6] & 0x0F | 0x40  # version 4
        raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
        return raw.hex()

    def dashed(self) -> str:
        """The usual 8-4-4-4-12 form."""
        h = self.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

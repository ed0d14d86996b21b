"""One captured event as its JSON line (API.md "Data capture"), built on the writer thread."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import orjson

from berth_serving.capture.settings import CaptureConfig
from berth_serving.uuids import Uuid4s

# Bytes an event is reckoned to hold in the buffer besides its payloads (ids, tuple, strings).
EVENT_OVERHEAD_BYTES = 256


@dataclass(slots=True)
class Event:
    """What the request path hands over: raw bytes, no formatting."""

    inference_id: bytes
    at: float  # time.time() of the answer
    input_type: bytes
    input: bytes | None
    output_type: bytes
    output: bytes | None
    source: str

    size: int  # what it holds in the buffer: payloads plus EVENT_OVERHEAD_BYTES


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def text_encoding(media: str) -> str | None:
    """The encoding a listed text type is written with."""
    if media == "text/csv":
        return "CSV"
    if media.endswith(("/json", "+json", "/jsonlines", "/x-jsonlines")):
        return "JSON"
    return None


def _payload(content_type: bytes, data: bytes, mode: str, text_types: tuple[str, ...]) -> dict[str, str]:
    observed = content_type.decode("latin-1")
    media = media_type(observed)
    if media in text_types:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            encoding = text_encoding(media) or "TEXT"
            return {"observedContentType": observed, "mode": mode, "data": text, "encoding": encoding}
    return {
        "observedContentType": observed,
        "mode": mode,
        "data": base64.b64encode(data).decode("ascii"),
        "encoding": "BASE64",
    }


_second: list[Any] = [-1, ""]  # the last second formatted (the writer thread's only)


def inference_time(at: float) -> str:
    """UTC, ISO 8601 with Z, milliseconds."""
    seconds = int(at)
    if _second[0] != seconds:
        _second[0], _second[1] = seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{_second[1]}.{int((at - seconds) * 1000):03d}Z"


class EventIds:
    """eventId values: uuid4 in the dashed form. The writer thread only."""

    __slots__ = ("_uuids",)

    def __init__(self) -> None:
        self._uuids = Uuid4s()

    def next(self) -> str:
        return self._uuids.dashed()


def hour_path(at: float) -> str:
    """yyyy/mm/dd/hh of the event's time, UTC."""
    return time.strftime("%Y/%m/%d/%H", time.gmtime(at))


def event_line(event: Event, config: CaptureConfig, ids: EventIds) -> bytes:
    data: dict[str, Any] = {}
    if event.input is not None:
        data["endpointInput"] = _payload(event.input_type, event.input, "INPUT", config.text_content_types)
    if event.output is not None:
        data["endpointOutput"] = _payload(
            event.output_type, event.output, "OUTPUT", config.text_content_types
        )
    line = {
        "captureData": data,
        "eventMetadata": {
            "eventId": ids.next(),
            "inferenceId": event.inference_id.decode("latin-1"),
            "inferenceTime": inference_time(event.at),
            "variant": config.variant,
            "source": event.source,
        },
        "eventVersion": "0",
    }
    return orjson.dumps(line) + b"\n"

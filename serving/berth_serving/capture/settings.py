"""The capture settings of one serving process: BERTH_CAPTURE / `berth serve --capture`, a
JSON object the operator's planner writes (camelCase keys, as in EndpointConfig.spec.dataCapture)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_DESTINATION = re.compile(r"^(s3://[^/]+|file://.+)")
MODES = ("Input", "Output")
# The planner says async for an async variant's server (operator planner/capture.py), and
# transform for a TransformJob's pods (planner/transform/job.py).
SOURCES = ("realtime", "shadow", "async", "transform")
DEFAULT_TEXT_CONTENT_TYPES = ("text/csv", "application/json")
DEFAULT_MAX_FILE_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_FILE_AGE_SECONDS = 60.0
DEFAULT_BUFFER_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class CaptureConfig:
    destination_uri: str
    endpoint: str
    variant: str
    sampling_percentage: float
    capture_modes: tuple[str, ...] = MODES
    text_content_types: tuple[str, ...] = DEFAULT_TEXT_CONTENT_TYPES
    source: str = "realtime"
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_file_age_seconds: float = DEFAULT_MAX_FILE_AGE_SECONDS
    buffer_bytes: int = DEFAULT_BUFFER_BYTES

    @property
    def captures_input(self) -> bool:
        return "Input" in self.capture_modes

    @property
    def captures_output(self) -> bool:
        return "Output" in self.capture_modes


# JSON key -> field, in the contract's order.
_KEYS = {
    "destinationUri": "destination_uri",
    "endpoint": "endpoint",
    "variant": "variant",
    "samplingPercentage": "sampling_percentage",
    "captureModes": "capture_modes",
    "textContentTypes": "text_content_types",
    "source": "source",
    "maxFileBytes": "max_file_bytes",
    "maxFileAgeSeconds": "max_file_age_seconds",
    "bufferBytes": "buffer_bytes",
}
_REQUIRED = ("destinationUri", "endpoint", "variant", "samplingPercentage")


def capture_to_json(config: CaptureConfig) -> str:
    out: dict[str, Any] = {}
    for key, name in _KEYS.items():
        value = getattr(config, name)
        out[key] = list(value) if isinstance(value, tuple) else value
    return json.dumps(out)


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"capture {key} must be a number, not {value!r}")
    return float(value)


def _names(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"capture {key} must be a non-empty list of strings")
    return tuple(value)


def capture_from_json(text: str) -> CaptureConfig | None:
    """None for an empty value; ValueError naming the key that is wrong."""
    if not text.strip():
        return None
    try:
        item = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"capture settings are not JSON: {error}") from None
    if not isinstance(item, dict):
        raise ValueError("capture settings must be a JSON object")
    unknown = sorted(set(item) - set(_KEYS))
    if unknown:
        raise ValueError(f"capture settings: unknown key {unknown[0]} (known: {', '.join(_KEYS)})")
    for key in _REQUIRED:
        if key not in item:
            raise ValueError(f"capture settings need {key}")
    values: dict[str, Any] = {}
    for key in ("destinationUri", "endpoint", "variant"):
        if not isinstance(item[key], str) or not item[key]:
            raise ValueError(f"capture {key} must be a non-empty string")
        values[_KEYS[key]] = item[key]
    # A plain check, not storage.parse_uri: berth_serving.config imports this module, and the
    # operator imports config without boto3 (its image has no storage client).
    if not _DESTINATION.match(str(item["destinationUri"])):
        raise ValueError("capture destinationUri must be an s3://BUCKET/... or file://... URI")
    percentage = _number("samplingPercentage", item["samplingPercentage"])
    if not 0 <= percentage <= 100:
        raise ValueError(f"capture samplingPercentage must be 0 to 100, not {item['samplingPercentage']}")
    values["sampling_percentage"] = percentage
    if "captureModes" in item:
        modes = _names("captureModes", item["captureModes"])
        if not set(modes) <= set(MODES) or len(set(modes)) != len(modes):
            raise ValueError("capture captureModes must name Input, Output or both, each once")
        values["capture_modes"] = modes
    if "textContentTypes" in item:
        values["text_content_types"] = tuple(
            t.strip().lower() for t in _names("textContentTypes", item["textContentTypes"])
        )
    if "source" in item:
        if item["source"] not in SOURCES:
            raise ValueError(f"capture source must be one of {', '.join(SOURCES)}, not {item['source']!r}")
        values["source"] = item["source"]
    for key in ("maxFileBytes", "bufferBytes"):
        if key in item:
            value = item[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"capture {key} must be a positive integer, not {value!r}")
            values[_KEYS[key]] = value
    if "maxFileAgeSeconds" in item:
        age = _number("maxFileAgeSeconds", item["maxFileAgeSeconds"])
        if age <= 0:
            raise ValueError(f"capture maxFileAgeSeconds must be positive, not {item['maxFileAgeSeconds']}")
        values["max_file_age_seconds"] = age
    return CaptureConfig(**values)

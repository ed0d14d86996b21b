"""Data capture: what a variant's serving pods are told about capturing (BERTH_CAPTURE).

One function, so the cluster, local mode and `berth render` hand the runtime the same settings.
The source marks where the traffic came from: a shadow variant sees a mirrored copy, and every
request an async fleet's replica answers was taken off its queue by the worker beside it.
"""

from __future__ import annotations

import json
from typing import Any

from berth_serving.config import ENV

from .fleet import VariantPlan

CAPTURE_ENV = ENV["capture"]


def capture_source(variant: VariantPlan) -> str:
    if variant.shadow:
        return "shadow"
    if variant.async_config is not None:
        return "async"
    return "realtime"


def capture_settings(variant: VariantPlan) -> dict[str, Any] | None:
    """The runtime's capture settings for this variant, or None when the config captures nothing."""
    capture = variant.data_capture
    if capture is None or capture.sampling_percentage <= 0:
        return None
    return {
        "destinationUri": capture.destination_uri,
        "endpoint": variant.endpoint,
        "variant": variant.name,
        "samplingPercentage": capture.sampling_percentage,
        "captureModes": list(capture.capture_modes),
        "textContentTypes": list(capture.text_content_types),
        "source": capture_source(variant),
        "maxFileBytes": capture.max_file_bytes,
        "maxFileAgeSeconds": capture.max_file_age_seconds,
    }


def capture_env(variant: VariantPlan) -> dict[str, str]:
    settings = capture_settings(variant)
    if settings is None:
        return {}
    return {CAPTURE_ENV: json.dumps(settings, separators=(",", ":"), sort_keys=True)}

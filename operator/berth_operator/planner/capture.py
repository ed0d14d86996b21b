"""Data capture: what a variant's serving pods are told about capturing (BERTH_CAPTURE).

One function, so the cluster, local mode and `berth render` hand the runtime the same settings.
The source marks where the traffic came from: a shadow variant sees a mirrored copy, and every
request an async fleet's replica answers was taken off its queue by the worker beside it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from berth_serving.config import ENV

from ..api import Condition, DataCapture, EndpointConfig, EndpointStatus
from .conditions import condition
from .fleet import VariantPlan
from .types import FleetMetrics

CAPTURE_ENV = ENV["capture"]


def capture_source(variant: VariantPlan) -> str:
    if variant.shadow:
        return "shadow"
    if variant.async_config is not None:
        return "async"
    return "realtime"


def runtime_capture(
    capture: DataCapture | None, endpoint: str, variant: str, source: str
) -> dict[str, Any] | None:
    """What `berth serve` or `berth transform` is told (--capture / BERTH_CAPTURE), or None when
    nothing is captured. The files go to DEST/ENDPOINT/VARIANT/..., marked with source."""
    if capture is None or capture.sampling_percentage <= 0:
        return None
    return {
        "destinationUri": capture.destination_uri,
        "endpoint": endpoint,
        "variant": variant,
        "samplingPercentage": capture.sampling_percentage,
        "captureModes": list(capture.capture_modes),
        "textContentTypes": list(capture.text_content_types),
        "source": source,
        "maxFileBytes": capture.max_file_bytes,
        "maxFileAgeSeconds": capture.max_file_age_seconds,
    }


def capture_credentials(capture: DataCapture | None) -> list[dict[str, Any]]:
    """envFrom of the container that writes the captures: dataCapture.credentialsSecretRef's
    Secret (absent: the pod's own identity, such as a ServiceAccount bound to a cloud role)."""
    if capture is None or capture.sampling_percentage <= 0 or capture.credentials_secret_ref is None:
        return []
    return [{"secretRef": {"name": capture.credentials_secret_ref.name}}]


def capture_settings(variant: VariantPlan) -> dict[str, Any] | None:
    """The runtime's capture settings for this variant, or None when the config captures nothing."""
    return runtime_capture(variant.data_capture, variant.endpoint, variant.name, capture_source(variant))


def capture_env(variant: VariantPlan) -> dict[str, str]:
    settings = capture_settings(variant)
    if settings is None:
        return {}
    return {CAPTURE_ENV: json.dumps(settings, separators=(",", ":"), sort_keys=True)}


CAPTURE_DEGRADED = "CaptureDegraded"


def capture_health(
    previous: EndpointStatus,
    config: EndpointConfig | None,
    metrics: FleetMetrics | None,
    now: datetime,
    generation: int | None,
) -> tuple[Condition | None, int | None]:
    """CaptureDegraded and the drop count to remember, for the serving config's fleet.

    True while its replicas drop captured events: their berth_capture_dropped_total grew since
    the count the status remembers (a smaller count means replicas restarted: counted afresh).
    Not scraped (no replica yet): what the status says stays. No dataCapture: no condition."""
    if config is None or config.spec.data_capture is None:
        return None, None
    stored = previous.capture_dropped_total
    before = next((c for c in previous.conditions if c.type == CAPTURE_DEGRADED), None)
    if metrics is None:
        return before, stored
    seen = int(metrics.capture_dropped)
    new = seen - stored if stored is not None and seen >= stored else seen
    if new > 0:
        message = (
            f"{new} captured events dropped since the last look: the replicas' berth_capture_dropped_total"
            "{reason} says why (buffer_full, upload_failed, shutdown)"
        )
        return condition(
            previous.conditions, CAPTURE_DEGRADED, True, "EventsDropped", message, now, generation
        ), seen
    message = "no captured event dropped since the last look"
    return condition(
        previous.conditions, CAPTURE_DEGRADED, False, "AsExpected", message, now, generation
    ), seen

"""A new fleet's health for auto-rollback, from its replicas' Prometheus /metrics. Pure parsing."""

from __future__ import annotations

import math
from collections.abc import Iterable

from ..planner.types import FleetMetrics

INVOCATIONS = "berth_invocations_total"
MODEL_LATENCY = "berth_model_latency_seconds"


def fleet_metrics(texts: Iterable[str]) -> FleetMetrics:
    """Sum invocations (and 5xx) over every replica; p99 from the summed latency histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == INVOCATIONS:
                    requests += sample.value
                    if sample.labels.get("code", "").startswith("5"):
                        errors += sample.value
                elif sample.name == MODEL_LATENCY + "_bucket":
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return FleetMetrics(requests=requests, errors_5xx=errors, p99_latency_ms=_p99_ms(buckets))


def _p99_ms(buckets: dict[float, float]) -> float | None:
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    for bound in bounds:
        if buckets[bound] >= 0.99 * total:
            finite = bound if not math.isinf(bound) else (bounds[-2] if len(bounds) > 1 else 0.0)
            return finite * 1000.0
    return None

"""A fleet's health for auto rollback, reduced from its replicas' metrics. Pure, and the one place
both shells compute it: the operator (pods' /metrics or a Prometheus query) and local mode
(replicas' /metrics) hand over what they read, and get the same FleetMetrics for the same numbers.

    metrics_wanted(status) -> config name | None     (the planner's question: whose metrics, when)
    from_texts(prometheus texts) -> FleetMetrics
    from_series(requests by code, latency buckets) -> FleetMetrics

p99 is interpolated inside its histogram bucket as Prometheus' histogram_quantile does (the
bucket's upper bound alone would have said 25 ms where Prometheus says 22 ms).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace

from berth_serving.metrics import CAPTURE_DROPPED, INVOCATIONS_TOTAL, MODEL_LATENCY

from ..api import EndpointConfig, EndpointStatus
from .types import FleetMetrics

QUANTILE = 0.99


def fleets_to_scrape(status: EndpointStatus | None, configs: Mapping[str, EndpointConfig]) -> list[str]:
    """The configs whose fleets' /metrics the next plan reads: the one a rollout bakes, and the
    serving one while it captures data (its drops make the CaptureDegraded condition)."""
    names = []
    baking = metrics_wanted(status)
    if baking is not None:
        names.append(baking)
    serving = status.endpoint_config_name if status is not None else None
    config = configs.get(serving) if serving else None
    if serving and serving not in names and config is not None and config.spec.data_capture is not None:
        names.append(serving)
    return names


def metrics_wanted(status: EndpointStatus | None) -> str | None:
    """The config whose fleet's metrics the next plan judges: the new fleet of a rollout that bakes."""
    rollout = status.rollout if status is not None else None
    if rollout is None or rollout.state != "Baking":
        return None
    return rollout.target_endpoint_config_name


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets {upper bound: count}."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return previous_bound  # the answer lies above the largest finite bucket
            if count == previous_count:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (
                count - previous_count
            )
        previous_bound, previous_count = bound, count
    return previous_bound


def from_series(
    requests_by_code: Mapping[str, float], latency_buckets: Mapping[float, float]
) -> FleetMetrics:
    """Requests by HTTP code and cumulative model-latency buckets (seconds), summed over a fleet."""
    requests = sum(requests_by_code.values())
    errors = sum(count for code, count in requests_by_code.items() if str(code).startswith("5"))
    p99 = histogram_quantile(QUANTILE, latency_buckets)
    return FleetMetrics(
        requests=requests, errors_5xx=errors, p99_latency_ms=None if p99 is None else p99 * 1000.0
    )


def from_texts(texts: Iterable[str]) -> FleetMetrics:
    """The Prometheus text of each replica of a fleet (cumulative counters), summed."""
    from prometheus_client.parser import text_string_to_metric_families

    by_code: dict[str, float] = {}
    buckets: dict[float, float] = {}
    dropped = 0.0
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == INVOCATIONS_TOTAL:
                    code = str(sample.labels.get("code", ""))
                    by_code[code] = by_code.get(code, 0.0) + sample.value
                elif sample.name == f"{MODEL_LATENCY}_bucket":
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
                elif sample.name == f"{CAPTURE_DROPPED}_total":
                    dropped += sample.value
    return replace(from_series(by_code, buckets), capture_dropped=dropped)

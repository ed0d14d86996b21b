"""A fleet's health from its replicas' Prometheus text: the one reduction both shells use."""

from __future__ import annotations

import pytest
from berth_operator.api import EndpointStatus, RolloutStatus
from berth_operator.planner.fleetmetrics import from_series, from_texts, histogram_quantile, metrics_wanted

REPLICA = """# TYPE berth_invocations_total counter
berth_invocations_total{{code="200",model="m",variant="v"}} {ok}
berth_invocations_total{{code="500",model="m",variant="v"}} {bad}
# TYPE berth_model_latency_seconds histogram
berth_model_latency_seconds_bucket{{le="0.001",model="m",variant="v"}} {fast}
berth_model_latency_seconds_bucket{{le="0.01",model="m",variant="v"}} {total}
berth_model_latency_seconds_bucket{{le="+Inf",model="m",variant="v"}} {total}
berth_model_latency_seconds_count{{model="m",variant="v"}} {total}
berth_model_latency_seconds_sum{{model="m",variant="v"}} 0.1
"""


def test_sums_replicas_and_interpolates_p99_as_prometheus_does() -> None:
    metrics = from_texts(
        [
            REPLICA.format(ok=90, bad=10, fast=99, total=100),
            REPLICA.format(ok=100, bad=0, fast=100, total=100),
        ]
    )
    assert metrics.requests == 200 and metrics.errors_5xx == 10
    assert metrics.error_rate_percent == 5.0
    # rank 198 of 200, 199 under 1 ms: 198/199 of the way through the first bucket
    assert metrics.p99_latency_ms == pytest.approx(1.0 * 198 / 199)
    slow = from_texts([REPLICA.format(ok=1, bad=0, fast=50, total=100)])
    # local mode once said 10 ms here (the bucket's bound) while the operator said 9.82 ms
    assert slow.p99_latency_ms == pytest.approx(1.0 + 9.0 * (99 - 50) / 50)


def test_histogram_quantile_edges() -> None:
    assert histogram_quantile(0.99, {}) is None
    assert histogram_quantile(0.99, {0.1: 0, float("inf"): 0}) is None
    assert histogram_quantile(0.99, {0.1: 10, float("inf"): 100}) == 0.1  # above the largest bound
    assert histogram_quantile(0.5, {0.1: 0, 0.2: 10, float("inf"): 10}) == pytest.approx(0.15)


def test_series_and_texts_agree() -> None:
    text = REPLICA.format(ok=90, bad=10, fast=60, total=100)
    series = from_series({"200": 90, "500": 10}, {0.001: 60, 0.01: 100, float("inf"): 100})
    assert from_texts([text]) == series


def test_no_replicas_no_numbers() -> None:
    metrics = from_texts([])
    assert metrics.requests == 0 and metrics.p99_latency_ms is None


def test_metrics_are_wanted_while_a_rollout_bakes_only() -> None:
    rollout = RolloutStatus(target_endpoint_config_name="cfg2", started_at="2026-01-01T00:00:00Z")
    assert metrics_wanted(None) is None
    assert metrics_wanted(EndpointStatus(rollout=rollout)) is None  # provisioning
    baking = rollout.model_copy(update={"state": "Baking"})
    assert metrics_wanted(EndpointStatus(rollout=baking)) == "cfg2"

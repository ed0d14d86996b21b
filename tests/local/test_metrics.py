"""A fleet's health from its replicas' Prometheus text (pure)."""

from __future__ import annotations

from berth_operator.local.metrics import fleet_metrics

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


def test_sums_replicas_and_reads_p99_from_the_histogram() -> None:
    metrics = fleet_metrics(
        [
            REPLICA.format(ok=90, bad=10, fast=99, total=100),
            REPLICA.format(ok=100, bad=0, fast=100, total=100),
        ]
    )
    assert metrics.requests == 200 and metrics.errors_5xx == 10
    assert metrics.error_rate_percent == 5.0
    assert metrics.p99_latency_ms == 1.0  # 199 of 200 calls under 1 ms
    slow = fleet_metrics([REPLICA.format(ok=1, bad=0, fast=50, total=100)])
    assert slow.p99_latency_ms == 10.0


def test_no_replicas_no_numbers() -> None:
    metrics = fleet_metrics([])
    assert metrics.requests == 0 and metrics.p99_latency_ms is None

"""Prometheus metrics of one serving process. The names are a contract: the operator's
auto-rollback and the HPA (through prometheus-adapter) read them.

Label children are bound once, so the hot path is a dict lookup and an observe.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# `*_created` series double the exposition and nothing here reads them.
disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Sub-millisecond to a minute: a no-op model answers in ~0.1 ms, the default timeout is 60 s.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self, variant: str, model: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("variant", "model")
        self._invocations = Counter(
            "berth_invocations",
            "Inference requests answered, by HTTP status code.",
            (*labels, "code"),
            registry=self.registry,
        )
        self.model_latency = Histogram(
            "berth_model_latency_seconds",
            "Time inside ONNX Runtime per request (the whole batch call it was part of).",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(variant, model)
        self.overhead_latency = Histogram(
            "berth_overhead_latency_seconds",
            "Request time minus model time: parsing, queueing, encoding.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(variant, model)
        self.batch_size = Histogram(
            "berth_batch_size",
            "Rows per ONNX Runtime call.",
            labels,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        ).labels(variant, model)
        self._inflight = Gauge(
            "berth_inflight_requests",
            "Inference requests being handled now.",
            labels,
            registry=self.registry,
        ).labels(variant, model)
        self.model_load_seconds = Gauge(
            "berth_model_load_seconds",
            "Seconds it took to fetch and load the model.",
            ("model",),
            registry=self.registry,
        ).labels(model)
        self._labels = (variant, model)
        self._by_code = {
            code: self._invocations.labels(variant, model, str(code)) for code in (200, 400, 503)
        }

    def track_inflight(self, read: Callable[[], float]) -> None:
        """The gauge reads the live count at scrape time: nothing to update per request."""
        self._inflight.set_function(read)

    def count(self, code: int) -> None:
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self._invocations.labels(*self._labels, str(code))
        child.inc()

    def observe_batch(self, rows: int, seconds: float) -> None:
        self.batch_size.observe(rows)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

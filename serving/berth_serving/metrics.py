"""Prometheus metrics of one serving process. The names are a contract: the operator's
auto-rollback and the HPA (through prometheus-adapter) read them.

The hot path must stay cheap, so the numbers live in plain Python objects, each written by
a single thread (request metrics by the event loop, batch sizes by the ORT worker), and a
collector turns them into Prometheus families only when `/metrics` is scraped. An
observation is a bisect and two additions, with no lock.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The metric names: the one place they are spelled. The operator, local mode and the chart's
# adapter rules import them from here.
INVOCATIONS = "berth_invocations"  # a counter: exposed as berth_invocations_total
INVOCATIONS_TOTAL = INVOCATIONS + "_total"
MODEL_LATENCY = "berth_model_latency_seconds"
OVERHEAD_LATENCY = "berth_overhead_latency_seconds"
BATCH_SIZE = "berth_batch_size"
INFLIGHT = "berth_inflight_requests"
MODEL_LOAD = "berth_model_load_seconds"
WARMUP = "berth_warmup_seconds"
STAGE_LATENCY = "berth_stage_latency_seconds"
# Data capture (berth_serving.capture): counters exposed with _total.
CAPTURE_EVENTS = "berth_capture_events"
CAPTURE_DROPPED = "berth_capture_dropped"
CAPTURE_BUFFER = "berth_capture_buffer_bytes"
# What prometheus-adapter (or KEDA's Prometheus trigger) serves to the HPA: the invocations rate.
INVOCATIONS_PER_SECOND = "berth_invocations_per_second"
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


class Histogram:
    """A lock-free histogram for ONE writer thread."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        counts = list(self.counts)  # a snapshot: the writer may be adding meanwhile
        buckets, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            total += count
            buckets.append((floatToGoString(bound), float(total)))
        return buckets


class Metrics:
    def __init__(self, variant: str, model: str) -> None:
        self.labels = [variant, model]
        self.model = model
        self.invocations: dict[int, int] = {}
        self.model_latency = Histogram(LATENCY_BUCKETS)
        self.overhead_latency = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.model_load_seconds: float | None = None
        self.warmup_seconds: float | None = None
        # An inference pipeline's stages, in order: (name, its latency), written by the ORT worker.
        self.stages: list[tuple[str, Histogram]] = []
        self._inflight: Callable[[], float] = lambda: 0.0
        # Data capture: (events written, events dropped by reason, bytes buffered), read at scrape time.
        self._capture: Callable[[], tuple[int, dict[str, int], int]] | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Exporter(self))

    def track_inflight(self, read: Callable[[], float]) -> None:
        """The gauge reads the live count at scrape time: nothing to update per request."""
        self._inflight = read

    def track_capture(self, read: Callable[[], tuple[int, dict[str, int], int]]) -> None:
        self._capture = read

    def count(self, code: int) -> None:
        self.invocations[code] = self.invocations.get(code, 0) + 1

    def observe_batch(self, rows: int, seconds: float) -> None:
        self.batch_size.observe(rows)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def families(self) -> Iterator[Metric]:
        labels = ["variant", "model"]
        invocations = CounterMetricFamily(
            INVOCATIONS, "Inference requests answered, by HTTP status code.", labels=[*labels, "code"]
        )
        for code, count in sorted(dict(self.invocations).items()):
            invocations.add_metric([*self.labels, str(code)], count)
        yield invocations
        for name, text, histogram in (
            (
                MODEL_LATENCY,
                "Time inside ONNX Runtime per request (the whole batch call it was part of).",
                self.model_latency,
            ),
            (
                OVERHEAD_LATENCY,
                "Request time minus model time: parsing, queueing, encoding.",
                self.overhead_latency,
            ),
            (BATCH_SIZE, "Rows per ONNX Runtime call.", self.batch_size),
        ):
            family = HistogramMetricFamily(name, text, labels=labels)
            family.add_metric(self.labels, histogram.cumulative(), sum_value=histogram.sum)
            yield family
        if self.stages:
            stages = HistogramMetricFamily(
                STAGE_LATENCY,
                "Time in each stage of an inference pipeline, per call.",
                labels=[*labels, "stage"],
            )
            for stage, histogram in self.stages:
                stages.add_metric([*self.labels, stage], histogram.cumulative(), sum_value=histogram.sum)
            yield stages
        inflight = GaugeMetricFamily(INFLIGHT, "Inference requests being handled now.", labels=labels)
        inflight.add_metric(self.labels, self._inflight())
        yield inflight
        load = GaugeMetricFamily(MODEL_LOAD, "Seconds it took to fetch and load the model.", labels=["model"])
        if self.model_load_seconds is not None:
            load.add_metric([self.model], self.model_load_seconds)
        yield load
        warmup = GaugeMetricFamily(
            WARMUP, "Seconds the warm-up requests took before the replica said ready.", labels=["model"]
        )
        if self.warmup_seconds is not None:
            warmup.add_metric([self.model], self.warmup_seconds)
        yield warmup
        if self._capture is not None:
            yield from self._capture_families(*self._capture())

    def _capture_families(self, written: int, dropped: dict[str, int], buffered: int) -> Iterator[Metric]:
        variant = self.labels[0]
        events = CounterMetricFamily(CAPTURE_EVENTS, "Captured events written.", labels=["variant"])
        events.add_metric([variant], written)
        yield events
        drops = CounterMetricFamily(
            CAPTURE_DROPPED, "Captured events dropped, by reason.", labels=["variant", "reason"]
        )
        for reason in sorted({"buffer_full", "upload_failed", "shutdown", *dropped}):
            drops.add_metric([variant, reason], dropped.get(reason, 0))
        yield drops
        buffer = GaugeMetricFamily(CAPTURE_BUFFER, "Bytes of captured events waiting to be written.")
        buffer.add_metric([], buffered)
        yield buffer


class _Exporter(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.families()

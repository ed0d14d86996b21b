"""The operator's own /metrics: what each MonitoringSchedule's last execution found, as gauges an
alert rule can page on (a gauge per violated feature), served beside kopf's /healthz.

The gauges are read from the status the planner computed at the last reconcile, so they say
exactly what `kubectl get bms` says; a deleted schedule's series disappear at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .api import MonitoringSchedule, MonitoringScheduleStatus

SCHEDULE_LABELS = ["namespace", "schedule", "endpoint"]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class ScheduleReading:
    endpoint: str
    status: MonitoringScheduleStatus


def _timestamp(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class MonitoringGauges(Collector):
    """The last status of every MonitoringSchedule this operator reconciled."""

    def __init__(self) -> None:
        self._readings: dict[tuple[str, str], ScheduleReading] = {}

    def record(self, schedule: MonitoringSchedule, status: MonitoringScheduleStatus) -> None:
        key = (schedule.metadata.namespace or "default", schedule.name)
        self._readings[key] = ScheduleReading(schedule.spec.endpoint_name, status)

    def forget(self, namespace: str, name: str) -> None:
        self._readings.pop((namespace, name), None)

    def collect(self) -> Iterator[Metric]:
        violated = GaugeMetricFamily(
            "berth_monitoring_feature_violated",
            "1 for each feature the last execution found in violation of the baseline's constraints.",
            labels=[*SCHEDULE_LABELS, "feature"],
        )
        violations = GaugeMetricFamily(
            "berth_monitoring_violations",
            "Constraint violations found by the last execution.",
            labels=SCHEDULE_LABELS,
        )
        records = GaugeMetricFamily(
            "berth_monitoring_records_read",
            "Captured records the last execution read.",
            labels=SCHEDULE_LABELS,
        )
        finished = GaugeMetricFamily(
            "berth_monitoring_last_execution_timestamp_seconds",
            "End of the window the last execution read (Unix time).",
            labels=SCHEDULE_LABELS,
        )
        ready = GaugeMetricFamily(
            "berth_monitoring_ready",
            "1 while the schedule runs and its last execution succeeded (the Ready condition).",
            labels=SCHEDULE_LABELS,
        )
        for (namespace, name), reading in sorted(self._readings.items()):
            labels = [namespace, name, reading.endpoint]
            conditions = {c.type: c.status for c in reading.status.conditions}
            ready.add_metric(labels, 1.0 if conditions.get("Ready") == "True" else 0.0)
            last = reading.status.last_execution
            if last is None:
                continue
            violations.add_metric(labels, float(last.violations or 0))
            records.add_metric(labels, float(last.records_read or 0))
            when = _timestamp(last.time or "")
            if when is not None:
                finished.add_metric(labels, when)
            if (last.violations or 0) > 0:
                for feature in last.violated_features:
                    violated.add_metric([*labels, feature], 1.0)
        yield from (violated, violations, records, finished, ready)


class MetricsServer:
    """GET /metrics on its own port, in the operator's event loop (collecting is a dict walk)."""

    def __init__(self, gauges: MonitoringGauges) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(gauges)
        self._runner: web.AppRunner | None = None

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE})

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

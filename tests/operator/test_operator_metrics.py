"""The operator's /metrics: MonitoringSchedule gauges from the status the planner computed, served
by a real aiohttp server on loopback and parsed back with Prometheus' own text parser."""

from __future__ import annotations

import asyncio
import urllib.request

from berth_operator.api import MonitoringSchedule, MonitoringScheduleStatus
from berth_operator.opmetrics import MetricsServer, MonitoringGauges
from prometheus_client.parser import text_string_to_metric_families

from tests.support.envtest import free_port


def schedule(name: str, endpoint: str = "fraud") -> MonitoringSchedule:
    return MonitoringSchedule.model_validate(
        {
            "apiVersion": "berth.dev/v1alpha1",
            "kind": "MonitoringSchedule",
            "metadata": {"name": name, "namespace": "ml"},
            "spec": {
                "endpointName": endpoint,
                "schedule": "@hourly",
                "baseline": {"statisticsUri": "s3://b/s.json", "constraintsUri": "s3://b/c.json"},
                "outputUri": "s3://b/out/",
            },
        }
    )


def status(violations: int, features: list[str], ready: str = "True") -> MonitoringScheduleStatus:
    return MonitoringScheduleStatus.model_validate(
        {
            "lastExecution": {
                "time": "2026-12-01T10:00:00Z",
                "recordsRead": 5000,
                "violations": violations,
                "violatedFeatures": features,
                "reportUri": "s3://b/out/r.json",
            },
            "conditions": [
                {"type": "Ready", "status": ready, "reason": "Scheduled", "message": "",
                 "lastTransitionTime": "2026-12-01T10:00:00Z"},
            ],
        }
    )  # fmt: skip


def scrape(gauges: MonitoringGauges) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async def serve_and_get() -> str:
        server = MetricsServer(gauges)
        port = free_port()
        await server.start("127.0.0.1", port)
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
        finally:
            await server.stop()

    text = asyncio.run(serve_and_get())
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, tuple(sorted({"namespace": "ml", "schedule": "s1", "endpoint": "fraud", **labels}.items())))


def test_a_series_per_violated_feature_and_the_execution_figures() -> None:
    gauges = MonitoringGauges()
    gauges.record(schedule("s1"), status(3, ["amount", "country"]))
    samples = scrape(gauges)
    assert samples[key("berth_monitoring_feature_violated", feature="amount")] == 1.0
    assert samples[key("berth_monitoring_feature_violated", feature="country")] == 1.0
    assert samples[key("berth_monitoring_violations")] == 3.0
    assert samples[key("berth_monitoring_records_read")] == 5000.0
    assert samples[key("berth_monitoring_last_execution_timestamp_seconds")] == 1796119200.0
    assert samples[key("berth_monitoring_ready")] == 1.0


def test_a_clean_run_drops_the_feature_series_and_a_deleted_schedule_drops_all() -> None:
    gauges = MonitoringGauges()
    gauges.record(schedule("s1"), status(2, ["amount"]))
    gauges.record(schedule("s1"), status(0, [], ready="False"))
    samples = scrape(gauges)
    assert not [k for k in samples if k[0] == "berth_monitoring_feature_violated"]
    assert samples[key("berth_monitoring_violations")] == 0.0
    assert samples[key("berth_monitoring_ready")] == 0.0
    gauges.forget("ml", "s1")
    assert not [k for k in scrape(gauges) if dict(k[1]).get("schedule") == "s1"]


def test_a_schedule_that_never_ran_reports_only_ready() -> None:
    gauges = MonitoringGauges()
    gauges.record(schedule("s1"), MonitoringScheduleStatus())
    names = {name for name, _ in scrape(gauges)}
    assert names == {"berth_monitoring_ready"}

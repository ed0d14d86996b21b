"""Admission of MonitoringSchedules: what the CRD (schema and CEL) refuses, pydantic the same."""

from __future__ import annotations

from typing import Any

import pytest
from berth_operator import api

from tests.crds.test_crds_admission import Row, assert_admitted, assert_refused

BASELINE = {
    "statisticsUri": "s3://bucket/baseline/statistics.json",
    "constraintsUri": "s3://bucket/baseline/constraints.json",
}


def schedule(**spec: Any) -> dict[str, Any]:
    body = {
        "endpointName": "fraud",
        "schedule": "@hourly",
        "baseline": BASELINE,
        "outputUri": "s3://bucket/monitoring/fraud/",
        **spec,
    }
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "MonitoringSchedule",
        "metadata": {"name": "fraud-drift", "namespace": "default"},
        "spec": {k: v for k, v in body.items() if v is not None},
    }


GOOD = [
    Row("monitor-minimal", schedule()),
    Row(
        "monitor-full",
        schedule(
            schedule="*/15 * * * 1-5",
            window={"hours": 24},
            outputUri="file:///var/berth/monitoring/",
            credentialsSecretRef={"name": "s3-creds"},
            suspend=True,
        ),
    ),
    Row("monitor-daily", schedule(schedule="@daily")),
    Row("monitor-cron-list", schedule(schedule="0 0,12 1 * *")),
]

BAD = [
    Row("monitor-no-endpoint", schedule(endpointName=None), "spec.endpointName"),
    Row("monitor-endpoint-upper", schedule(endpointName="Fraud"), "spec.endpointName"),
    Row("monitor-no-baseline", schedule(baseline=None), "spec.baseline"),
    Row("monitor-no-output", schedule(outputUri=None), "spec.outputUri"),
    Row("monitor-output-gs", schedule(outputUri="gs://b/m/"), api.MSG_MONITOR_URI),
    Row(
        "monitor-statistics-http",
        schedule(baseline={**BASELINE, "statisticsUri": "https://x/statistics.json"}),
        api.MSG_MONITOR_URI,
    ),
    Row("monitor-schedule-words", schedule(schedule="every hour"), "spec.schedule"),
    Row("monitor-schedule-four-fields", schedule(schedule="0 * * *"), "spec.schedule"),
    Row("monitor-schedule-unknown-macro", schedule(schedule="@often"), "spec.schedule"),
    Row("monitor-window-zero", schedule(window={"hours": 0}), "spec.window.hours"),
    Row("monitor-window-too-long", schedule(window={"hours": 745}), "spec.window.hours"),
    Row("monitor-unknown-field", schedule(alerting={"email": "a@b"}), "spec"),
]
ROWS = GOOD + BAD


def test_rows_are_distinct() -> None:
    assert len({row.id for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", GOOD, ids=lambda row: row.id)
def test_admitted(row: Row) -> None:
    assert_admitted(row)


@pytest.mark.parametrize("row", BAD, ids=lambda row: row.id)
def test_refused_naming_the_field(row: Row) -> None:
    assert_refused(row)

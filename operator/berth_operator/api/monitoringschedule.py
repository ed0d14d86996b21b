"""MonitoringSchedule: a drift check of an Endpoint's captured data against a baseline, on a cron."""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import Field, model_validator

from .meta import (
    DNS_SUBDOMAIN,
    STORAGE_URI,
    ApiModel,
    Condition,
    LocalObjectReference,
    Resource,
    conditions_field,
)

URI_MAX = 1024
MSG_MONITOR_URI = (
    "baseline.statisticsUri, baseline.constraintsUri and outputUri must start with s3:// or file://"
)
MSG_SCHEDULE = (
    "schedule must be a cron expression of five fields or one of @hourly, @daily, @weekly, @monthly"
)
MACROS = ("@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually")
# Five fields of digits, *, /, -, and commas; the API server's CronJob validation has the last word.
CRON = r"^(@(hourly|daily|midnight|weekly|monthly|yearly|annually)|([0-9*/,-]+\s+){4}[0-9*/,-]+)$"
_STORAGE_CEL = "matches('^(s3|file)://.+')"


class MonitoringBaseline(ApiModel):
    """What the captured data is compared with: the files `berth monitor baseline` wrote."""

    statistics_uri: str = Field(max_length=URI_MAX, description="statistics.json of the training data.")
    constraints_uri: str = Field(
        max_length=URI_MAX, description="constraints.json (edit it to tune the checks)."
    )


class MonitoringWindow(ApiModel):
    """How much captured data each execution reads: the hours before it starts."""

    hours: int = Field(default=1, ge=1, le=24 * 31, description="Hours of captures read by each execution.")


class MonitoringScheduleSpec(ApiModel):
    """Which endpoint to watch, how often, against which baseline, and where reports go."""

    endpoint_name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="The Endpoint whose captures are read.",
    )
    schedule: str = Field(
        min_length=1, max_length=128, pattern=CRON, description="Cron expression, or @hourly, @daily..."
    )
    baseline: MonitoringBaseline = Field(description="The baseline statistics and constraints.")
    window: MonitoringWindow = Field(
        default_factory=MonitoringWindow, description="How much captured data each execution reads."
    )
    output_uri: str = Field(
        max_length=URI_MAX, description="Each execution writes OUTPUT/WINDOW-END/ (s3:// or file://)."
    )
    credentials_secret_ref: LocalObjectReference | None = Field(
        default=None,
        description="Secret with storage credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY...).",
    )
    suspend: bool = Field(default=False, description="Stop starting executions (the CronJob's suspend).")

    x_kubernetes_validations: ClassVar[list[dict[str, str]]] = [
        {
            "rule": f"self.baseline.statisticsUri.{_STORAGE_CEL} && self.baseline.constraintsUri.{_STORAGE_CEL}"
            f" && self.outputUri.{_STORAGE_CEL}",
            "message": MSG_MONITOR_URI,
        },
    ]

    @model_validator(mode="after")
    def _check(self) -> MonitoringScheduleSpec:
        for uri in (self.baseline.statistics_uri, self.baseline.constraints_uri, self.output_uri):
            if not re.match(STORAGE_URI, uri):
                raise ValueError(MSG_MONITOR_URI)
        return self


class MonitoringExecution(ApiModel):
    """What the last finished execution found."""

    time: str | None = Field(default=None, description="The end of the window it read (RFC 3339).")
    records_read: int | None = Field(default=None, description="Captured records in the window.")
    violations: int | None = Field(default=None, description="Constraint violations found.")
    violated_features: list[str] = Field(
        default_factory=list, max_length=20, description="The features that broke a constraint (at most 20)."
    )
    report_uri: str | None = Field(default=None, description="Its constraint_violations.json.")
    job_name: str | None = Field(default=None, description="The Job that ran it.")


class MonitoringScheduleStatus(ApiModel):
    """The schedule's CronJob and the last execution (written by the operator)."""

    observed_generation: int | None = Field(default=None, description="Last metadata.generation seen.")
    cron_job_name: str | None = Field(default=None, description="The batch/v1 CronJob running executions.")
    last_execution: MonitoringExecution | None = Field(
        default=None, description="The last finished execution."
    )
    failure_reason: str | None = Field(default=None, description="Why the last execution failed or waits.")
    conditions: list[Condition] = conditions_field("Ready and Drift.")


class MonitoringSchedule(Resource):
    """A recurring comparison of an Endpoint's captured data with its training baseline."""

    KIND: ClassVar[str] = "MonitoringSchedule"
    PLURAL: ClassVar[str] = "monitoringschedules"
    SHORT_NAME: ClassVar[str] = "bms"
    kind: str = "MonitoringSchedule"
    spec: MonitoringScheduleSpec
    status: MonitoringScheduleStatus | None = None

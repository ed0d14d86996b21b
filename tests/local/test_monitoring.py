"""MonitoringSchedules in local mode: the planner's CronJob run as a real `berth monitor run`
subprocess at its fire times (a fake clock drives the schedule), its termination message fed
back to the planner as the pod's, over file:// captures and a baseline made here."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from berth_operator.api import Endpoint, EndpointConfig, MonitoringSchedule
from berth_operator.local.monitoring import LocalMonitoring, job_name
from berth_operator.local.source import SourceError, load_resources
from berth_operator.settings import Settings
from berth_serving.monitor.cli import monitor
from click.testing import CliRunner

from tests.monitor.data import table, write_captures, write_csv

from .support import config, descendants, endpoint, model, variant

Key = tuple[str, str]
BASE_ROWS = 5_000
WINDOW_ROWS = 1_000
SHIFTED = 2  # feature _c2 of the drifting window is moved by 0.8 standard deviations


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("monitor-baseline")
    write_csv(root / "train.csv", table(BASE_ROWS, seed=1), header=False)
    result = CliRunner().invoke(
        monitor, ["baseline", "--dataset", str(root / "train.csv"), "--output", str(root / "out")]
    )
    assert result.exit_code == 0, result.output
    return root / "out"


def captured(dest: Path, shift: dict[int, float] | None, seed: int) -> None:
    """A window of captured events of `fraud` within the last hour of the real clock: the run's
    window ends when the process runs (`--window-hours`), whatever the scheduler's clock says."""
    start = datetime.now(UTC) - timedelta(minutes=50)
    write_captures(
        dest / "fraud" / "blue", table(WINDOW_ROWS, seed=seed, shift=shift), start, timedelta(minutes=45)
    )


def objects(
    dest: Path, baseline: Path, output: Path, **spec: Any
) -> tuple[Endpoint, EndpointConfig, MonitoringSchedule]:
    body = config("fraud-v1", [variant("blue", "fraud")])
    body["spec"]["dataCapture"] = {"samplingPercentage": 100, "destinationUri": f"file://{dest}/"}
    schedule = {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "MonitoringSchedule",
        "metadata": {"name": "fraud-drift", "namespace": "default"},
        "spec": {
            "endpointName": "fraud",
            "schedule": "*/15 * * * *",
            "baseline": {
                "statisticsUri": f"file://{baseline}/statistics.json",
                "constraintsUri": f"file://{baseline}/constraints.json",
            },
            "outputUri": f"file://{output}/",
            **spec,
        },
    }
    return (
        Endpoint.model_validate(endpoint("fraud", "fraud-v1")),
        EndpointConfig.model_validate(body),
        MonitoringSchedule.model_validate(schedule),
    )


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


KEY: Key = ("default", "fraud-drift")
T0 = datetime(2026, 12, 3, 10, 7, 30, tzinfo=UTC)


def runner(
    tmp_path: Path, parts: tuple[Endpoint, EndpointConfig, MonitoringSchedule], clock: Clock
) -> LocalMonitoring:
    served, config_, schedule = parts
    monitoring = LocalMonitoring(
        Settings(), tmp_path / "run", lambda: {("default", "fraud"): served}, clock=clock
    )
    monitoring.load({KEY: schedule}, {("default", "fraud-v1"): config_}, {})
    return monitoring


def conditions(monitoring: LocalMonitoring) -> dict[str, Any]:
    status = monitoring.schedules[KEY].status
    assert status is not None
    return {c.type: c for c in status.conditions}


def drive(body: Callable[[], Any]) -> Any:
    async def main() -> Any:
        return await body()

    return asyncio.run(main())


def test_a_run_at_the_fire_time_reports_the_shifted_feature(tmp_path: Path, baseline: Path) -> None:
    captured(tmp_path / "capture", {SHIFTED: 0.8}, seed=2)
    clock = Clock(T0)
    monitoring = runner(tmp_path, objects(tmp_path / "capture", baseline, tmp_path / "reports"), clock)

    async def body() -> dict[str, Any]:
        assert monitoring.tick() == []  # not at start
        state = monitoring.schedules[KEY]
        assert state.next_run == datetime(2026, 12, 3, 10, 15, tzinfo=UTC)
        assert conditions(monitoring)["Drift"].reason == "NoExecution"
        clock.now = datetime(2026, 12, 3, 10, 14, 59, tzinfo=UTC)
        assert monitoring.tick() == []
        clock.now = datetime(2026, 12, 3, 10, 15, tzinfo=UTC)
        fire = clock.now
        assert monitoring.tick() == [job_name("fraud-drift-monitor", fire)]
        assert monitoring.snapshot()[0]["running"] == job_name("fraud-drift-monitor", fire)
        clock.now = datetime(2026, 12, 3, 10, 30, tzinfo=UTC)  # the next fire, while it still runs
        assert monitoring.tick() == [] and state.skipped == 1  # concurrencyPolicy Forbid
        assert state.next_run == datetime(2026, 12, 3, 10, 45, tzinfo=UTC)
        await monitoring.idle()
        monitoring.tick()
        return monitoring.snapshot()[0]

    item = drive(body)
    found = conditions(monitoring)
    assert found["Drift"].status == "True" and found["Drift"].reason == "ConstraintsViolated", found
    assert f"_c{SHIFTED}" in found["Drift"].message
    assert found["Ready"].status == "True"
    last = item["status"]["lastExecution"]
    assert last["recordsRead"] == WINDOW_ROWS
    assert last["violatedFeatures"] == [f"_c{SHIFTED}"]
    assert last["jobName"] == job_name("fraud-drift-monitor", datetime(2026, 12, 3, 10, 15, tzinfo=UTC))
    report = json.loads(Path(last["reportUri"].removeprefix("file://")).read_text())
    assert [v["feature_name"] for v in report["violations"]] == [f"_c{SHIFTED}"]
    assert item["runs"] == 1 and item["skipped"] == 1 and item["running"] is None
    log = (tmp_path / "run" / "logs" / f"{last['jobName']}.log").read_text()
    assert f"{WINDOW_ROWS} records, 1 violations" in log


def test_a_window_like_the_baseline_has_no_drift(tmp_path: Path, baseline: Path) -> None:
    captured(tmp_path / "capture", None, seed=3)
    clock = Clock(T0)
    monitoring = runner(
        tmp_path, objects(tmp_path / "capture", baseline, tmp_path / "reports", schedule="@hourly"), clock
    )

    async def body() -> None:
        monitoring.tick()
        assert monitoring.schedules[KEY].next_run == datetime(2026, 12, 3, 11, 0, tzinfo=UTC)
        clock.now = datetime(2026, 12, 3, 13, 47, tzinfo=UTC)  # the machine slept through 3 fires
        assert len(monitoring.tick()) == 1
        await monitoring.idle()
        monitoring.tick()
        assert monitoring.schedules[KEY].runs == 1

    drive(body)
    found = conditions(monitoring)
    assert found["Drift"].status == "False" and found["Drift"].reason == "NoViolations", found
    assert f"({WINDOW_ROWS} records)" in found["Drift"].message
    assert monitoring.schedules[KEY].next_run == datetime(2026, 12, 3, 14, 0, tzinfo=UTC)


def test_suspend_prevents_runs_until_resumed(tmp_path: Path, baseline: Path) -> None:
    captured(tmp_path / "capture", None, seed=4)
    clock = Clock(T0)
    parts = objects(tmp_path / "capture", baseline, tmp_path / "reports", suspend=True)
    monitoring = runner(tmp_path, parts, clock)

    async def body() -> None:
        for minute in (15, 30, 45):
            clock.now = datetime(2026, 12, 3, 10, minute, tzinfo=UTC)
            assert monitoring.tick() == []
        state = monitoring.schedules[KEY]
        assert state.runs == 0 and state.next_run is None
        assert monitoring.snapshot()[0]["nextRun"] is None
        resumed = parts[2].model_copy(update={"spec": parts[2].spec.model_copy(update={"suspend": False})})
        monitoring.load({KEY: resumed}, {("default", "fraud-v1"): parts[1]}, {})
        assert monitoring.tick() == []  # resumed: the next fire, not the missed ones
        assert state.next_run == datetime(2026, 12, 3, 11, 0, tzinfo=UTC)
        assert monitoring.schedules[KEY].schedule.metadata.generation == 2

    drive(body)
    assert conditions(monitoring)["Drift"].reason == "NoExecution"
    assert not (tmp_path / "reports").exists()


def test_a_failed_run_sets_ready_false_with_its_message(tmp_path: Path, baseline: Path) -> None:
    clock = Clock(T0)
    # The Endpoint captures to a directory nothing was written to: `berth monitor run` exits 3.
    monitoring = runner(tmp_path, objects(tmp_path / "nothing", baseline, tmp_path / "reports"), clock)

    async def body() -> None:
        monitoring.tick()
        clock.now = datetime(2026, 12, 3, 10, 15, tzinfo=UTC)
        assert len(monitoring.tick()) == 1
        await monitoring.idle()
        monitoring.tick()

    drive(body)
    found = conditions(monitoring)
    assert found["Ready"].status == "False" and found["Ready"].reason == "ExecutionFailed", found
    assert "captures not found" in found["Ready"].message
    pod = monitoring.schedules[KEY].pods[0]
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


def test_no_captures_no_cron_job_no_run(tmp_path: Path, baseline: Path) -> None:
    served, config_, schedule = objects(tmp_path / "capture", baseline, tmp_path / "reports")
    plain = config_.model_copy(update={"spec": config_.spec.model_copy(update={"data_capture": None})})
    clock = Clock(T0)
    monitoring = runner(tmp_path, (served, plain, schedule), clock)

    async def body() -> None:
        clock.now = datetime(2026, 12, 3, 10, 15, tzinfo=UTC)
        assert monitoring.tick() == []

    drive(body)
    found = conditions(monitoring)
    assert found["Ready"].reason == "CapturesNotFound" and "set dataCapture" in found["Ready"].message


def test_berth_up_reads_schedules_and_refuses_a_schedule_naming_the_field(tmp_path: Path) -> None:
    docs: list[dict[str, Any]] = [
        model("fraud", "file://model.onnx"),
        config("fraud-v1", [variant("blue", "fraud")]),
        endpoint("fraud", "fraud-v1"),
        {
            "apiVersion": "berth.dev/v1alpha1",
            "kind": "MonitoringSchedule",
            "metadata": {"name": "fraud-drift"},
            "spec": {
                "endpointName": "fraud",
                "schedule": "0 9 * * 1-5",
                "baseline": {
                    "statisticsUri": "file://baseline/statistics.json",
                    "constraintsUri": "file://baseline/constraints.json",
                },
                "outputUri": "file://reports/",
            },
        },
    ]
    docs[1]["spec"]["dataCapture"] = {"samplingPercentage": 10, "destinationUri": "file://capture/"}
    path = tmp_path / "all.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    resources = load_resources([path])
    schedule = resources.monitoring[KEY]
    assert schedule.spec.baseline.statistics_uri == f"file://{tmp_path}/baseline/statistics.json"
    assert schedule.spec.output_uri == f"file://{tmp_path}/reports/"
    capture = resources.configs[("default", "fraud-v1")].spec.data_capture
    assert capture is not None and capture.destination_uri == f"file://{tmp_path}/capture/"
    docs[3]["spec"]["schedule"] = "0 9 * * 1-7"  # the CRD's pattern admits it, a CronJob does not
    path.write_text(yaml.safe_dump_all(docs))
    with pytest.raises(
        SourceError,
        match=r"all.yaml:document 4: MonitoringSchedule/fraud-drift: spec.schedule: day of week '1-7': 7 is outside 0-6",
    ):
        load_resources([path])


def test_a_schedule_removed_from_the_manifests_stops_its_run(tmp_path: Path, baseline: Path) -> None:
    captured(tmp_path / "capture", None, seed=5)
    clock = Clock(T0)
    parts = objects(tmp_path / "capture", baseline, tmp_path / "reports")
    monitoring = runner(tmp_path, parts, clock)

    async def body() -> tuple[set[int], set[int], bool]:
        before = descendants(os.getpid())  # the session's other processes (an envtest plane)
        monitoring.tick()
        clock.now = datetime(2026, 12, 3, 10, 15, tzinfo=UTC)
        [job] = monitoring.tick()
        log = tmp_path / "run" / "logs" / f"{job}.log"
        for _ in range(200):  # opened once the process is spawned
            if log.exists():
                break
            await asyncio.sleep(0.01)
        running = descendants(os.getpid()) - before  # the run's own process(es)
        task = monitoring.schedules[KEY].running
        assert task is not None
        monitoring.load({}, {("default", "fraud-v1"): parts[1]}, {})  # a deleted CronJob's Jobs go too
        await asyncio.gather(task, return_exceptions=True)
        return running, descendants(os.getpid()), task.cancelled()

    running, left, cancelled = drive(body)
    assert running and cancelled
    assert not left & running
    assert not monitoring.schedules and not (tmp_path / "reports").exists()

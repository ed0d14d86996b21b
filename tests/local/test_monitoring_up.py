"""A real `berth up --monitor-now` runs a MonitoringSchedule over file:// captures, and shows it:
in /_berth/status and in its log lines (the table's plain form); and the table's text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from berth_operator.local import display
from berth_serving.monitor.cli import monitor
from click.testing import CliRunner

from tests.monitor.data import table, write_captures, write_csv

from .support import BerthUp, config, endpoint, model, variant, write_yaml


def schedule_doc(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "MonitoringSchedule",
        "metadata": {"name": "fraud-drift"},
        "spec": {
            "endpointName": "fraud",
            "schedule": "0 9 * * 1-5",
            "baseline": {
                "statisticsUri": "file://baseline/statistics.json",  # relative to the manifest
                "constraintsUri": "file://baseline/constraints.json",
            },
            "outputUri": "file://reports/",
            **spec,
        },
    }


def test_berth_up_runs_a_schedule_and_shows_its_drift(model_dir: Path, tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    write_csv(manifests / "train.csv", table(5_000, seed=1), header=False)
    made = CliRunner().invoke(
        monitor,
        ["baseline", "--dataset", str(manifests / "train.csv"), "--output", str(manifests / "baseline")],
    )
    assert made.exit_code == 0, made.output
    start = datetime.now(UTC) - timedelta(minutes=50)
    write_captures(
        manifests / "capture" / "fraud" / "blue",
        table(800, seed=2, shift={1: 0.8}),
        start,
        timedelta(minutes=45),
    )
    capture = config("fraud-v1", [variant("blue", "logreg")])
    capture["spec"]["dataCapture"] = {"samplingPercentage": 100, "destinationUri": "file://capture/"}
    write_yaml(
        manifests / "all.yaml",
        [
            model("logreg", f"file://{model_dir / 'logreg.onnx'}"),
            capture,
            endpoint("fraud", "fraud-v1"),
            schedule_doc(),
        ],
    )
    up = BerthUp(manifests / "all.yaml", tmp_path, "--no-watch", "--monitor-now")
    try:

        def reported() -> bool:
            return bool(up.status()["monitoring"][0]["status"].get("lastExecution"))

        up.wait(reported, 60, "the schedule's first run")
        item = up.status()["monitoring"][0]
        up.wait(
            lambda: "monitoring default/fraud-drift:" in up.log() and "drift=True" in up.log(), 10, "log line"
        )
    finally:
        assert up.stop() == 0
    assert item["name"] == "fraud-drift" and item["endpoint"] == "fraud"
    assert item["schedule"] == "0 9 * * 1-5" and item["runs"] == 1
    next_run = datetime.fromisoformat(item["nextRun"].replace("Z", "+00:00"))
    assert (
        next_run.hour == 9
        and next_run.minute == 0
        and next_run.weekday() < 5
        and next_run > datetime.now(UTC)
    )
    last = item["status"]["lastExecution"]
    assert last["recordsRead"] == 800 and last["violatedFeatures"] == ["_c1"]
    assert last["reportUri"].startswith(str(manifests / "reports"))
    drift = {c["type"]: c for c in item["status"]["conditions"]}["Drift"]
    assert drift["status"] == "True" and "_c1" in drift["message"]
    line = next(
        x for x in up.log().splitlines() if "monitoring default/fraud-drift:" in x and "drift=True" in x
    )
    assert "last=[800 records, 1 violation (_c1)]" in line and "endpoint=fraud" in line


def test_the_table_shows_each_schedule_and_its_conditions() -> None:
    def item(name: str, **extra: Any) -> dict[str, Any]:
        return {
            "namespace": "default",
            "name": name,
            "endpoint": "fraud",
            "schedule": "@hourly",
            "suspend": False,
            "nextRun": "2026-12-03T11:00:00Z",
            "running": None,
            "status": {},
            **extra,
        }

    drifting = {
        "lastExecution": {"recordsRead": 2000, "violations": 2, "violatedFeatures": ["f2", "f3"]},
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Scheduled",
                "message": "CronJob fraud-drift-monitor",
            },
            {
                "type": "Drift",
                "status": "True",
                "reason": "ConstraintsViolated",
                "message": "2 violation(s): f2, f3",
            },
        ],
    }
    waiting = {
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "CapturesNotFound", "message": "set dataCapture"},
            {
                "type": "Drift",
                "status": "False",
                "reason": "NoExecution",
                "message": "no execution has finished yet",
            },
        ]
    }
    snapshot = {
        "endpoints": [],
        "monitoring": [
            item("a", status=drifting),
            item("b", status=waiting, nextRun=None),
            item("c", suspend=True, nextRun=None),
            item("d", running="d-monitor-29412345"),
        ],
    }
    lines = display.monitoring_table(snapshot).splitlines()
    assert lines[0].split() == ["SCHEDULE", "ENDPOINT", "CRON", "NEXT", "RUN", "LAST", "EXECUTION", "DRIFT"]
    assert lines[1].split() == [
        "default/a", "fraud", "@hourly", "2026-12-03T11:00:00Z", "2000", "records,", "2", "violations",
        "(f2,", "f3)", "True", "ConstraintsViolated",
    ]  # fmt: skip
    assert lines[2].split()[3:] == ["-", "-", "False", "NoExecution"]
    assert lines[3].split()[3] == "suspended"
    assert "running d-monitor-29412345" in lines[4]
    details = display.monitoring_details(snapshot).splitlines()
    assert "default/a: Drift: 2 violation(s): f2, f3" in details
    assert "default/b: Ready: set dataCapture" in details  # Ready is shown only when it is not True
    assert not any(line.startswith("default/a: Ready") for line in details)
    frame = display.screen(snapshot, "footer")
    assert "SCHEDULE" in frame and "default/a: Drift:" in frame and frame.endswith("footer\n")
    assert display.monitoring_table({"endpoints": []}) == ""
    plain = display.monitoring_lines(snapshot)
    assert plain["monitoring default/a"].startswith(
        "monitoring default/a: endpoint=fraud schedule='@hourly' next=2026-12-03T11:00:00Z"
        " last=[2000 records, 2 violations (f2, f3)] drift=True/ConstraintsViolated"
    )

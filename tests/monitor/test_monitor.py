"""berth monitor baseline and run: real DuckDB over real files (S3 through moto's server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from berth_serving.monitor.captures import hours, parse_time
from berth_serving.monitor.cli import monitor
from berth_serving.monitor.sketch import ks_distance
from berth_serving.termination import TERMINATION_LOG_ENV
from click.testing import CliRunner, Result

from .data import T0, event, table, write_captures, write_csv

BASE_ROWS = 20_000
WINDOW_ROWS = 2_000
SINCE, UNTIL = "2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(monitor, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("baseline")
    write_csv(root / "data" / "train.csv", table(BASE_ROWS, seed=1), header=False)
    result = invoke("baseline", "--dataset", str(root / "data"), "--output", str(root / "out"))
    assert result.exit_code == 0, result.output
    return root / "out"


@pytest.fixture
def termination(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "termination-log"
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(path))
    return path


def run(baseline: Path, captures: str, output: Path, *extra: str) -> Result:
    return invoke(
        "run",
        "--captures",
        captures,
        "--statistics",
        str(baseline / "statistics.json"),
        "--constraints",
        str(baseline / "constraints.json"),
        "--output",
        str(output),
        *(extra or ("--since", SINCE, "--until", UNTIL)),
    )


def report(output: Path, folder: str = "2026-12-01T11-00-00Z") -> tuple[dict, list[tuple[str, str]]]:
    stats = json.loads((output / folder / "statistics.json").read_text())
    found = json.loads((output / folder / "constraint_violations.json").read_text())["violations"]
    return stats, sorted((v["feature_name"], v["constraint_check_type"]) for v in found)


def window(tmp_path: Path, rows: list[list[str]]) -> str:
    write_captures(tmp_path / "capture" / "fraud" / "blue", rows, T0, timedelta(minutes=59))
    return str(tmp_path / "capture" / "fraud")


def test_baseline_statistics_and_constraints(baseline: Path) -> None:
    stats = json.loads((baseline / "statistics.json").read_text())
    limits = json.loads((baseline / "constraints.json").read_text())
    assert stats["dataset"] == {"item_count": BASE_ROWS, "unparsed_events": 0, "feature_count": 5}
    names = [f["name"] for f in stats["features"]]
    assert names == ["_c0", "_c1", "_c2", "_c3", "_c4"]
    assert [f["inferred_type"] for f in stats["features"]] == ["Fractional"] * 4 + ["Integral"]
    first = stats["features"][0]
    assert first["count"] == BASE_ROWS and first["missing"] == 0
    assert abs(first["mean"]) < 0.05 and abs(first["stddev"] - 1) < 0.05
    assert len(first["quantiles"]) == 101 and abs(first["quantiles"][50]) < 0.05
    assert limits["feature_count"] == 5
    assert limits["features"][4] | {} == {
        "name": "_c4",
        "inferred_type": "Integral",
        "completeness": 0.95,
        "min": 0.0,
        "max": 9.0,
        "range_tolerance": 0.1,
        "max_outside_fraction": 0.001,
        "distribution": {"measure": "ks", "threshold": 0.1},
    }


def test_header_detected_and_forced(tmp_path: Path) -> None:
    write_csv(tmp_path / "with.csv", table(100, seed=3), header=True)
    assert (
        invoke("baseline", "--dataset", str(tmp_path / "with.csv"), "--output", str(tmp_path / "a")).exit_code
        == 0
    )
    stats = json.loads((tmp_path / "a" / "statistics.json").read_text())
    assert [f["name"] for f in stats["features"]][:2] == ["f0", "f1"] and stats["dataset"][
        "item_count"
    ] == 100
    forced = invoke(
        "baseline", "--no-header", "--dataset", f"file://{tmp_path}/with.csv", "--output", str(tmp_path / "b")
    )
    assert forced.exit_code == 0
    stats = json.loads((tmp_path / "b" / "statistics.json").read_text())
    assert stats["dataset"]["item_count"] == 101 and stats["features"][0]["inferred_type"] == "String"


def test_baseline_from_json_lines_objects(tmp_path: Path) -> None:
    lines = [json.dumps({"age": i % 50, "score": i / 7, "city": "abc"[i % 3]}) for i in range(300)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    assert (
        invoke("baseline", "--dataset", str(tmp_path / "d.jsonl"), "--output", str(tmp_path / "o")).exit_code
        == 0
    )
    stats = json.loads((tmp_path / "o" / "statistics.json").read_text())
    kinds = {f["name"]: f["inferred_type"] for f in stats["features"]}
    assert kinds == {"age": "Integral", "score": "Fractional", "city": "String"}


def test_same_distribution_no_violation(baseline: Path, tmp_path: Path, termination: Path) -> None:
    result = run(baseline, window(tmp_path, table(WINDOW_ROWS, seed=2)), tmp_path / "out")
    assert result.exit_code == 0, result.output
    stats, found = report(tmp_path / "out")
    assert found == []
    assert stats["dataset"]["item_count"] == WINDOW_ROWS
    message = json.loads(termination.read_text())
    assert message == {
        "time": UNTIL,
        "recordsRead": WINDOW_ROWS,
        "violations": 0,
        "violatedFeatures": [],
        "reportUri": str(tmp_path / "out" / "2026-12-01T11-00-00Z" / "constraint_violations.json"),
    }


def test_shifted_feature_drifts(baseline: Path, tmp_path: Path, termination: Path) -> None:
    result = run(baseline, window(tmp_path, table(WINDOW_ROWS, seed=2, shift={2: 0.8})), tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert report(tmp_path / "out")[1] == [("_c2", "baseline_drift_check")]
    message = json.loads(termination.read_text())
    assert message["violations"] == 1 and message["violatedFeatures"] == ["_c2"]


def test_out_of_range(baseline: Path, tmp_path: Path) -> None:
    rows = table(WINDOW_ROWS, seed=2)
    for row in rows[:10]:  # 0.5% of the window, above the suggested 0.1%
        row[0] = "40.0"
    assert run(baseline, window(tmp_path, rows), tmp_path / "out").exit_code == 0
    stats, found = report(tmp_path / "out")
    assert found == [("_c0", "value_range")]
    assert stats["features"][0]["outside_range"] == 10
    violation = json.loads(
        (tmp_path / "out" / "2026-12-01T11-00-00Z" / "constraint_violations.json").read_text()
    )
    assert "0.5000% of values (10) outside" in violation["violations"][0]["description"]


def test_a_lone_outlier_is_within_the_allowed_share_unless_none_is_allowed(
    baseline: Path, tmp_path: Path
) -> None:
    rows = table(WINDOW_ROWS, seed=2)
    rows[10][0] = "40.0"  # 0.05% of the window
    captures = window(tmp_path, rows)
    assert run(baseline, captures, tmp_path / "out").exit_code == 0
    assert report(tmp_path / "out")[1] == []
    # A person who wants no value outside edits constraints.json.
    limits = json.loads((baseline / "constraints.json").read_text())
    limits["features"][0]["max_outside_fraction"] = 0
    strict = tmp_path / "strict"
    strict.mkdir()
    (strict / "constraints.json").write_text(json.dumps(limits))
    (strict / "statistics.json").write_text((baseline / "statistics.json").read_text())
    assert run(strict, captures, tmp_path / "strict-out").exit_code == 0
    assert report(tmp_path / "strict-out")[1] == [("_c0", "value_range")]


def test_missing_column(baseline: Path, tmp_path: Path) -> None:
    rows = [row[:4] for row in table(WINDOW_ROWS, seed=2)]
    assert run(baseline, window(tmp_path, rows), tmp_path / "out").exit_code == 0
    assert report(tmp_path / "out")[1] == [("_c4", "missing_column")]


def test_extra_column(baseline: Path, tmp_path: Path) -> None:
    rows = [[*row, "1"] for row in table(WINDOW_ROWS, seed=2)]
    assert run(baseline, window(tmp_path, rows), tmp_path / "out").exit_code == 0
    assert report(tmp_path / "out")[1] == [("_c5", "extra_column")]


def test_changed_type(baseline: Path, tmp_path: Path) -> None:
    rows = [[*row[:3], "x" + row[3], row[4]] for row in table(WINDOW_ROWS, seed=2)]
    assert run(baseline, window(tmp_path, rows), tmp_path / "out").exit_code == 0
    assert report(tmp_path / "out")[1] == [("_c3", "data_type_check")]


def test_completeness(baseline: Path, tmp_path: Path) -> None:
    rows = table(WINDOW_ROWS, seed=2)
    for row in rows[: WINDOW_ROWS // 5]:
        row[1] = ""
    assert run(baseline, window(tmp_path, rows), tmp_path / "out").exit_code == 0
    stats, found = report(tmp_path / "out")
    assert found == [("_c1", "completeness_check")]
    assert stats["features"][1]["missing"] == WINDOW_ROWS // 5


def test_window_by_inference_time_and_hour_prefix(baseline: Path, tmp_path: Path) -> None:
    root = tmp_path / "capture" / "fraud"
    rows = table(600, seed=2)
    # 09:30-12:30 in three variants' worth of hours; only 10:00-11:00 is in the window.
    write_captures(root / "blue", rows, T0 - timedelta(minutes=30), timedelta(hours=3))
    # An event stamped 11:00:30 in the 10 o'clock folder (written late) is outside the window.
    late = root / "green" / "2026" / "12" / "01" / "10" / "late.jsonl"
    late.parent.mkdir(parents=True)
    late.write_text(event(",".join(rows[0]), T0 + timedelta(minutes=60, seconds=30)) + "\n")
    # A folder outside the window that is not even valid JSON: never listed, so never read.
    bad = root / "green" / "2026" / "12" / "01" / "13" / "bad.jsonl"
    bad.parent.mkdir(parents=True)
    bad.write_text("not json\n")
    assert run(baseline, str(root), tmp_path / "out").exit_code == 0
    stats, _ = report(tmp_path / "out")
    assert stats["dataset"]["item_count"] == 200  # a third of 600 rows over 3 hours
    assert stats["dataset"]["window"]["objects"] == 3  # blue's 2 files of hour 10, green's late file
    assert hours(parse_time("2026-12-01T09:30:00Z"), parse_time("2026-12-01T11:00:00Z")) == [
        parse_time("2026-12-01T09:00:00Z"),
        parse_time("2026-12-01T10:00:00Z"),
    ]


def test_json_inputs_and_unparsed_events(baseline: Path, tmp_path: Path) -> None:
    folder = tmp_path / "capture" / "fraud" / "blue" / "2026" / "12" / "01" / "10"
    folder.mkdir(parents=True)
    rows = [[float(x) for x in row[:4]] + [int(row[4])] for row in table(WINDOW_ROWS, seed=2)]
    lines = []
    for start in range(0, WINDOW_ROWS, 4):
        chunk = rows[start : start + 4]
        body = [{"instances": chunk}, {"inputs": chunk}, chunk, chunk[0]][start // 4 % 4]
        if start // 4 % 4 == 3:
            lines.append(event(json.dumps(chunk[0]), T0, "JSON", "application/json"))
            lines.append(event("\n".join(",".join(map(str, r)) for r in chunk[1:]), T0))
        else:
            lines.append(event(json.dumps(body), T0, "JSON", "application/json"))
    # JSON Lines (a row per line), stamped with milliseconds as the capture writer does.
    stamped = json.dumps(rows[:2])[1:-1].replace("], [", "]\n[")
    jsonl = json.loads(event(stamped, T0, "JSON", "application/jsonlines"))
    jsonl["eventMetadata"]["inferenceTime"] = "2026-12-01T10:00:00.250Z"
    lines.append(json.dumps(jsonl))
    lines.append(event("AAEC", T0, "BASE64", "application/octet-stream"))
    lines.append(event("{not json", T0, "JSON", "application/json"))
    lines.append(
        event(
            json.dumps({"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [1] * 5}]}),
            T0,
            "JSON",
            "application/json",
        )
    )
    (folder / "a.jsonl").write_text("\n".join(lines) + "\n")
    assert run(baseline, str(tmp_path / "capture" / "fraud" / "blue"), tmp_path / "out").exit_code == 0
    stats, found = report(tmp_path / "out")
    assert stats["dataset"]["item_count"] == WINDOW_ROWS + 2
    assert stats["dataset"]["unparsed_events"] == 3
    assert found == []


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    import boto3
    from berth_serving.storage import _s3_client

    from tests.support.s3server import S3_ENV, running_moto

    with running_moto() as endpoint:
        for key, value in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(key, value)
        _s3_client.cache_clear()
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="bucket")
        yield client
    _s3_client.cache_clear()


def test_s3_captures_and_output(baseline: Path, tmp_path: Path, s3: object, termination: Path) -> None:
    client: object = s3
    local = tmp_path / "local"
    for path in write_captures(
        local / "fraud" / "blue", table(WINDOW_ROWS, seed=2, shift={0: 1.0}), T0, timedelta(minutes=90)
    ):
        client.upload_file(str(path), "bucket", "capture/" + path.relative_to(local).as_posix())  # type: ignore[attr-defined]
    for name in ("statistics.json", "constraints.json"):
        client.upload_file(str(baseline / name), "bucket", f"baseline/{name}")  # type: ignore[attr-defined]
    result = invoke(
        "run",
        "--captures",
        "s3://bucket/capture/fraud/",
        "--statistics",
        "s3://bucket/baseline/statistics.json",
        "--constraints",
        "s3://bucket/baseline/constraints.json",
        "--output",
        "s3://bucket/monitoring/fraud/",
        "--since",
        SINCE,
        "--until",
        UNTIL,
    )
    assert result.exit_code == 0, result.output
    key = "monitoring/fraud/2026-12-01T11-00-00Z/constraint_violations.json"
    body = client.get_object(Bucket="bucket", Key=key)["Body"].read()  # type: ignore[attr-defined]
    assert [v["feature_name"] for v in json.loads(body)["violations"]] == ["_c0"]
    message = json.loads(termination.read_text())
    assert message["reportUri"] == f"s3://bucket/{key}"
    # The events stamped in the first 60 of the 90 minutes (2.7 s apart).
    assert message["recordsRead"] == sum(1 for i in range(WINDOW_ROWS) if i * 5400 / WINDOW_ROWS < 3600)


def test_bad_inputs_exit_non_zero(baseline: Path, tmp_path: Path, termination: Path) -> None:
    (tmp_path / "capture" / "fraud").mkdir(parents=True)
    missing = run(baseline, str(tmp_path / "nowhere"), tmp_path / "out")
    assert missing.exit_code == 3 and "captures not found" in missing.output
    (tmp_path / "broken.json").write_text("{")
    broken = invoke(
        "run",
        "--captures",
        str(tmp_path / "capture" / "fraud"),
        "--statistics",
        str(tmp_path / "broken.json"),
        "--constraints",
        str(baseline / "constraints.json"),
        "--output",
        str(tmp_path / "out"),
    )
    assert broken.exit_code == 1 and "is not JSON" in broken.output
    assert len(broken.output.strip().splitlines()) == 1
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert invoke("baseline", "--dataset", str(empty), "--output", str(tmp_path / "o")).exit_code == 1
    assert invoke("baseline", "--dataset", "ftp://x/y", "--output", str(tmp_path / "o")).exit_code == 3
    bad_time = run(baseline, str(tmp_path / "capture"), tmp_path / "out", "--since", "yesterday")
    assert bad_time.exit_code == 2


def test_ks_distance_of_sketches() -> None:
    uniform = [i / 100 for i in range(101)]
    assert ks_distance(uniform, uniform) == 0
    assert abs(ks_distance(uniform, [q + 0.25 for q in uniform]) - 0.25) < 1e-9


def test_baseline_from_s3_to_s3(tmp_path: Path, s3: object) -> None:
    client: object = s3
    write_csv(tmp_path / "train.csv", table(500, seed=4), header=True)
    client.upload_file(str(tmp_path / "train.csv"), "bucket", "data/part-0.csv")  # type: ignore[attr-defined]
    client.upload_file(str(tmp_path / "train.csv"), "bucket", "data/part-1.csv")  # type: ignore[attr-defined]
    result = invoke("baseline", "--dataset", "s3://bucket/data/", "--output", "s3://bucket/baseline/")
    assert result.exit_code == 0, result.output
    body = client.get_object(Bucket="bucket", Key="baseline/statistics.json")["Body"].read()  # type: ignore[attr-defined]
    stats = json.loads(body)
    assert stats["dataset"]["item_count"] == 1000 and stats["features"][0]["name"] == "f0"
    limits = client.get_object(Bucket="bucket", Key="baseline/constraints.json")["Body"].read()  # type: ignore[attr-defined]
    assert json.loads(limits)["feature_count"] == 5


def test_window_hours_before_until(baseline: Path, tmp_path: Path) -> None:
    root = tmp_path / "capture" / "fraud"
    write_captures(root / "blue", table(300, seed=2), T0 - timedelta(hours=2), timedelta(hours=3))
    result = run(baseline, str(root), tmp_path / "out", "--until", UNTIL, "--window-hours", "2")
    assert result.exit_code == 0, result.output
    stats, _ = report(tmp_path / "out")
    assert stats["dataset"]["window"]["since"] == "2026-12-01T09:00:00Z"
    assert stats["dataset"]["item_count"] == 200  # 09:00-11:00 of 08:00-11:00
    backwards = run(baseline, str(root), tmp_path / "out", "--since", UNTIL, "--until", SINCE)
    assert backwards.exit_code == 2


def test_events_as_the_capture_writer_formats_them(baseline: Path, tmp_path: Path) -> None:
    """The serving runtime's own event lines and file names (berth_serving.capture)."""
    from berth_serving.capture.event import EVENT_OVERHEAD_BYTES, Event, EventIds, event_line
    from berth_serving.capture.settings import CaptureConfig
    from berth_serving.capture.writer import file_location
    from berth_serving.storage import parse_uri

    config = CaptureConfig(str(tmp_path / "capture"), "fraud", "blue", 100.0)
    ids, start = EventIds(), T0.timestamp()
    rows = table(WINDOW_ROWS, seed=2)
    target = Path(file_location(parse_uri(str(tmp_path / "capture")), config, start).path)
    target.parent.mkdir(parents=True)
    with open(target, "wb") as stream:
        for index, row in enumerate(rows):
            data = ",".join(row).encode()
            moment = start + index * 1.7  # within the hour, with milliseconds
            captured = Event(
                b"id",
                moment,
                b"text/csv",
                data,
                b"application/json",
                b"[0]",
                "realtime",
                len(data) + EVENT_OVERHEAD_BYTES,
            )
            stream.write(event_line(captured, config, ids))
    assert run(baseline, str(tmp_path / "capture" / "fraud"), tmp_path / "out").exit_code == 0
    stats, found = report(tmp_path / "out")
    assert stats["dataset"]["item_count"] == WINDOW_ROWS and found == []

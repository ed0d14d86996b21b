"""`berth transform --capture`: an event per record in the contract's shape, source transform,
inferenceId OBJECT:INDEX sampled the same way on every run; file:// and S3 (moto server).
Real `berth transform` processes on models the tests build."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from tests.transform.conftest import S3_ENV
from tests.transform.support import berth_env, csv_bytes, rows, run_berth, write_csv

pytestmark = pytest.mark.timeout(120)


def capture_json(destination: str, **overrides: object) -> str:
    settings = {
        "destinationUri": destination,
        "endpoint": "score-march",
        "variant": "transform",
        "samplingPercentage": 100,
        "source": "transform",
        **overrides,
    }
    return json.dumps(settings)


def events_under(root: Path) -> list[dict[str, Any]]:
    files = sorted(p for p in root.rglob("*.jsonl") if not p.name.startswith(".berth-partial-"))
    return [orjson.loads(line) for path in files for line in path.read_bytes().splitlines()]


def run_with_capture(
    model: Path, tmp_path: Path, output: str, capture: str, *extra: str
) -> tuple[str, dict[str, Any]]:
    log = tmp_path / f"termination-{output}"
    args = ["transform", "--model", str(model), "--input", str(tmp_path / "in"), "--output"]
    result = run_berth(
        [*args, str(tmp_path / output), "--capture", capture, *extra],
        berth_env(BERTH_TERMINATION_LOG=str(log)),
    )
    assert result.returncode == 0, result.stderr
    return result.stderr, json.loads(log.read_text())


def test_one_event_per_record_in_the_contracts_shape(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    data = rows(30, 4, seed=3)
    write_csv(tmp_path / "in" / "p0.csv", data)
    capture = tmp_path / "capture"
    stderr, message = run_with_capture(
        transform_models.logreg, tmp_path, "out", capture_json(f"file://{capture}/")
    )
    assert message["records"] == 30 and message["captured"] == 30 and message["captureDropped"] == 0
    assert "30 records, 0 malformed, 30 captured, 0 capture events dropped" in stderr
    files = [p for p in capture.rglob("*.jsonl") if not p.name.startswith(".berth-partial-")]
    assert files and all(p.relative_to(capture).parts[:2] == ("score-march", "transform") for p in files)
    assert all(len(p.relative_to(capture).parts) == 7 for p in files)  # yyyy/mm/dd/hh/uuid.jsonl
    events = sorted(events_under(capture), key=lambda e: int(e["eventMetadata"]["inferenceId"].split(":")[1]))
    assert len(events) == 30
    answers = (tmp_path / "out" / "p0.csv.out").read_bytes().decode().splitlines()
    records = csv_bytes(data).decode().splitlines()
    for index, event in enumerate(events):
        meta = event["eventMetadata"]
        assert meta["inferenceId"] == f"p0.csv:{index}"
        assert meta["source"] == "transform" and meta["variant"] == "transform"
        assert event["eventVersion"] == "0"
        assert event["captureData"]["endpointInput"] == {
            "observedContentType": "text/csv",
            "mode": "INPUT",
            "data": records[index],
            "encoding": "CSV",
        }
        assert event["captureData"]["endpointOutput"] == {
            "observedContentType": "text/csv",
            "mode": "OUTPUT",
            "data": answers[index],
            "encoding": "CSV",
        }


def test_half_sampling_picks_the_same_records_twice(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    for i in range(2):
        write_csv(tmp_path / "in" / f"p{i}.csv", rows(100, 4, seed=i))
    picked = []
    for run in ("a", "b"):
        destination = tmp_path / f"capture-{run}"
        _, message = run_with_capture(
            transform_models.logreg,
            tmp_path,
            f"out-{run}",
            capture_json(f"file://{destination}/", samplingPercentage=50),
            "--max-batch-size",
            "7" if run == "a" else "64",  # other batches: the same records
        )
        ids = sorted(e["eventMetadata"]["inferenceId"] for e in events_under(destination))
        assert message["captured"] == len(ids)
        picked.append(ids)
    assert picked[0] == picked[1]
    assert 60 <= len(picked[0]) <= 140, len(picked[0])  # about half of 200


def test_joined_output_captures_the_answer_alone(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    write_csv(tmp_path / "in" / "p0.csv", rows(5, 4, seed=1))
    capture = tmp_path / "capture"
    run_with_capture(
        transform_models.logreg,
        tmp_path,
        "out",
        capture_json(f"file://{capture}/", captureModes=["Output"]),
        "--join-source",
        "Input",
    )
    joined = (tmp_path / "out" / "p0.csv.out").read_bytes().decode().splitlines()
    events = sorted(events_under(capture), key=lambda e: e["eventMetadata"]["inferenceId"])
    assert len(events) == 5
    for line, event in zip(joined, events, strict=True):
        assert "endpointInput" not in event["captureData"]
        assert line.endswith("," + event["captureData"]["endpointOutput"]["data"])


def test_a_bad_capture_option_names_the_key(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    write_csv(tmp_path / "in" / "p0.csv", rows(3, 4))
    args = ["transform", "--model", str(transform_models.logreg), "--input", str(tmp_path / "in")]
    result = run_berth(
        [*args, "--output", str(tmp_path / "out"), "--capture", '{"destinationUri": "s3://b/"}']
    )
    assert result.returncode == 2
    assert "--capture" in result.stderr and "endpoint" in result.stderr


def test_capture_to_s3(transform_models: SimpleNamespace, s3: SimpleNamespace, tmp_path: Path) -> None:
    write_csv(tmp_path / "in" / "p0.csv", rows(12, 4, seed=2))
    env = berth_env(**S3_ENV, AWS_ENDPOINT_URL=s3.endpoint)
    args = ["transform", "--model", str(transform_models.logreg), "--input", str(tmp_path / "in")]
    destination = f"s3://{s3.bucket}/capture/"
    result = run_berth(
        [*args, "--output", str(tmp_path / "out"), "--capture", capture_json(destination)], env
    )
    assert result.returncode == 0, result.stderr
    keys = [
        item["Key"] for item in s3.client.list_objects_v2(Bucket=s3.bucket, Prefix="capture/")["Contents"]
    ]
    assert keys and all(key.startswith("capture/score-march/transform/") for key in keys)
    body = b"".join(s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read() for key in keys)
    events = [orjson.loads(line) for line in body.splitlines()]
    assert sorted(e["eventMetadata"]["inferenceId"] for e in events) == sorted(
        f"p0.csv:{i}" for i in range(12)
    )
    assert {e["eventMetadata"]["source"] for e in events} == {"transform"}


def test_an_unsplit_object_is_one_event(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    data = rows(5, 4, seed=4)
    write_csv(tmp_path / "in" / "p0.csv", data)
    capture = tmp_path / "capture"
    _, message = run_with_capture(
        transform_models.logreg, tmp_path, "out", capture_json(f"file://{capture}/"), "--split-type", "None"
    )
    assert message["captured"] == 1
    (event,) = events_under(capture)
    assert event["eventMetadata"]["inferenceId"] == "p0.csv:0"
    assert event["captureData"]["endpointInput"]["data"] == csv_bytes(data).decode().rstrip("\n")
    written = (tmp_path / "out" / "p0.csv.out").read_bytes().decode()
    assert event["captureData"]["endpointOutput"]["data"] == written.rstrip("\n")

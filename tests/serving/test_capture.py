"""Data capture (berth_serving.capture) end to end: real servers writing to file:// and to
moto's S3 in server mode, a real `berth serve` process stopped by SIGTERM."""

from __future__ import annotations

import calendar
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from berth_serving.capture import CaptureConfig, Capturer, capture_from_json, capture_to_json, sampled
from berth_serving.capture.event import Event
from berth_serving.capture.writer import file_location
from berth_serving.config import ServeConfig
from berth_serving.storage import parse_uri
from moto.server import ThreadedMotoServer
from prometheus_client.parser import text_string_to_metric_families

from tests.serving.support import REPO, ThreadedServer, free_port, request, serve_subprocess, wait_until
from tests.support.s3server import S3_ENV, running_moto

pytestmark = pytest.mark.timeout(120)

ROW = [0.5] * 16
CSV_ROW = ",".join(["0.5"] * 16).encode()


def capture_config(destination: str, **overrides: object) -> CaptureConfig:
    settings = {
        "destinationUri": destination,
        "endpoint": "fraud",
        "variant": "blue",
        "samplingPercentage": 100,
    }
    parsed = capture_from_json(orjson.dumps({**settings, **overrides}).decode())
    assert parsed is not None
    return parsed


def start(model: Path, capture: CaptureConfig) -> ThreadedServer:
    return ThreadedServer(ServeConfig(model_uri=str(model), variant="blue", capture=capture)).start()


def post(url: str, body: bytes, content_type: str = "application/json", **headers: str) -> int:
    return request(url + "/invocations", "POST", body, {"Content-Type": content_type, **headers}).status


def metric(url: str, name: str, **labels: str) -> float:
    text = request(url + "/metrics").body.decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and set(labels.items()) <= set(sample.labels.items())
    )


def capture_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*.jsonl") if not path.name.startswith(".berth-partial-"))


def lines_of(root: Path) -> list[Any]:
    return [orjson.loads(line) for path in capture_files(root) for line in path.read_bytes().splitlines()]


# --- pure parts ---------------------------------------------------------------------------


def test_sampling_follows_the_percentage_and_the_id() -> None:
    ids = [uuid.uuid4().hex.encode() for _ in range(10_000)]
    for percentage, tolerance in ((20, 1.5), (0.5, 0.3), (99.5, 0.3)):
        share = 100 * sum(sampled(i, percentage) for i in ids) / len(ids)
        assert abs(share - percentage) < tolerance, (percentage, share)
    assert not any(sampled(i, 0) for i in ids)
    assert all(sampled(i, 100) for i in ids)
    # The same id is always decided the same way, by the function and by a Capturer.
    capturer = Capturer(capture_config("file:///unused/", samplingPercentage=20))
    assert [sampled(i, 20) for i in ids] == [sampled(i, 20) for i in ids]
    assert [capturer.sampled(i) for i in ids] == [sampled(i, 20) for i in ids]


def test_hour_path_layout() -> None:
    config = capture_config("s3://bucket/capture/")
    at = calendar.timegm((2026, 12, 1, 9, 59, 59)) + 0.999
    where = file_location(parse_uri(config.destination_uri), config, at)
    head, name = where.path.rsplit("/", 1)
    assert (where.bucket, head) == ("bucket", "capture/fraud/blue/2026/12/01/09")
    assert name.endswith(".jsonl") and uuid.UUID(name[: -len(".jsonl")]).version == 4


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"endpoint": "fraud", "variant": "blue", "samplingPercentage": 20}, "destinationUri"),
        ({"destinationUri": "s3://b/", "variant": "blue", "samplingPercentage": 20}, "endpoint"),
        ({"destinationUri": "s3://b/", "endpoint": "f", "variant": "blue"}, "samplingPercentage"),
        (
            {"destinationUri": "s3://b/", "endpoint": "f", "variant": "v", "samplingPercentage": 101},
            "samplingPercentage",
        ),
        (
            {"destinationUri": "http://b/", "endpoint": "f", "variant": "v", "samplingPercentage": 1},
            "destinationUri",
        ),
        (
            {
                "destinationUri": "s3://b/",
                "endpoint": "f",
                "variant": "v",
                "samplingPercentage": 1,
                "captureModes": ["In"],
            },
            "captureModes",
        ),
        (
            {
                "destinationUri": "s3://b/",
                "endpoint": "f",
                "variant": "v",
                "samplingPercentage": 1,
                "maxFileBytes": 0,
            },
            "maxFileBytes",
        ),
        (
            {
                "destinationUri": "s3://b/",
                "endpoint": "f",
                "variant": "v",
                "samplingPercentage": 1,
                "source": "batch",
            },
            "source",
        ),
        (
            {
                "destinationUri": "s3://b/",
                "endpoint": "f",
                "variant": "v",
                "samplingPercentage": 1,
                "samplingRate": 1,
            },
            "samplingRate",
        ),
    ],
)
def test_bad_settings_name_the_key(settings: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        capture_from_json(orjson.dumps(settings).decode())


def test_bad_capture_flag_is_a_startup_error_naming_the_key(onnx_models) -> None:
    settings = (
        '{"destinationUri": "file:///tmp/c/", "endpoint": "f", "variant": "v", "samplingPercentage": "all"}'
    )
    done = subprocess.run(
        [sys.executable, "-m", "berth_serving", "serve", str(onnx_models.identity), "--capture", settings],
        capture_output=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--capture" in done.stderr.decode() and "samplingPercentage" in done.stderr.decode()


# --- a real server writing to file:// -----------------------------------------------------


def test_captured_lines_have_the_contract_shape(onnx_models, tmp_path: Path) -> None:
    server = start(onnx_models.identity, capture_config(f"file://{tmp_path}/"))
    try:
        before = time.time()
        assert post(server.url, CSV_ROW, "text/csv", **{"X-Berth-Inference-Id": "known-1"}) == 200
        assert post(server.url, b"[[" + b",".join([b"1"] * 16) + b"]]", "application/x-npy-not") == 415
        exposition = request(server.url + "/metrics").body.decode()
        for name in (
            "berth_capture_events_total",
            "berth_capture_dropped_total",
            "berth_capture_buffer_bytes",
        ):
            assert name in exposition
    finally:
        server.stop()
    files = capture_files(tmp_path)
    assert len(files) == 1
    (line,) = lines_of(tmp_path)  # only the 200 is captured
    assert set(line) == {"captureData", "eventMetadata", "eventVersion"}
    assert line["eventVersion"] == "0"
    data = line["captureData"]
    assert data["endpointInput"] == {
        "observedContentType": "text/csv",
        "mode": "INPUT",
        "data": CSV_ROW.decode(),
        "encoding": "CSV",
    }
    output = data["endpointOutput"]
    assert set(output) == {"observedContentType", "mode", "data", "encoding"}
    assert (output["observedContentType"], output["mode"], output["encoding"]) == (
        "application/json",
        "OUTPUT",
        "JSON",
    )
    assert orjson.loads(output["data"]) == {"predictions": [ROW]}
    meta = line["eventMetadata"]
    assert set(meta) == {"eventId", "inferenceId", "inferenceTime", "variant", "source"}
    assert (meta["inferenceId"], meta["variant"], meta["source"]) == ("known-1", "blue", "realtime")
    assert uuid.UUID(meta["eventId"]).version == 4
    stamp = meta["inferenceTime"]
    assert stamp.endswith("Z")
    at = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
    assert before - 1 <= at <= time.time()
    # DEST/ENDPOINT/VARIANT/yyyy/mm/dd/hh/UUID.jsonl, the hour of the event's time.
    relative = files[0].relative_to(tmp_path).parts
    assert relative[:2] == ("fraud", "blue")
    assert "/".join(relative[2:6]) == time.strftime("%Y/%m/%d/%H", time.gmtime(at))


def test_modes_and_base64(onnx_models, tmp_path: Path) -> None:
    capture = capture_config(f"file://{tmp_path}/", captureModes=["Input"], textContentTypes=["text/csv"])
    server = start(onnx_models.identity, capture)
    try:
        body = orjson.dumps([ROW])
        assert post(server.url, body, "application/json; charset=utf-8") == 200
    finally:
        server.stop()
    (line,) = lines_of(tmp_path)
    assert set(line["captureData"]) == {"endpointInput"}
    captured = line["captureData"]["endpointInput"]
    assert (
        captured["encoding"] == "BASE64"
        and captured["observedContentType"] == "application/json; charset=utf-8"
    )
    import base64

    assert base64.b64decode(captured["data"]) == body


def test_files_rotate_by_size(onnx_models, tmp_path: Path) -> None:
    server = start(onnx_models.identity, capture_config(f"file://{tmp_path}/", maxFileBytes=2048))
    try:
        for _ in range(30):
            assert post(server.url, CSV_ROW, "text/csv") == 200
    finally:
        server.stop()
    files = capture_files(tmp_path)
    assert len(files) > 3
    line_bytes = max(len(line) for path in files for line in path.read_bytes().splitlines(keepends=True))
    assert all(path.stat().st_size < 2048 + line_bytes for path in files)
    assert sum(len(path.read_bytes().splitlines()) for path in files) == 30


def test_files_rotate_by_age(onnx_models, tmp_path: Path) -> None:
    server = start(onnx_models.identity, capture_config(f"file://{tmp_path}/", maxFileAgeSeconds=0.3))
    try:
        assert post(server.url, CSV_ROW, "text/csv") == 200
        wait_until(lambda: len(capture_files(tmp_path)) == 1, timeout=10)  # written while serving
        assert metric(server.url, "berth_capture_events_total", variant="blue") == 1
        assert post(server.url, CSV_ROW, "text/csv") == 200
        wait_until(lambda: len(capture_files(tmp_path)) == 2, timeout=10)
    finally:
        server.stop()
    assert len(lines_of(tmp_path)) == 2


def test_a_full_buffer_drops_and_counts(onnx_models, tmp_path: Path) -> None:
    # 200 bytes hold no event (each is reckoned at least 256 bytes): every one is dropped.
    server = start(onnx_models.identity, capture_config(f"file://{tmp_path}/", bufferBytes=200))
    try:
        for _ in range(5):
            assert post(server.url, CSV_ROW, "text/csv") == 200
        assert metric(server.url, "berth_capture_dropped_total", reason="buffer_full") == 5
        assert metric(server.url, "berth_capture_buffer_bytes") == 0
    finally:
        server.stop()
    assert capture_files(tmp_path) == []


# --- S3 (moto in server mode) -------------------------------------------------------------


@pytest.fixture
def moto_of_its_own(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, object]]:
    """A moto server this test may stop: (endpoint, the context manager's generator)."""
    manager = running_moto()
    endpoint = manager.__enter__()
    for name, value in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint, "AWS_MAX_ATTEMPTS": "2"}.items():
        monkeypatch.setenv(name, value)
    try:
        yield endpoint, manager
    finally:
        manager.__exit__(None, None, None)


def test_s3_capture_and_an_unreachable_destination(onnx_models, moto_of_its_own) -> None:
    import boto3

    endpoint, manager = moto_of_its_own
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="capture")
    server = start(onnx_models.identity, capture_config("s3://capture/data/", maxFileAgeSeconds=0.3))
    again = None

    def keys() -> list[str]:
        return [item["Key"] for item in client.list_objects_v2(Bucket="capture").get("Contents", [])]

    try:
        for _ in range(3):
            assert post(server.url, CSV_ROW, "text/csv") == 200
        wait_until(lambda: len(keys()) >= 1, timeout=20)
        assert all(key.startswith("data/fraud/blue/") and key.endswith(".jsonl") for key in keys())
        body = b"".join(client.get_object(Bucket="capture", Key=key)["Body"].read() for key in keys())
        assert len(body.splitlines()) == 3
        manager.__exit__(None, None, None)  # the destination goes away
        slowest = 0.0
        for _ in range(20):
            started = time.perf_counter()
            assert post(server.url, CSV_ROW, "text/csv") == 200
            slowest = max(slowest, time.perf_counter() - started)
        assert slowest < 0.5, slowest
        wait_until(
            lambda: metric(server.url, "berth_capture_dropped_total", reason="upload_failed") > 0, timeout=60
        )
        assert metric(server.url, "berth_capture_events_total") == 3
        # The destination comes back on the same address (moto keeps its buckets in-process).
        again = ThreadedMotoServer(
            ip_address="127.0.0.1", port=int(endpoint.rsplit(":", 1)[1]), verbose=False
        )
        again.start()
        for _ in range(3):
            assert post(server.url, CSV_ROW, "text/csv") == 200

        def accounted() -> bool:  # every event written or counted, and some written since
            written = metric(server.url, "berth_capture_events_total")
            failed = metric(server.url, "berth_capture_dropped_total", reason="upload_failed")
            return written > 3 and written + failed == 26

        wait_until(accounted, timeout=60)
    finally:
        server.stop()
        if again is not None:
            again.stop()


# --- SIGTERM of a real `berth serve` process ------------------------------------------------


@pytest.mark.timeout(90)
def test_sigterm_flushes_every_captured_event(onnx_models, tmp_path: Path) -> None:
    port = free_port()
    capture = capture_config(f"file://{tmp_path}/", maxFileAgeSeconds=3600)
    env = ServeConfig(model_uri=str(onnx_models.identity), variant="blue", capture=capture).to_env()
    env.pop("BERTH_MODEL_URI")
    assert "BERTH_CAPTURE" in env
    process = serve_subprocess(onnx_models.identity, port, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: request(url + "/ping").status == 200, timeout=30)
        sent = 50
        for _ in range(sent):
            assert post(url, CSV_ROW, "text/csv") == 200
        assert capture_files(tmp_path) == []  # an hour-long file: only the stop writes it
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream:
                stream.close()
    assert len(lines_of(tmp_path)) == sent


def test_the_planners_settings_are_accepted() -> None:
    # What operator/berth_operator/planner/capture.py writes for an async variant.
    text = (
        '{"captureModes":["Input","Output"],"destinationUri":"s3://bucket/capture/","endpoint":"fraud",'
        '"maxFileAgeSeconds":60,"maxFileBytes":16777216,"samplingPercentage":12.5,'
        '"source":"async","textContentTypes":["text/csv","application/json"],"variant":"blue"}'
    )
    config = capture_from_json(text)
    assert config == CaptureConfig("s3://bucket/capture/", "fraud", "blue", 12.5, source="async")
    assert capture_from_json(capture_to_json(config)) == config


def test_a_new_hour_starts_a_new_file(tmp_path: Path) -> None:
    capturer = Capturer(capture_config(f"file://{tmp_path}/"))
    capturer.start()
    for at in (calendar.timegm((2026, 12, 1, 9, 59, 59)), calendar.timegm((2026, 12, 1, 10, 0, 0))):
        event = Event(b"id", at + 0.5, b"text/csv", CSV_ROW, b"text/csv", b"1", "realtime", 300)
        assert capturer.buffer.put(event)
    capturer.close()
    assert [path.relative_to(tmp_path).parts[:6] for path in capture_files(tmp_path)] == [
        ("fraud", "blue", "2026", "12", "01", "09"),
        ("fraud", "blue", "2026", "12", "01", "10"),
    ]
    assert capturer.stats.written == 2 and capturer.stats.dropped == {}


def test_a_stop_that_cannot_upload_in_time_counts_shutdown_drops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An S3 endpoint that accepts connections and never answers: the upload hangs.
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
    for name, value in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint, "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(name, value)
    try:
        capturer = Capturer(capture_config("s3://capture/data/"))
        capturer.start()
        for _ in range(4):
            assert capturer.offer(b"id", b"text/csv", CSV_ROW, b"text/csv", b"1")
        started = time.monotonic()
        capturer.close(timeout=1.0)
        assert time.monotonic() - started < 3
        assert capturer.stats.dropped == {"shutdown": 4} and capturer.stats.written == 0
    finally:
        silent.close()

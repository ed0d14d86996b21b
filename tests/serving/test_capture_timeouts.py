"""A capture destination that accepts connections and never answers: uploads are bounded
(storage.py's capture client: connect/read timeouts, a small retry budget), the file's events
are counted as upload_failed within seconds, requests keep answering, and the writer recovers
when a destination answers again. Real server, real sockets, moto in server mode."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from berth_serving import storage
from berth_serving.capture import Capturer
from berth_serving.config import ServeConfig

from tests.serving.support import ThreadedServer, request, wait_until
from tests.serving.test_capture import CSV_ROW, capture_config, metric, post
from tests.support.s3server import S3_ENV, running_moto

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def silent_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An S3 endpoint on loopback that accepts every connection and never sends a byte."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
    for name, value in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)  # the client's own budget, not the env's
    try:
        yield endpoint
    finally:
        silent.close()


def test_one_upload_to_a_silent_destination_gives_up_within_seconds(silent_endpoint: str) -> None:
    writer = storage.open_output(storage.parse_uri("s3://capture/x.jsonl"), durable=False, bounded=True)
    writer.write(b"{}\n")
    started = time.monotonic()
    with pytest.raises(storage.StorageError):
        writer.commit()
    took = time.monotonic() - started
    # Without the bounded client: boto's 60 s read timeout, retried (minutes).
    assert took <= storage.CAPTURE_UPLOAD_SECONDS + 2, took


def test_a_hung_destination_counts_upload_failed_and_requests_keep_answering(
    onnx_models, silent_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture = capture_config("s3://capture/data/", maxFileAgeSeconds=0.2)
    server = ThreadedServer(ServeConfig(model_uri=str(onnx_models.identity), variant="blue", capture=capture))
    server.start()
    try:
        started = time.monotonic()
        slowest = 0.0
        for _ in range(5):
            sent = time.perf_counter()
            assert post(server.url, CSV_ROW, "text/csv") == 200
            slowest = max(slowest, time.perf_counter() - sent)
        wait_until(
            lambda: metric(server.url, "berth_capture_dropped_total", reason="upload_failed") > 0,
            timeout=storage.CAPTURE_UPLOAD_SECONDS + 5,
        )
        failed_after = time.monotonic() - started
        assert failed_after <= storage.CAPTURE_UPLOAD_SECONDS + 5, failed_after
        # While the writer thread waits on the silent socket, requests answer at once.
        for _ in range(20):
            sent = time.perf_counter()
            assert post(server.url, CSV_ROW, "text/csv") == 200
            slowest = max(slowest, time.perf_counter() - sent)
        assert slowest < 0.5, slowest
        assert request(server.url + "/ping").status == 200
        # A destination that answers again (the next file's client): the writer recovers.
        with running_moto() as endpoint:
            import boto3

            monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="capture")
            wait_until(  # the file the silent endpoint holds fails first
                lambda: (
                    metric(server.url, "berth_capture_dropped_total", reason="upload_failed") >= 25
                    or metric(server.url, "berth_capture_events_total") > 0
                ),
                timeout=2 * storage.CAPTURE_UPLOAD_SECONDS + 5,
            )
            for _ in range(3):
                assert post(server.url, CSV_ROW, "text/csv") == 200
            wait_until(lambda: metric(server.url, "berth_capture_events_total") >= 3, timeout=30)
    finally:
        server.stop()


def test_close_against_a_silent_destination_is_bounded(silent_endpoint: str) -> None:
    capturer = Capturer(capture_config("s3://capture/data/"))
    capturer.start()
    for _ in range(4):
        assert capturer.offer(b"id", b"text/csv", CSV_ROW, b"text/csv", b"1")
    started = time.monotonic()
    capturer.close(timeout=storage.CAPTURE_UPLOAD_SECONDS + 5)
    took = time.monotonic() - started
    assert took <= storage.CAPTURE_UPLOAD_SECONDS + 5, took
    # The upload gave up by itself (upload_failed), not the stop running out of time (shutdown).
    assert capturer.stats.dropped == {"upload_failed": 4}, capturer.stats.dropped

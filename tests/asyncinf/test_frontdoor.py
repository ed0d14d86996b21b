"""`berth async-frontdoor` as a real process on a real redis-server: what it queues, what it
refuses (bad headers, huge or slow bodies, path escapes, unknown variants) and how it behaves
when Redis is away."""

from __future__ import annotations

import json
import select
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from berth_serving.asyncinf.keys import counts_key, inference_key
from berth_serving.auth.apikeys import hashed_entry

from tests.asyncinf.support import (
    BERTH,
    NAMESPACE,
    Child,
    Variant,
    metric_value,
    post,
    start_child,
    start_frontdoor,
    status_of,
    wait_for,
    write_routes,
)
from tests.serving.support import free_port, request
from tests.serving.test_auth_keys import secret_volume
from tests.support.rawhttp import connect, head, read_response, send_ignoring_reset
from tests.support.redisserver import RedisServer

pytestmark = pytest.mark.timeout(90)
LIMIT = 64 * 1024  # the front door's --max-payload-bytes here


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("async-store")


@pytest.fixture(scope="module")
def variants(store: Path) -> list[Variant]:
    return [
        Variant("blue", "cfg-1", 1.0, f"file://{store}/out/", f"file://{store}/failed/"),
        Variant("green", "cfg-1", 0.0, f"file://{store}/green-out/", f"file://{store}/green-failed/"),
    ]


@pytest.fixture(scope="module")
def door(redis_server: RedisServer, store: Path, variants: list[Variant]) -> Iterator[Child]:
    routes = store / "routes.json"
    write_routes(routes, variants)
    child = start_frontdoor(
        redis_server.url, routes, store / "frontdoor.log", "--max-payload-bytes", str(LIMIT),
        "--body-timeout-seconds", "2",
    )  # fmt: skip
    try:
        yield child
    finally:
        assert child.stop() == 0, child.log()


@pytest.fixture
def db(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def error_of(answer: object) -> str:
    return str(json.loads(answer.body)["error"]["message"])  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "inference_id", ["a/b", "../x", "x" * 129, "semi;colon", "caf\u00e9".encode().decode("latin-1"), "a b"]
)
def test_a_bad_inference_id_is_400_and_queues_nothing(
    door: Child, db: redis.Redis, variants: list[Variant], inference_id: str
) -> None:
    answer = post(door.url, b"[1]", {"X-Berth-Inference-Id": inference_id})
    assert answer.status == 400
    assert "X-Berth-Inference-Id must be 1 to 128 characters" in error_of(answer)
    assert db.xlen(variants[0].stream) == 0


@pytest.mark.parametrize(
    ("header", "value", "most"),
    [
        ("X-Berth-Request-TTL-Seconds", "0", 21600),
        ("X-Berth-Request-TTL-Seconds", "21601", 21600),
        ("X-Berth-Request-TTL-Seconds", "-5", 21600),
        ("X-Berth-Request-TTL-Seconds", "1.5", 21600),
        ("X-Berth-Invocation-Timeout-Seconds", "3601", 3600),
        ("X-Berth-Invocation-Timeout-Seconds", "soon", 3600),
        ("X-Berth-Invocation-Timeout-Seconds", "", 3600),
    ],
)
def test_ttl_and_timeout_out_of_range_are_400_naming_the_range(
    door: Child, db: redis.Redis, header: str, value: str, most: int
) -> None:
    answer = post(door.url, b"[1]", {header: value})
    assert answer.status == 400, answer.body
    assert f"{header} must be a whole number of seconds from 1 to {most}" in error_of(answer)


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("file:///tmp/../etc/passwd", "may not contain '..'"),
        ("file:///srv/data/../../etc/shadow", "may not contain '..'"),
        ("file://relative/path.csv", "absolute file:///PATH"),
        ("file:///srv/data/", "not a directory"),
        ("http://169.254.169.254/latest/meta-data", "s3:// or file:// URI"),
        ("/etc/passwd", "s3:// or file:// URI"),
        ("s3://bucket-only/", "must name an object"),
        ("s3:///key", "needs a bucket"),
    ],
)
def test_input_locations_that_are_not_s3_or_escape_are_400(
    door: Child, db: redis.Redis, variants: list[Variant], location: str, expected: str
) -> None:
    answer = post(door.url, None, {"X-Berth-Input-Location": location})
    assert answer.status == 400, answer.body
    assert expected in error_of(answer)
    assert db.xlen(variants[0].stream) == 0


def test_no_input_or_both_inputs_are_400(door: Child) -> None:
    nothing = post(door.url, None, {})
    assert nothing.status == 400 and "no input" in error_of(nothing)
    both = post(door.url, b"[1]", {"X-Berth-Input-Location": "s3://b/k.csv"})
    assert both.status == 400 and "not both" in error_of(both)


def test_a_header_sent_twice_is_400_not_the_first_taken(door: Child) -> None:
    with connect(door.port) as sock:
        sock.sendall(
            head("POST", "/async-invocations", 3, X_Berth_Inference_Id="one") [:-2]
            + b"X-Berth-Inference-Id: two\r\n\r\n[1]"
        )  # fmt: skip
        answer = read_response(sock)
    assert answer is not None and answer.status == 400
    assert "more than one x-berth-inference-id header" in answer.error()


def test_unknown_target_variant_is_400_listing_the_variants(door: Child) -> None:
    answer = post(door.url, b"[1]", {"X-Berth-Target-Variant": "purple"})
    assert answer.status == 400
    assert error_of(answer) == "no variant 'purple' in endpoint ep; its variants are blue, green"


@pytest.mark.parametrize("declared", [LIMIT + 1, 10**9])
def test_a_declared_huge_body_is_413_before_any_of_it_is_read(door: Child, declared: int) -> None:
    with connect(door.port) as sock:
        started = time.monotonic()
        sock.sendall(head("POST", "/async-invocations", declared, Content_Type="text/csv"))
        answer = read_response(sock, timeout=5)
        elapsed = time.monotonic() - started
    assert answer is not None and answer.status == 413
    assert f"payload of {declared} bytes is over the limit of" in answer.error()
    assert elapsed < 2.0
    if declared == LIMIT + 1:  # the app's own answer; past the edge's body budget, the edge's
        assert "name them in X-Berth-Input-Location" in answer.error()


def test_a_chunked_body_past_the_limit_is_413_while_it_streams(door: Child, db: redis.Redis) -> None:
    with connect(door.port) as sock:
        sock.sendall(head("POST", "/async-invocations", Transfer_Encoding="chunked"))
        chunk = b"x" * 16384
        sent = 0
        started = time.monotonic()
        # Send until the answer comes (it must, long before the 64 MiB end).
        while sent < 64 * 2**20 and time.monotonic() - started < 10:
            if select.select([sock], [], [], 0)[0] or not send_ignoring_reset(
                sock, b"%x\r\n%s\r\n" % (len(chunk), chunk)
            ):
                break
            sent += len(chunk)
        answer = read_response(sock, timeout=5)
    assert answer is not None and answer.status == 413, answer
    assert f"payload is over the limit of {LIMIT} bytes" in answer.error()
    assert sent < 8 * 2**20  # cut off early, not read to the end
    assert db.dbsize() == 0


def test_a_slow_body_is_408_and_queues_nothing(door: Child, db: redis.Redis) -> None:
    with connect(door.port) as sock:
        sock.sendall(head("POST", "/async-invocations", 100) + b"x" * 10)
        started = time.monotonic()
        # A byte every half second: it never stalls long enough to be idle, and never finishes.
        while time.monotonic() - started < 6 and not select.select([sock], [], [], 0.5)[0]:
            if not send_ignoring_reset(sock, b"x"):
                break
        answer = read_response(sock, timeout=5)
        elapsed = time.monotonic() - started
    assert answer is not None and answer.status == 408
    assert "request body not received within 2 s" in answer.error()
    assert elapsed < 5
    assert db.dbsize() == 0


def test_other_paths_and_methods(door: Child) -> None:
    assert request(door.url + "/invocations", "POST", b"[1]").status == 404
    assert request(door.url + "/async-invocations").status == 405
    assert request(door.url + "/async-invocations/abc", "DELETE").status == 405
    assert request(door.url + "/async-invocations/a%2F..%2Fb").status == 400
    missing = request(door.url + "/async-invocations/never-queued")
    assert missing.status == 404 and b"never-queued" in missing.body


# --------------------------------------------------------------------------- queueing


def test_an_inline_body_is_staged_queued_and_answered_202(
    door: Child, db: redis.Redis, store: Path, variants: list[Variant]
) -> None:
    answer = post(door.url, b"1,2,3,4\n", {"Content-Type": "text/csv", "Accept": "application/json"})
    assert answer.status == 202, answer.body
    inference_id = answer.json["inferenceId"]
    assert len(inference_id) == 32
    assert answer.json == {
        "inferenceId": inference_id,
        "outputLocation": f"file://{store}/out/{inference_id}.out",
        "failureLocation": f"file://{store}/failed/{inference_id}-error.out",
    }
    assert answer.headers["x-berth-variant"] == "blue"
    assert answer.headers["x-berth-endpoint-config"] == "cfg-1"
    assert answer.headers["x-berth-inference-id"] == inference_id
    assert (store / "out" / "inputs" / f"{inference_id}.in").read_bytes() == b"1,2,3,4\n"
    [(_, message)] = db.xrange(variants[0].stream)
    assert message["input"] == f"file://{store}/out/inputs/{inference_id}.in"
    assert message["contentType"] == "text/csv" and message["accept"] == "application/json"
    assert message["staged"] == "1" and message["timeoutSeconds"] == "900"
    assert float(message["expiresAt"]) - float(message["enqueuedAt"]) == pytest.approx(21600)
    assert status_of(door.url, inference_id)["state"] == "Queued"
    record = inference_key(NAMESPACE, "ep", inference_id)
    assert 21600 + 7 * 86400 - 60 < db.ttl(record) <= 21600 + 7 * 86400


def test_a_stored_input_is_queued_where_it_is(door: Child, db: redis.Redis, variants: list[Variant]) -> None:
    headers = {
        "X-Berth-Input-Location": "s3://bucket/inputs/big.csv",
        "Content-Type": "text/csv",
        "X-Berth-Request-TTL-Seconds": "60",
        "X-Berth-Invocation-Timeout-Seconds": "3600",
        "X-Berth-Inference-Id": "job-7.a_b",
    }
    answer = post(door.url, None, headers)
    assert answer.status == 202, answer.body
    assert answer.json["inferenceId"] == "job-7.a_b"
    [(_, message)] = db.xrange(variants[0].stream)
    assert message["input"] == "s3://bucket/inputs/big.csv" and message["staged"] == "0"
    assert message["timeoutSeconds"] == "3600"
    assert float(message["expiresAt"]) - float(message["enqueuedAt"]) == pytest.approx(60)


def test_a_repeated_id_answers_the_first_locations_and_queues_once(
    door: Child, db: redis.Redis, variants: list[Variant]
) -> None:
    first = post(door.url, b"[1]", {"X-Berth-Inference-Id": "same"})
    again = post(door.url, b"[2]", {"X-Berth-Inference-Id": "same", "X-Berth-Target-Variant": "green"})
    assert first.status == again.status == 202
    assert again.json == first.json
    assert again.headers["x-berth-variant"] == "blue"
    assert db.xlen(variants[0].stream) == 1 and db.xlen(variants[1].stream) == 0


def test_target_variant_picks_a_variant_without_weight(
    door: Child, db: redis.Redis, variants: list[Variant]
) -> None:
    answer = post(door.url, b"[1]", {"X-Berth-Target-Variant": "green"})
    assert answer.status == 202 and answer.headers["x-berth-variant"] == "green"
    assert "green-out" in answer.json["outputLocation"]
    assert db.xlen(variants[1].stream) == 1
    for _ in range(20):  # weight 0: never drawn otherwise
        assert post(door.url, b"[1]").headers["x-berth-variant"] == "blue"


def test_metrics_show_backlog_per_variant(door: Child, db: redis.Redis, variants: list[Variant]) -> None:
    for _ in range(3):
        assert post(door.url, b"[1]").status == 202
    assert db.xinfo_groups(variants[0].stream)[0]["lag"] == 3  # the group exists before any worker
    db.xreadgroup("workers", "w", {variants[0].stream: ">"}, count=1)
    time.sleep(0.05)
    text = request(door.url + "/metrics").body.decode()
    labels = {"variant": "blue", "endpoint_config": "cfg-1"}
    assert metric_value(text, "berth_async_backlog", **labels) == 3
    assert metric_value(text, "berth_async_backlog_pending", **labels) == 1
    assert metric_value(text, "berth_async_oldest_message_age_seconds", **labels) > 0.04
    assert metric_value(text, "berth_async_backlog", variant="green") == 0
    assert metric_value(text, "berth_async_enqueued_total", **labels) >= 3
    assert metric_value(text, "berth_async_queue_up") == 1
    assert not db.exists(variants[1].stream)  # a scrape creates nothing
    assert not db.exists(counts_key(variants[1].stream))


def test_a_changed_routes_file_is_read_again(door: Child, store: Path, variants: list[Variant]) -> None:
    routes = store / "routes.json"
    purple = Variant("purple", "cfg-2", 1.0, f"file://{store}/p-out/", f"file://{store}/p-failed/")
    write_routes(routes, [*variants, purple])
    try:
        wait_for(lambda: post(door.url, b"[1]", {"X-Berth-Target-Variant": "purple"}).status == 202, 10)
        bad = post(door.url, b"[1]", {"X-Berth-Target-Variant": "nope"})
        assert "blue, green, purple" in error_of(bad)
        routes.write_text("{not json")  # a broken file keeps the last good routes
        time.sleep(1.5)
        assert post(door.url, b"[1]", {"X-Berth-Target-Variant": "purple"}).status == 202
    finally:
        write_routes(routes, variants)
    wait_for(lambda: post(door.url, b"[1]", {"X-Berth-Target-Variant": "purple"}).status == 400, 10)


# --------------------------------------------------------------------------- Redis away, auth


def test_redis_unavailable_is_503_with_retry_after(tmp_path: Path, variants: list[Variant]) -> None:
    routes = tmp_path / "routes.json"
    write_routes(routes, variants)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    child = start_frontdoor(dead, routes, tmp_path / "frontdoor.log")
    try:
        answer = post(child.url, b"[1]")
        assert answer.status == 503, answer.body
        assert answer.headers["retry-after"] == "1"
        assert "the queue is unavailable" in error_of(answer)
        stored = post(child.url, None, {"X-Berth-Input-Location": "s3://b/k"})
        assert stored.status == 503
        assert request(child.url + "/async-invocations/abc").status == 503
        metrics = request(child.url + "/metrics")
        assert metrics.status == 200 and metric_value(metrics.body.decode(), "berth_async_queue_up") == 0
        assert request(child.url + "/ping").status == 200
    finally:
        assert child.stop() == 0
    assert "Traceback" not in child.log()


def test_a_missing_routes_file_is_503_until_it_appears(
    redis_url: str, tmp_path: Path, variants: list[Variant]
) -> None:
    routes = tmp_path / "routes.json"
    port = free_port()
    argv = [BERTH, "async-frontdoor", "--routes", str(routes), "--redis-url", redis_url,
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    child = start_child(argv, tmp_path / "frontdoor.log", port=port)
    try:
        answer = wait_for(lambda: request(child.url + "/ping"), 20)
        assert answer.status == 503 and b"cannot read routes file" in answer.body
        assert post(child.url, b"[1]").status == 503
        write_routes(routes, variants)
        wait_for(lambda: request(child.url + "/ping").status == 200, 10)
        assert post(child.url, b"[1]").status == 202
    finally:
        assert child.stop() == 0


def test_invoke_auth_guards_the_front_door(redis_url: str, tmp_path: Path, variants: list[Variant]) -> None:
    routes = tmp_path / "routes.json"
    write_routes(routes, variants)
    keys = secret_volume(tmp_path / "keys", {"ci": hashed_entry("alice-key-0123456789abcdef")})
    env = {"BERTH_AUTH_MODE": "APIKey", "BERTH_API_KEYS_DIR": str(keys)}
    child = start_frontdoor(redis_url, routes, tmp_path / "frontdoor.log", env=env)
    try:
        refused = post(child.url, b"[1]")
        assert refused.status == 401 and "www-authenticate" in refused.headers
        assert request(child.url + "/async-invocations/x").status == 401
        allowed = post(child.url, b"[1]", {"X-Berth-Api-Key": "alice-key-0123456789abcdef"})
        assert allowed.status == 202
        assert request(child.url + "/ping").status == 200
        text = request(child.url + "/metrics").body.decode()
        assert metric_value(text, "berth_invocations_by_caller_total", caller="apikey:ci") == 1
    finally:
        assert child.stop() == 0


def test_storage_that_refuses_the_staging_is_503_not_500(redis_url: str, tmp_path: Path, s3: object) -> None:
    routes = tmp_path / "routes.json"
    write_routes(
        routes, [Variant("blue", "cfg-1", 1.0, "s3://no-such-bucket/out/", "s3://no-such-bucket/f/")]
    )
    child = start_frontdoor(redis_url, routes, tmp_path / "frontdoor.log", env=s3.env)  # type: ignore[attr-defined]
    try:
        answer = post(child.url, b"[1]")
        assert answer.status == 503 and answer.headers["retry-after"] == "1"
        assert "NoSuchBucket" in error_of(answer)
        stored = post(child.url, None, {"X-Berth-Input-Location": "s3://elsewhere/in.csv"})
        assert stored.status == 202  # nothing to stage: queued, the worker reads it
    finally:
        assert child.stop() == 0
    assert "Traceback" not in child.log()

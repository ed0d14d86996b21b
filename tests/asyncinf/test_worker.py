"""`berth async-worker` as a real process: a real front door queues on a real redis-server,
the worker calls a stand-in model server (slow, failing, counting calls) and writes answers
to file:// or moto's S3."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from berth_serving.asyncinf.keys import counts_key

from tests.asyncinf.support import (
    Child,
    StandInModel,
    Variant,
    Webhook,
    children,
    metric_value,
    post,
    start_frontdoor,
    start_worker,
    status_of,
    wait_done,
    wait_for,
    write_routes,
)
from tests.serving.support import request

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def setup(redis_url: str, tmp_path: Path) -> Iterator[SimpleNamespace]:
    variant = Variant("blue", "cfg-1", 1.0, f"file://{tmp_path}/out/", f"file://{tmp_path}/failed/")
    routes = tmp_path / "routes.json"
    write_routes(routes, [variant])
    db = redis.Redis.from_url(redis_url, decode_responses=True)
    with StandInModel() as model, children() as started:
        door = start_frontdoor(redis_url, routes, tmp_path / "frontdoor.log")
        started.append(door)

        def worker(*extra: str, name: str = "w1", **options: Any) -> Child:
            child = start_worker(
                redis_url,
                variant,
                model.invoke_url,
                tmp_path / f"{name}.log",
                *extra,
                consumer=name,
                **options,
            )
            started.append(child)
            return child

        yield SimpleNamespace(
            variant=variant, door=door, model=model, db=db, worker=worker, root=tmp_path, redis_url=redis_url
        )
    db.close()


def counts(setup: SimpleNamespace) -> dict[str, int]:
    return {key: int(value) for key, value in setup.db.hgetall(counts_key(setup.variant.stream)).items()}


def read_uri(uri: str) -> bytes:
    assert uri.startswith("file://")
    return Path(uri[len("file://") :]).read_bytes()


def test_an_inline_input_is_answered_into_its_output_and_acknowledged(setup: SimpleNamespace) -> None:
    worker = setup.worker()
    answer = post(setup.door.url, b"1,2,3\n", {"Content-Type": "text/csv", "Accept": "text/csv"})
    assert answer.status == 202
    done = wait_done(setup.door.url, answer.json["inferenceId"])
    assert done["state"] == "Succeeded" and done["reason"] == ""
    assert read_uri(answer.json["outputLocation"]) == b"echo:text/csv:1,2,3\n"
    assert not Path(answer.json["failureLocation"][len("file://") :]).exists()
    assert setup.model.calls == [(answer.json["inferenceId"], 6)]  # called with the message's id
    assert counts(setup) == {"succeeded": 1}
    assert setup.db.xlen(setup.variant.stream) == 0  # acknowledged and deleted
    assert setup.db.xpending(setup.variant.stream, "workers")["pending"] == 0
    text = request(f"http://127.0.0.1:{worker.port}/metrics").body.decode()
    assert metric_value(text, "berth_async_outcomes_total", variant="blue", outcome="succeeded") == 1
    assert metric_value(text, "berth_async_inflight", variant="blue") == 0


def test_a_stored_s3_input_is_streamed_and_the_answer_written_to_s3(
    redis_url: str, tmp_path: Path, s3: Any
) -> None:
    bucket = s3.bucket
    variant = Variant("blue", "cfg-1", 1.0, f"s3://{bucket}/async/out/", f"s3://{bucket}/async/failed/")
    routes = tmp_path / "routes.json"
    write_routes(routes, [variant])
    payload = b"0123456789" * 300_000  # 3 MB: more than one read chunk
    s3.client.put_object(Bucket=bucket, Key="in/big.bin", Body=payload)
    with StandInModel() as model, children() as started:
        door = start_frontdoor(redis_url, routes, tmp_path / "frontdoor.log", env=s3.env)
        started.append(door)
        started.append(start_worker(redis_url, variant, model.invoke_url, tmp_path / "w.log", env=s3.env))
        headers = {
            "X-Berth-Input-Location": f"s3://{bucket}/in/big.bin",
            "Content-Type": "application/octet-stream",
        }
        answer = post(door.url, None, headers)
        assert answer.status == 202, answer.body
        inference_id = answer.json["inferenceId"]
        assert answer.json["outputLocation"] == f"s3://{bucket}/async/out/{inference_id}.out"
        assert wait_done(door.url, inference_id)["state"] == "Succeeded"
        out = s3.client.get_object(Bucket=bucket, Key=f"async/out/{inference_id}.out")["Body"].read()
        assert out == b"echo:application/octet-stream:" + payload
        assert model.calls == [(inference_id, len(payload))]
        # An inline body is staged under the output prefix, in S3 too.
        inline = post(door.url, b'{"a": 1}')
        staged = f"async/out/inputs/{inline.json['inferenceId']}.in"
        assert s3.client.get_object(Bucket=bucket, Key=staged)["Body"].read() == b'{"a": 1}'
        assert wait_done(door.url, inline.json["inferenceId"])["state"] == "Succeeded"


def test_a_failing_model_goes_to_the_failure_path_with_its_message(setup: SimpleNamespace) -> None:
    setup.worker()
    answer = post(setup.door.url, b"fail:422")
    done = wait_done(setup.door.url, answer.json["inferenceId"])
    assert done["state"] == "Failed"
    assert done["reason"] == "model answered 422: the model cannot take this"
    assert json.loads(read_uri(answer.json["failureLocation"])) == {"reason": done["reason"], "code": 422}
    assert not Path(answer.json["outputLocation"][len("file://") :]).exists()
    assert counts(setup) == {"failed": 1}


def test_a_timeout_fails_with_its_reason_in_time(setup: SimpleNamespace) -> None:
    setup.worker()
    started = time.monotonic()
    answer = post(setup.door.url, b"sleep:6", {"X-Berth-Invocation-Timeout-Seconds": "1"})
    done = wait_done(setup.door.url, answer.json["inferenceId"])
    assert time.monotonic() - started < 5
    assert done["state"] == "Failed" and done["reason"] == "timed out after 1 s"
    assert json.loads(read_uri(answer.json["failureLocation"]))["code"] == 504


def test_an_expired_ttl_fails_without_calling_the_model(setup: SimpleNamespace) -> None:
    answer = post(setup.door.url, b"[1]", {"X-Berth-Request-TTL-Seconds": "1"})
    time.sleep(1.3)  # no worker yet: the message waits past its TTL
    worker = setup.worker()
    done = wait_done(setup.door.url, answer.json["inferenceId"])
    assert done["state"] == "Failed"
    assert re.fullmatch(r"expired: waited \d+ s in the queue, past its TTL of 1 s", done["reason"])
    assert setup.model.calls == []
    assert counts(setup) == {"expired": 1}
    text = request(f"http://127.0.0.1:{worker.port}/metrics").body.decode()
    assert metric_value(text, "berth_async_outcomes_total", outcome="expired", reason="expired") == 1


def test_at_most_max_concurrency_messages_run_at_once(setup: SimpleNamespace) -> None:
    setup.worker(concurrency=2)
    ids = [post(setup.door.url, b"sleep:0.5").json["inferenceId"] for _ in range(6)]
    for inference_id in ids:
        assert wait_done(setup.door.url, inference_id)["state"] == "Succeeded"
    assert setup.model.most_running == 2


def test_more_messages_in_flight_than_a_default_redis_pool_holds_are_all_acknowledged(
    setup: SimpleNamespace,
) -> None:
    """Each message in flight finishes with its own Redis call: at 150 at once, redis-py's
    default pool (100) refused the acknowledgements with "Too many connections", and every
    answered message waited a minute to be redelivered."""
    worker = setup.worker(concurrency=150)
    ids = [post(setup.door.url, b"sleep:1").json["inferenceId"] for _ in range(300)]
    for inference_id in ids:
        assert wait_done(setup.door.url, inference_id, timeout=30)["state"] == "Succeeded"
    assert setup.model.most_running > 100  # the pool's old limit was really passed
    assert counts(setup) == {"succeeded": 300}  # none redelivered
    assert "Too many connections" not in worker.log()


def test_messages_wait_until_the_model_answers_ping(setup: SimpleNamespace) -> None:
    setup.model.ready = False
    worker = setup.worker()
    answer = post(setup.door.url, b"[1]")
    wait_for(lambda: "waiting for the model server" in worker.log())
    time.sleep(1.0)
    assert setup.model.calls == []
    assert status_of(setup.door.url, answer.json["inferenceId"])["state"] == "Queued"
    setup.model.ready = True
    assert wait_done(setup.door.url, answer.json["inferenceId"])["state"] == "Succeeded"


def test_a_worker_killed_mid_request_is_redelivered_and_answered_once(setup: SimpleNamespace) -> None:
    with Webhook() as hook:
        first = setup.worker("--success-webhook", hook.url, name="w1", claim_idle=2.0)
        answer = post(setup.door.url, b"sleep:1.5")
        inference_id = answer.json["inferenceId"]
        wait_for(lambda: inference_id in setup.model.started)
        assert status_of(setup.door.url, inference_id)["state"] == "Running"
        first.signal(signal.SIGKILL)
        first.process.wait(10)
        second = setup.worker("--success-webhook", hook.url, name="w2", claim_idle=2.0)
        done = wait_done(setup.door.url, inference_id, timeout=30)
        assert done["state"] == "Succeeded"
        assert read_uri(answer.json["outputLocation"]) == b"echo:application/json:sleep:1.5"
        assert counts(setup) == {"succeeded": 1, "redelivered": 1}
        assert setup.model.started.count(inference_id) == 2  # the dead worker's call, and the retry
        wait_for(lambda: len(hook.attempts) >= 1)
        time.sleep(0.5)
        assert [event["data"]["inferenceId"] for event in hook.events] == [inference_id]  # notified once
        text = request(f"http://127.0.0.1:{second.port}/metrics").body.decode()
        assert metric_value(text, "berth_async_outcomes_total", outcome="redelivered") == 1
        assert setup.db.xlen(setup.variant.stream) == 0


def test_past_max_attempts_a_message_fails_as_worker_died(setup: SimpleNamespace) -> None:
    first = setup.worker(name="w1", claim_idle=1.0)
    answer = post(setup.door.url, b"sleep:1")
    inference_id = answer.json["inferenceId"]
    wait_for(lambda: inference_id in setup.model.started)
    first.signal(signal.SIGKILL)
    first.process.wait(10)
    setup.worker("--max-attempts", "1", name="w2", claim_idle=1.0)
    done = wait_done(setup.door.url, inference_id, timeout=30)
    assert done["state"] == "Failed" and done["reason"] == "gave up after 1 attempts: worker died"
    assert json.loads(read_uri(answer.json["failureLocation"]))["code"] == 500
    assert setup.model.started.count(inference_id) == 1
    assert counts(setup) == {"failed": 1}


def test_sigterm_finishes_the_messages_in_flight_and_takes_no_more(setup: SimpleNamespace) -> None:
    worker = setup.worker(concurrency=1)
    running = post(setup.door.url, b"sleep:1.5").json["inferenceId"]
    wait_for(lambda: running in setup.model.started)
    worker.signal(signal.SIGTERM)
    time.sleep(0.2)
    waiting = post(setup.door.url, b"[1]").json["inferenceId"]
    assert worker.process.wait(20) == 0, worker.log()
    assert status_of(setup.door.url, running)["state"] == "Succeeded"
    assert status_of(setup.door.url, waiting)["state"] == "Queued"
    assert setup.db.xlen(setup.variant.stream) == 1
    assert "Traceback" not in worker.log()


def queued(answer: Any) -> Any:
    return answer.json if answer.status == 202 else None


def test_the_worker_rides_out_a_redis_restart(tmp_path: Path) -> None:
    from tests.asyncinf.support import start_redis_on
    from tests.serving.support import free_port

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = start_redis_on(port, tmp_path)
    variant = Variant("blue", "cfg-1", 1.0, f"file://{tmp_path}/out/", f"file://{tmp_path}/failed/")
    routes = tmp_path / "routes.json"
    write_routes(routes, [variant])
    try:
        with StandInModel() as model, children() as started:
            door = start_frontdoor(url, routes, tmp_path / "frontdoor.log")
            started.append(door)
            worker = start_worker(url, variant, model.invoke_url, tmp_path / "w.log")
            started.append(worker)
            before = post(door.url, b"[1]").json["inferenceId"]
            assert wait_done(door.url, before)["state"] == "Succeeded"
            server.terminate()
            server.wait(10)
            assert post(door.url, b"[2]").status == 503
            wait_for(lambda: "redis unavailable" in worker.log(), 15)
            server = start_redis_on(port, tmp_path)  # empty: no stream, no group, no records
            after = wait_for(lambda: queued(post(door.url, b"[3]")), 15)["inferenceId"]
            assert wait_done(door.url, after)["state"] == "Succeeded"
            assert worker.process.poll() is None
            assert "redis back" in worker.log() and "Traceback" not in worker.log()
    finally:
        server.terminate()
        server.wait(10)


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_large_input_and_answer_are_streamed_not_held(setup: SimpleNamespace) -> None:
    big = setup.root / "big.bin"
    size = 256 * 2**20
    with big.open("wb") as out:
        for _ in range(size // 2**20):
            out.write(b"r" * 2**20)
    worker = setup.worker()
    answer = post(
        setup.door.url, None, {"X-Berth-Input-Location": f"file://{big}", "Content-Type": "text/csv"}
    )
    done = wait_done(setup.door.url, answer.json["inferenceId"], timeout=90)
    assert done["state"] == "Succeeded", done
    output = Path(answer.json["outputLocation"][len("file://") :])
    assert output.stat().st_size == size + len(b"echo:text/csv:")
    peak = peak_rss_bytes(worker.process.pid)
    print(f"worker peak RSS {peak / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB input and answer")
    assert peak < 160 * 2**20  # neither the input nor the answer was held whole


def test_a_malformed_message_is_acknowledged_as_failed_not_looped(setup: SimpleNamespace) -> None:
    worker = setup.worker(claim_idle=1.0)
    setup.db.xadd(setup.variant.stream, {"id": "junk", "input": "file:///x"})  # no output or failure
    setup.db.xadd(setup.variant.stream, {**dict.fromkeys(("id", "input", "outputUri", "failureUri"), "v"),
                                         "timeoutSeconds": "soon"})  # fmt: skip
    wait_for(lambda: counts(setup).get("failed") == 2)
    good = post(setup.door.url, b"[1]").json["inferenceId"]
    assert wait_done(setup.door.url, good)["state"] == "Succeeded"
    assert setup.db.xlen(setup.variant.stream) == 0
    assert setup.model.calls == [(good, 3)]
    log = worker.log()
    assert "malformed message: no outputUri, failureUri" in log
    assert "malformed message: timeoutSeconds is not a number: 'soon'" in log
    assert "Traceback" not in log

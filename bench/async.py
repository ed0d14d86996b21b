"""Async inference benchmark (not a test): the queue against synchronous /invocations on the
same replica, in one run.

    .venv/bin/python bench/async.py [--requests 10000] [--concurrency 64] [--rounds 3]

Parts, all real and on loopback: redis-server (from PATH), one `berth serve` replica of the
MLP (256-1024-1024-10, one row per request), one `berth async-worker` beside it, and the
`berth async-frontdoor`, with file:// output in a scratch directory.

- Throughput: REQUESTS one-row requests are queued at once while no worker runs; then the
  worker starts and drains them. Answered per second from the first answer to the last,
  against wrk (or an asyncio client) on the replica's /invocations at the same concurrency as
  the worker's --max-concurrency. Target: at least 0.8.
- Added latency when idle: one request at a time, POST to the front door then GET its state
  every millisecond until Succeeded, p50 against the p50 of one synchronous call at a time.
  Target: under 20 ms.
- Cold start: `berth up` on an async Endpoint of the same model with minReplicas 0; once its
  fleet is at zero, one message is queued; the time until it is answered, and the time local
  mode's KEDA reports from that message to a ready replica.

Rounds interleave the baseline and the queue, so drift from the machine's other tenants falls
on both; the ratio is the median of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from berth_serving.asyncinf import keys

from serving import (
    MLP_SIZES,
    REPO,
    LoadGenerator,
    berth_server,
    build_mlp,
    free_port,
    json_rows,
    wait_http,
)
from tests.support.redisserver import redis_binary, start_redis

NAMESPACE, ENDPOINT, CONFIG, VARIANT = "bench", "mlp", "mlp-config", "main"


def berth(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("berth")), *args]


@contextmanager
def process(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
        yield child
    finally:
        child.terminate()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def write_routes(path: Path, out: Path, stream: str) -> None:
    routes = keys.Routes(
        namespace=NAMESPACE,
        endpoint=ENDPOINT,
        variants=[
            keys.RouteVariant(
                variant_name=VARIANT,
                endpoint_config_name=CONFIG,
                weight=1,
                stream=stream,
                output_uri=f"file://{out}/out/",
                failure_uri=f"file://{out}/failed/",
            )
        ],
    )
    path.write_text(routes.model_dump_json(by_alias=True))


async def enqueue_all(port: int, body: bytes, count: int, concurrency: int) -> float:
    """POST `count` inline requests to the front door; answers per second of the enqueueing."""
    head = (
        f"POST /async-invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    remaining = iter(range(count))

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in remaining:
            writer.write(head + body)
            answer = await reader.readuntil(b"\r\n\r\n")
            if not answer.startswith(b"HTTP/1.1 202"):
                raise RuntimeError(f"front door answered {answer[:60]!r}")
            length = int(answer.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


def succeeded(client: redis.Redis, stream: str) -> int:
    return int(client.hget(keys.counts_key(stream), "succeeded") or 0)


def drain_rate(client: redis.Redis, stream: str, expected: int, timeout: float = 600.0) -> float:
    """Answers per second, from the first answer to the last, polled every 5 ms."""
    deadline = time.monotonic() + timeout
    while succeeded(client, stream) == 0:
        if time.monotonic() > deadline:
            raise TimeoutError("the worker answered nothing")
        time.sleep(0.005)
    first_at, first_count = time.perf_counter(), succeeded(client, stream)
    while (done := succeeded(client, stream)) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker answered {done} of {expected}")
        time.sleep(0.005)
    return (expected - first_count) / (time.perf_counter() - first_at)


def sync_p50_ms(port: int, body: bytes, count: int) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 200, answer.status
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def async_p50_ms(port: int, body: bytes, count: int) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        connection.request("POST", "/async-invocations", body, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        inference = json.loads(answer.read())["inferenceId"]
        assert answer.status == 202, answer.status
        while True:
            connection.request("GET", f"/async-invocations/{inference}")
            state = json.loads(connection.getresponse().read())["state"]
            if state == "Succeeded":
                break
            if state == "Failed":
                raise RuntimeError(f"inference {inference} failed")
            time.sleep(0.001)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def cold_start(model: Path, work: Path, body: bytes) -> tuple[float, float]:
    """(seconds from the POST to Succeeded, seconds from the message to a ready replica)."""
    manifests = work / "cold"
    manifests.mkdir()
    documents = [
        {"apiVersion": "berth.dev/v1alpha1", "kind": "Model", "metadata": {"name": "mlp"},
         "spec": {"modelUri": f"file://{model}"}},
        {"apiVersion": "berth.dev/v1alpha1", "kind": "EndpointConfig", "metadata": {"name": "mlp-async"},
         "spec": {"productionVariants": [{
             "variantName": "main", "modelName": "mlp", "instanceType": "cpu-small",
             "autoscaling": {"minReplicas": 0, "maxReplicas": 1, "targetBacklogPerInstance": 10,
                             "scaleInCooldownSeconds": 2}}],
             "asyncInferenceConfig": {"outputConfig": {"outputUri": f"file://{work}/cold-out/"}}}},
        {"apiVersion": "berth.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": "mlp"},
         "spec": {"endpointConfigName": "mlp-async", "auth": {"mode": "None"}}},
    ]  # fmt: skip
    (manifests / "endpoint.yaml").write_text("---\n".join(json.dumps(d) + "\n" for d in documents))
    port = free_port()
    argv = berth(
        "up", "-f", str(manifests), "--port", str(port), "--run-dir", str(work / "cold-run"), "--no-watch"
    )
    base = f"http://127.0.0.1:{port}"

    def status() -> dict[str, Any]:
        with urllib.request.urlopen(f"{base}/_berth/status", timeout=5) as answer:
            found: dict[str, Any] = json.loads(answer.read())
            return found

    def at_zero() -> bool:
        try:
            scaled = status()["async"]["scaledObjects"]
        except OSError:
            return False
        return bool(scaled) and all(item["replicas"] == 0 for item in scaled)

    with process(argv, work / "cold-up.log"):
        deadline = time.monotonic() + 120
        while not at_zero():
            if time.monotonic() > deadline:
                raise TimeoutError("the async fleet did not reach zero replicas")
            time.sleep(0.2)
        time.sleep(3)  # past the cooldown: nothing is left starting or stopping
        connection = http.client.HTTPConnection("127.0.0.1", port)
        started = time.perf_counter()
        connection.request(
            "POST", "/endpoints/default/mlp/async-invocations", body, {"Content-Type": "application/json"}
        )
        answer = connection.getresponse()
        inference = json.loads(answer.read())["inferenceId"]
        while True:
            connection.request("GET", f"/endpoints/default/mlp/async-invocations/{inference}")
            state = json.loads(connection.getresponse().read())["state"]
            if state in ("Succeeded", "Failed"):
                break
            if time.perf_counter() - started > 120:
                raise TimeoutError("the message at zero replicas was not answered")
            time.sleep(0.01)
        answered = time.perf_counter() - started
        assert state == "Succeeded", state
        ready = status()["async"]["scaledObjects"][0]["lastColdStartSeconds"]
    return answered, float(ready)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each baseline load")
    parser.add_argument("--latency-samples", type=int, default=200)
    options = parser.parse_args()
    binary = redis_binary()
    if binary is None:
        sys.exit("bench/async.py needs redis-server on PATH (apt-get install redis-server)")

    work = Path(tempfile.mkdtemp(prefix="berth-bench-async-"))
    try:
        model = build_mlp(work / "mlp.onnx", sizes=MLP_SIZES)
        body = json_rows(np.random.default_rng(0).random((1, MLP_SIZES[0]), dtype=np.float32))
        load = LoadGenerator(options.seconds, work)
        server = start_redis(binary)
        store = redis.Redis.from_url(server.url)
        routes = work / "routes.json"
        frontdoor_port = free_port()
        try:
            with berth_server(model) as (replica_url, _):
                replica_port = int(replica_url.rsplit(":", 1)[1])
                print(f"MLP {MLP_SIZES}, one row per request; load generator: {load.name}")
                rows = []
                for round_number in range(1, options.rounds + 1):
                    sync = load(replica_url, "/invocations", body, "application/json", options.concurrency)
                    stream = keys.stream_key(NAMESPACE, ENDPOINT, CONFIG, f"{VARIANT}{round_number}")
                    write_routes(routes, work, stream)
                    frontdoor = berth(
                        "async-frontdoor", "--routes", str(routes), "--redis-url", server.url,
                        "--host", "127.0.0.1", "--port", str(frontdoor_port),
                    )  # fmt: skip
                    worker = berth(
                        "async-worker", "--redis-url", server.url, "--stream", stream,
                        "--consumer", f"bench-{round_number}", "--invoke-url", f"{replica_url}/invocations",
                        "--max-concurrency", str(options.concurrency), "--variant", VARIANT,
                        "--endpoint-config", CONFIG, "--metrics-port", str(free_port()),
                        "--metrics-host", "127.0.0.1",
                    )  # fmt: skip
                    with process(frontdoor, work / "frontdoor.log"):
                        wait_http(f"http://127.0.0.1:{frontdoor_port}/ping")
                        enqueued = asyncio.run(
                            enqueue_all(frontdoor_port, body, options.requests, options.concurrency)
                        )
                        with process(worker, work / "worker.log"):
                            drained = drain_rate(store, stream, options.requests)
                            if round_number == 1:
                                sync_ms = sync_p50_ms(replica_port, body, options.latency_samples)
                                async_ms = async_p50_ms(frontdoor_port, body, options.latency_samples)
                    rows.append((sync.requests_per_second, drained, enqueued))
                    print(
                        f"  round {round_number}: sync /invocations c{options.concurrency} "
                        f"{sync.requests_per_second:,.0f} req/s; queue drained {drained:,.0f} req/s "
                        f"= {drained / sync.requests_per_second:.3f}; enqueued {enqueued:,.0f} req/s",
                        flush=True,
                    )
                ratio = statistics.median(drained / sync_rps for sync_rps, drained, _ in rows)
                print(
                    f"throughput, queue / synchronous (median of {options.rounds}): {ratio:.3f} (target >= 0.8)"
                )
                answered, ready = cold_start(model, work, body)
                print(
                    f"from zero replicas: answered {answered:.2f} s after the POST; "
                    f"first message to a ready replica {ready:.2f} s (local mode's KEDA)"
                )
                print(
                    f"idle latency p50: async {async_ms:.2f} ms (POST, then GET every 1 ms until Succeeded), "
                    f"sync {sync_ms:.2f} ms, added {async_ms - sync_ms:.2f} ms (target < 20 ms)"
                )
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Async Endpoints with the real operator (kopf, KMock) and a real redis-server: objects, backlog
in status, and an unreachable Redis as a condition."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
from berth_operator.queues import NO_URL, QueueReader
from berth_operator.settings import Settings
from berth_serving.asyncinf.keys import CONSUMER_GROUP, counts_key, stream_key

from tests.operator.builders import NS, children, config, endpoint, model, set_deployments_ready, variant
from tests.support.kmockk8s import KMockCluster, wait_for
from tests.support.redisserver import running_redis

pytestmark = pytest.mark.timeout(90)


def async_config(name: str, *variants: dict[str, Any]) -> dict[str, Any]:
    body = config(name, *variants)
    body["spec"]["asyncInferenceConfig"] = {"outputConfig": {"outputUri": "s3://bucket/out/"}}
    return body


def status(cluster: KMockCluster) -> dict[str, Any]:
    return (cluster.get("Endpoint", NS, "ep") or {}).get("status") or {}


def condition(cluster: KMockCluster, type_: str) -> dict[str, Any]:
    return next((c for c in status(cluster).get("conditions", []) if c["type"] == type_), {})


def queue_messages(url: str, stream: str, count: int) -> None:
    client = redis.Redis.from_url(url)
    try:
        for i in range(count):
            client.xadd(stream, {"id": f"m{i}"})
        client.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
        client.hset(counts_key(stream), mapping={"succeeded": 7, "failed": 1})
    finally:
        client.close()


def test_reader_reads_backlog_and_counts_from_a_real_redis() -> None:
    with running_redis() as server:
        stream = stream_key(NS, "ep", "cfg1", "blue")
        queue_messages(server.url, stream, 3)
        reader = QueueReader(server.url)

        async def read() -> Any:
            try:
                return await reader.read([stream, stream_key(NS, "ep", "cfg1", "none")], time.time() + 5)
            finally:
                await reader.close()

        reading = asyncio.run(read())
    assert reading.error is None
    state = reading.queues[stream]
    assert (state.size, state.pending) == (3, 0)
    assert 4.0 <= state.oldest_age_seconds < 60
    assert dict(state.counts) == {"succeeded": 7, "failed": 1}
    missing = reading.queues[stream_key(NS, "ep", "cfg1", "none")]
    assert (missing.size, dict(missing.counts)) == (0, {})


def test_reader_answers_an_unreachable_redis_with_an_error() -> None:
    async def read(url: str | None) -> Any:
        reader = QueueReader(url)
        try:
            started = time.monotonic()
            reading = await reader.read(["s"], time.time())
            return reading, time.monotonic() - started
        finally:
            await reader.close()

    with running_redis() as server:
        url = server.url
    reading, took = asyncio.run(read(url))  # the server is gone: nothing listens there
    assert reading.queues == {} and reading.error and reading.error.startswith("Redis: ")
    assert took < 10
    assert asyncio.run(read(None))[0].error == NO_URL
    assert asyncio.run(read(url))[0].error  # still an answer, not an exception


def test_operator_plans_the_front_door_and_shows_the_backlog(
    cluster: KMockCluster, start_operator: Any
) -> None:
    with running_redis() as server:
        start_operator(Settings.model_validate({"async": {"redis": {"url": server.url}}}))
        cluster.create(model("m1"))
        cluster.create(async_config("cfg1", variant("blue", "m1")))
        stream = stream_key(NS, "ep", "cfg1", "blue")
        queue_messages(server.url, stream, 4)
        cluster.create(endpoint("ep", "cfg1"))

        door = wait_for(lambda: cluster.get("Deployment", NS, "ep-async"), message="the front door")
        assert door["spec"]["template"]["spec"]["containers"][0]["args"][0] == "async-frontdoor"
        routes = cluster.http.get(f"/api/v1/namespaces/{NS}/configmaps/ep-async-routes")
        assert routes.status_code == 200 and stream in routes.json()["data"]["routes.json"]
        fleet = wait_for(lambda: cluster.get("Deployment", NS, "ep-cfg1-blue"), message="the fleet")
        names = [c["name"] for c in fleet["spec"]["template"]["spec"]["containers"]]
        assert names == ["server", "async-worker"]

        def backlog() -> Any:
            set_deployments_ready(cluster, "ep")
            variants = status(cluster).get("productionVariants") or [{}]
            return variants[0].get("backlogSize") == 4 and status(cluster).get("phase") == "InService"

        wait_for(backlog, timeout=30, message="backlogSize 4 in status")
        assert condition(cluster, "HasBacklogWithoutCapacity")["status"] == "False"
        assert len(children(cluster, "Deployment", "ep")) == 2
        url = server.url
    # Redis gone: the next reconcile (woken by a label edit) says so and the operator keeps going.
    cluster.patch("Endpoint", NS, "ep", {"metadata": {"labels": {"poke": "1"}}})
    wait_for(
        lambda: condition(cluster, "Degraded").get("reason") == "AsyncQueueUnreachable",
        timeout=30,
        message=f"Degraded AsyncQueueUnreachable once {url} is gone",
    )
    assert condition(cluster, "HasBacklogWithoutCapacity")["status"] == "Unknown"
    assert status(cluster)["phase"] == "InService"

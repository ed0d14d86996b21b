"""The local KEDA: its reading of ScaledObjects, its decisions, and its polls of a real Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from berth_operator.local.keda import LocalKeda, ScaledStreams, Scaling
from berth_serving.asyncinf.keys import CONSUMER_GROUP, stream_key
from berth_serving.asyncinf.queue import Backlog, read_backlog

from tests.support.redisserver import running_redis

STREAM = stream_key("default", "ep", "ep-v1", "only")


def scaled_object(
    minimum: int = 0,
    maximum: int = 4,
    cooldown: int | None = 5,
    down_window: int | None = 0,
    triggers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ep-ep-v1-only"},
        "minReplicaCount": minimum,
        "maxReplicaCount": maximum,
        "triggers": triggers
        if triggers is not None
        else [
            {
                "type": "redis-streams",
                "metadata": {
                    "address": "127.0.0.1:6379",
                    "stream": STREAM,
                    "consumerGroup": CONSUMER_GROUP,
                    "lagCount": "2",
                    "activationLagCount": "0",
                },
            },
            {
                "type": "redis-streams",
                "metadata": {"stream": STREAM, "consumerGroup": CONSUMER_GROUP, "pendingEntriesCount": "2"},
            },
        ],
    }
    if cooldown is not None:
        spec["cooldownPeriod"] = cooldown
    if down_window is not None:
        spec["advanced"] = {
            "horizontalPodAutoscalerConfig": {
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": down_window}}
            }
        }
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "ep-ep-v1-only", "namespace": "default"},
        "spec": spec,
    }


def parsed(**kwargs: Any) -> ScaledStreams:
    found = ScaledStreams.from_manifest(scaled_object(**kwargs))
    assert found is not None
    return found


def test_reads_stream_triggers_bounds_and_windows() -> None:
    item = parsed()
    assert item.key == ("default", "ep-ep-v1-only")
    assert (item.min_replicas, item.max_replicas, item.cooldown_seconds) == (0, 4, 5.0)
    assert item.scale_down_window == 0.0 and item.scale_up_window == 0.0
    assert [(t.metric, t.target, t.activation) for t in item.triggers] == [
        ("lag", 2.0, 0.0),
        ("pending", 2.0, 0.0),
    ]
    defaults = parsed(cooldown=None, down_window=None)
    assert defaults.cooldown_seconds == 300.0 and defaults.scale_down_window == 300.0


def test_a_prometheus_scaled_object_is_not_ours() -> None:
    prometheus = [{"type": "prometheus", "metadata": {"query": "x", "threshold": "5"}}]
    assert ScaledStreams.from_manifest(scaled_object(triggers=prometheus)) is None
    assert (
        ScaledStreams.from_manifest(scaled_object(triggers=[{"type": "redis-streams", "metadata": {}}]))
        is None
    )


def test_one_waiting_message_at_zero_starts_one_replica() -> None:
    item = parsed()
    scaling = Scaling(replicas=0)
    assert scaling.next_replicas(item, {STREAM: Backlog(0, 0, 0.0)}, now=100.0) == 0
    assert scaling.next_replicas(item, {STREAM: Backlog(1, 0, 0.5)}, now=101.0) == 1


def test_backlog_over_target_scales_out_to_the_maximum_only() -> None:
    item = parsed()
    scaling = Scaling(replicas=1)
    assert scaling.next_replicas(item, {STREAM: Backlog(7, 2, 1.0)}, now=10.0) == 3  # lag 5 / 2
    assert scaling.next_replicas(item, {STREAM: Backlog(100, 4, 1.0)}, now=11.0) == 4
    # Running work alone keeps its replicas: 4 in flight, nothing waiting, target 2 each.
    assert scaling.next_replicas(item, {STREAM: Backlog(4, 4, 1.0)}, now=12.0) == 2


def test_idle_goes_to_zero_only_after_the_cooldown() -> None:
    item = parsed(cooldown=5)
    scaling = Scaling(replicas=2)
    assert scaling.next_replicas(item, {STREAM: Backlog(1, 1, 0.1)}, now=0.0) == 1
    assert scaling.next_replicas(item, {STREAM: Backlog(0, 0, 0.0)}, now=1.0) == 1  # cooling down
    assert scaling.next_replicas(item, {STREAM: Backlog(0, 0, 0.0)}, now=4.9) == 1
    assert scaling.next_replicas(item, {STREAM: Backlog(0, 0, 0.0)}, now=5.0) == 0


def test_min_replicas_above_zero_is_kept_when_idle() -> None:
    item = parsed(minimum=2, cooldown=0)
    scaling = Scaling(replicas=2)
    assert scaling.next_replicas(item, {STREAM: Backlog(0, 0, 0.0)}, now=100.0) == 2


def test_scale_down_waits_for_the_stabilization_window() -> None:
    item = parsed(down_window=10, cooldown=1000)
    scaling = Scaling(replicas=1)
    assert scaling.next_replicas(item, {STREAM: Backlog(8, 0, 1.0)}, now=0.0) == 4
    assert scaling.next_replicas(item, {STREAM: Backlog(0, 0, 0.0)}, now=5.0) == 4  # within 10 s
    assert scaling.next_replicas(item, {STREAM: Backlog(0, 0, 0.0)}, now=10.5) == 1


def test_polls_a_real_redis_and_times_the_scale_from_zero() -> None:
    import redis.asyncio as aioredis

    async def scenario(url: str) -> None:
        client = aioredis.Redis.from_url(url)
        changes: list[int] = []
        keda = LocalKeda(lambda stream, now: read_backlog(client, stream, now), lambda: changes.append(1))
        keda.set_objects([scaled_object(cooldown=0, down_window=0)])
        key = ("default", "ep-ep-v1-only")
        try:
            assert keda.replicas(key) == 0
            assert not await keda.poll_once()  # no stream yet: nothing made, nothing started
            assert await client.exists(STREAM) == 0
            await client.xadd(STREAM, {"id": "a"})
            assert await keda.poll_once()
            assert keda.replicas(key) == 1
            assert keda.ready(key, 0) is None
            seconds = keda.ready(key, 1)
            assert seconds is not None and 0 <= seconds < 5
            assert keda.ready(key, 1) is None  # told once
            await client.delete(STREAM)
            assert await keda.poll_once()
            assert keda.replicas(key) == 0
            keda.set_objects([])  # the planner dropped it: the count is no longer ours
            assert keda.replicas(key) is None
        finally:
            await client.aclose()

    with running_redis() as server:
        asyncio.run(scenario(server.url))


def test_redis_away_keeps_the_counts_and_says_why() -> None:
    async def failing(stream: str, now: float) -> Backlog:
        raise ConnectionError("connection refused")

    async def scenario() -> None:
        keda = LocalKeda(failing, lambda: None)
        keda.set_objects([scaled_object(minimum=1)])
        assert not await keda.poll_once()
        assert keda.replicas(("default", "ep-ep-v1-only")) == 1
        assert "connection refused" in keda.error

    asyncio.run(scenario())


@pytest.mark.parametrize("minimum", [0, 3])
def test_a_new_object_starts_at_its_minimum(minimum: int) -> None:
    keda = LocalKeda(lambda s, n: None, lambda: None)
    keda.set_objects([scaled_object(minimum=minimum, maximum=5)])
    assert keda.replicas(("default", "ep-ep-v1-only")) == minimum

"""The queue's calls on a real redis-server: what the contract's readers see at each step of
a message's life, idempotent enqueue, heartbeat against reclaim, and a finish counted once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from berth_serving.asyncinf import queue
from berth_serving.asyncinf.keys import counts_key, inference_key, stream_key

pytestmark = pytest.mark.timeout(60)
STREAM = stream_key("ns", "ep", "cfg", "blue")
RECORD = inference_key("ns", "ep", "id-1")


def run(redis_url: str, body: Callable[[aioredis.Redis], Awaitable[Any]], decode: bool = True) -> Any:
    async def main() -> Any:
        client = aioredis.Redis.from_url(redis_url, decode_responses=decode)
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def message(inference_id: str = "id-1") -> dict[str, str]:
    return {
        queue.F_ID: inference_id,
        queue.F_RECORD: inference_key("ns", "ep", inference_id),
        queue.F_INPUT: "s3://b/k",
    }


def test_a_missing_stream_reads_empty_and_stays_missing(redis_url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        assert await queue.read_backlog(client, STREAM, time.time()) == queue.Backlog(0, 0, 0.0)
        assert await queue.read_counts(client, STREAM) == {}
        assert await client.dbsize() == 0

    run(redis_url, body)


@pytest.mark.parametrize("decode", [True, False])
def test_backlog_through_a_message_life(redis_url: str, decode: bool) -> None:
    """The operator's client may or may not decode answers: both read the same."""

    async def body(client: aioredis.Redis) -> None:
        record = {queue.R_STATE: queue.QUEUED}
        for n in range(3):
            key = inference_key("ns", "ep", f"id-{n}")
            assert await queue.enqueue(client, STREAM, key, record, message(f"id-{n}"), 60) is None
        await asyncio.sleep(0.05)
        now = time.time()
        before_group = await queue.read_backlog(client, STREAM, now)
        assert (before_group.size, before_group.pending, before_group.lag) == (3, 0, 3)
        assert 0.04 < before_group.oldest_age_seconds < 5
        await queue.ensure_group(client, STREAM)
        [taken] = await queue.read_new(client, STREAM, "w1", 1, 10)
        taken_backlog = await queue.read_backlog(client, STREAM, time.time())
        assert (taken_backlog.size, taken_backlog.pending, taken_backlog.lag) == (3, 1, 2)
        assert await queue.finish(client, STREAM, taken, "succeeded", {queue.R_STATE: queue.SUCCEEDED})
        after = await queue.read_backlog(client, STREAM, time.time())
        assert (after.size, after.pending) == (2, 0)
        # The group's own lag (what KEDA's lagCount trigger reads) stays defined after XDEL.
        [group] = await client.xinfo_groups(STREAM)
        assert group["lag"] == 2
        assert await queue.read_counts(client, STREAM) == {"succeeded": 1}

    run(redis_url, body, decode)


def test_enqueue_is_idempotent_per_id(redis_url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        first = {queue.R_STATE: queue.QUEUED, queue.R_OUTPUT: "s3://b/o/id-1.out"}
        assert await queue.enqueue(client, STREAM, RECORD, first, message(), 100) is None
        other = {queue.R_STATE: queue.QUEUED, queue.R_OUTPUT: "s3://b/elsewhere"}
        existing = await queue.enqueue(client, STREAM, RECORD, other, message(), 100)
        assert existing == first
        assert await client.xlen(STREAM) == 1
        assert 90 < await client.ttl(RECORD) <= 100

    run(redis_url, body)


def test_many_concurrent_enqueues_of_one_id_queue_it_once(redis_url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        record = {queue.R_STATE: queue.QUEUED}
        answers = await asyncio.gather(
            *(queue.enqueue(client, STREAM, RECORD, record, message(), 100) for _ in range(50))
        )
        assert sum(answer is None for answer in answers) == 1
        assert await client.xlen(STREAM) == 1

    run(redis_url, body)


def test_a_heartbeat_keeps_a_message_from_being_reclaimed(redis_url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        await queue.ensure_group(client, STREAM)
        await queue.enqueue(client, STREAM, RECORD, {queue.R_STATE: queue.QUEUED}, message(), 100)
        [held] = await queue.read_new(client, STREAM, "alive", 5, 10)
        for _ in range(4):
            await asyncio.sleep(0.15)
            await queue.heartbeat(client, STREAM, "alive", [held.message_id])
        assert await queue.reclaim(client, STREAM, "other", 0.3, 5) == []
        await asyncio.sleep(0.35)  # no heartbeat: its worker is gone
        [taken] = await queue.reclaim(client, STREAM, "other", 0.3, 5)
        assert taken.message_id == held.message_id and taken.deliveries == 2
        assert taken.fields == held.fields
        await asyncio.sleep(0.35)
        [again] = await queue.reclaim(client, STREAM, "third", 0.3, 5)
        assert again.deliveries == 3

    run(redis_url, body)


def test_a_message_answered_twice_is_finished_and_counted_once(redis_url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        await queue.ensure_group(client, STREAM)
        await queue.enqueue(client, STREAM, RECORD, {queue.R_STATE: queue.QUEUED}, message(), 100)
        [first] = await queue.read_new(client, STREAM, "w1", 1, 10)
        await asyncio.sleep(0.05)
        [second] = await queue.reclaim(client, STREAM, "w2", 0.01, 1)
        done = {queue.R_STATE: queue.SUCCEEDED}
        assert await queue.finish(client, STREAM, second, "succeeded", done) is True
        late = {queue.R_STATE: queue.FAILED, queue.R_REASON: "late"}
        assert await queue.finish(client, STREAM, first, "failed", late) is False
        assert await queue.read_counts(client, STREAM) == {"succeeded": 1}
        assert (await queue.read_record(client, RECORD))[queue.R_STATE] == queue.SUCCEEDED
        assert await client.ttl(RECORD) > 6 * 86400  # kept a week once answered
        assert await client.xlen(STREAM) == 0

    run(redis_url, body)


def test_running_is_not_written_to_an_expired_record(redis_url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        await queue.mark_running(client, RECORD, {queue.R_STATE: queue.RUNNING})
        assert not await client.exists(RECORD)

    run(redis_url, body)


def test_counts_key_is_per_stream(redis_url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        await queue.count(client, STREAM, "redelivered", 2)
        assert await queue.read_counts(client, STREAM) == {"redelivered": 2}
        assert await queue.read_counts(client, stream_key("ns", "ep", "cfg", "green")) == {}
        assert await client.exists(counts_key(STREAM))

    run(redis_url, body)


class CountedPipelines:
    """The real client, counting its pipelines: each is one round trip."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.pipelines = 0

    def pipeline(self, transaction: bool = True) -> Any:
        self.pipelines += 1
        return self.client.pipeline(transaction=transaction)


async def taken_messages(client: aioredis.Redis, count: int, first: int = 0) -> list[queue.Delivery]:
    await queue.ensure_group(client, STREAM)
    for n in range(first, first + count):
        key = inference_key("ns", "ep", f"id-{n}")
        await queue.enqueue(client, STREAM, key, {queue.R_STATE: queue.QUEUED}, message(f"id-{n}"), 100)
    return await queue.read_new(client, STREAM, "w1", count, 10)


def test_finishes_made_together_go_in_one_round_trip_each_answered_for_itself(redis_url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        taken = await taken_messages(client, 20)
        # One of them was answered by another worker meanwhile: its finish says so.
        await queue.finish(client, STREAM, taken[7], "succeeded", {queue.R_STATE: queue.SUCCEEDED})
        counted = CountedPipelines(client)
        acks = queue.Acknowledger(counted)  # type: ignore[arg-type]
        done = {queue.R_STATE: queue.SUCCEEDED}
        answers = await asyncio.gather(
            *(acks.finish(queue.Finish(STREAM, delivery, "succeeded", done)) for delivery in taken)
        )
        assert answers == [n != 7 for n in range(20)]
        assert counted.pipelines == 1
        assert await queue.read_counts(client, STREAM) == {"succeeded": 20}
        assert await client.xlen(STREAM) == 0
        states = [await queue.read_record(client, inference_key("ns", "ep", f"id-{n}")) for n in range(20)]
        assert {state[queue.R_STATE] for state in states if state} == {queue.SUCCEEDED}

        # Later finishes go in a round trip of their own: nothing waits for company.
        [late] = await taken_messages(client, 1, first=20)
        assert await acks.finish(queue.Finish(STREAM, late, "failed", {queue.R_STATE: queue.FAILED}))
        assert counted.pipelines == 2

    run(redis_url, body)


def test_finishes_made_while_a_round_trip_is_out_go_in_the_next(redis_url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        taken = await taken_messages(client, 6)
        counted = CountedPipelines(client)
        acks = queue.Acknowledger(counted)  # type: ignore[arg-type]
        done = {queue.R_STATE: queue.SUCCEEDED}
        first = asyncio.create_task(acks.finish(queue.Finish(STREAM, taken[0], "succeeded", done)))
        await asyncio.sleep(0)  # the first round trip is out, with the first finish alone
        rest = [acks.finish(queue.Finish(STREAM, delivery, "succeeded", done)) for delivery in taken[1:]]
        assert await asyncio.gather(first, *rest) == [True] * 6
        assert counted.pipelines == 2

    run(redis_url, body)


def test_redis_unreachable_reaches_every_caller_and_the_next_finish_tries_again() -> None:
    async def main() -> None:
        client = queue.connect("redis://127.0.0.1:1", timeout_seconds=1)
        acks = queue.Acknowledger(client)
        delivery = queue.Delivery("1-0", message())
        item = queue.Finish(STREAM, delivery, "succeeded", {queue.R_STATE: queue.SUCCEEDED})
        try:
            for _ in range(2):
                answers = await asyncio.gather(acks.finish(item), acks.finish(item), return_exceptions=True)
                assert [type(a).__name__ for a in answers] == ["ConnectionError"] * 2, answers
        finally:
            await client.aclose()

    asyncio.run(main())


def test_a_cancelled_caller_leaves_the_others_answered(redis_url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        taken = await taken_messages(client, 3)
        acks = queue.Acknowledger(client)
        done = {queue.R_STATE: queue.SUCCEEDED}
        calls = [asyncio.create_task(acks.finish(queue.Finish(STREAM, d, "succeeded", done))) for d in taken]
        await asyncio.sleep(0)
        calls[1].cancel()
        answers = await asyncio.gather(*calls, return_exceptions=True)
        assert answers[0] is True and answers[2] is True
        assert isinstance(answers[1], asyncio.CancelledError)
        # Cancelling the wait does not take the message back: it was sent with the others.
        assert await queue.read_counts(client, STREAM) == {"succeeded": 3}

    run(redis_url, body)


def test_enqueues_made_together_go_in_one_round_trip_and_a_repeated_id_queues_once(redis_url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        counted = CountedPipelines(client)
        enqueuer = queue.Enqueuer(counted)  # type: ignore[arg-type]
        ids = [f"id-{n}" for n in range(10)] + ["id-3"]  # the last repeats one in the same batch

        def enqueue(inference_id: str) -> Awaitable[dict[str, str] | None]:
            record = {queue.R_STATE: queue.QUEUED, queue.R_REASON: f"written for {inference_id}"}
            return enqueuer.enqueue(
                STREAM, inference_key("ns", "ep", inference_id), record, message(inference_id), 60
            )

        answers = await asyncio.gather(*(enqueue(i) for i in ids))
        assert answers[:10] == [None] * 10
        assert answers[10] is not None and answers[10][queue.R_STATE] == queue.QUEUED
        assert counted.pipelines == 1
        assert await client.xlen(STREAM) == 10

    run(redis_url, body)

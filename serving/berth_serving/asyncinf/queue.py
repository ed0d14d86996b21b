"""The queue of async inference on Redis Streams: what the front door, the workers and the
operator do to it, each step one round trip (a Lua script where several must be atomic).

A message is XADDed to its variant's stream, read by one worker of the group with XREADGROUP,
kept fresh by that worker's heartbeat (XCLAIM of its own ids, JUSTID), taken over by another
worker with XAUTOCLAIM once idle for `claim-idle-seconds` (its worker died), and XACKed and
XDELed once answered. So XLEN is waiting + in flight, the group's pending count is in flight,
and the first entry's id dates the oldest message. The inference record (a hash per id) is
what `GET /async-invocations/ID` reads; only the worker whose XACK removed the message from
the group updates it and the counters, so a message answered twice is counted once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from berth_serving.asyncinf.keys import CONSUMER_GROUP, counts_key

# Record states, as GET /async-invocations/ID shows them.
QUEUED, RUNNING, SUCCEEDED, FAILED = "Queued", "Running", "Succeeded", "Failed"
# Outcome counters (fields of counts_key) and the outcome label of the worker's metric.
OUTCOMES = ("succeeded", "failed", "expired", "redelivered")
# How long a record is kept once answered (and past its TTL while queued): a client polling
# a day late still learns where its answer is.
RECORD_RETENTION_SECONDS = 7 * 24 * 3600

# Fields of a message.
F_ID, F_RECORD, F_INPUT = "id", "record", "input"
F_CONTENT_TYPE, F_ACCEPT = "contentType", "accept"
F_ENQUEUED_AT, F_EXPIRES_AT, F_TIMEOUT = "enqueuedAt", "expiresAt", "timeoutSeconds"
F_OUTPUT_URI, F_FAILURE_URI, F_STAGED = "outputUri", "failureUri", "staged"
# Fields of a record.
R_STATE, R_REASON, R_OUTPUT, R_FAILURE = "state", "reason", "outputLocation", "failureLocation"
R_VARIANT, R_CONFIG, R_UPDATED_AT, R_ATTEMPTS = "variant", "config", "updatedAt", "attempts"

# KEYS: record, stream. ARGV: record expiry, number of record fields, the record's field/value
# pairs, then the message's. An existing record is returned unchanged and nothing is queued.
# A new stream gets its consumer group at once, from its (empty) end: the group's lag, which
# KEDA's trigger reads before any worker has started, is then defined from the first message.
_ENQUEUE = (
    """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HGETALL', KEYS[1])
end
local pairs_in_record = tonumber(ARGV[2])
local record = {}
for i = 3, 2 + 2 * pairs_in_record do record[#record + 1] = ARGV[i] end
local message = {}
for i = 3 + 2 * pairs_in_record, #ARGV do message[#message + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(record))
redis.call('EXPIRE', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[2], '"""
    + CONSUMER_GROUP
    + """', '$', 'MKSTREAM')
end
redis.call('XADD', KEYS[2], '*', unpack(message))
return {}
"""
)

# KEYS: stream, counts, record. ARGV: group, message id, outcome, record expiry, then the
# record's new field/value pairs. Returns 1 when this call acknowledged the message.
_FINISH = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
if #ARGV > 4 then
  local fields = {}
  for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', KEYS[3], unpack(fields))
  redis.call('EXPIRE', KEYS[3], ARGV[4])
end
return 1
"""

# KEYS: record. ARGV: field/value pairs. A record that expired is not brought back half-filled.
_UPDATE_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


@dataclass(frozen=True)
class Backlog:
    size: int  # XLEN: waiting + in flight
    pending: int  # delivered to a worker, not yet acknowledged
    oldest_age_seconds: float

    @property
    def lag(self) -> int:
        """Messages no worker has taken yet."""
        return max(0, self.size - self.pending)


@dataclass(frozen=True)
class Delivery:
    """One message as a worker holds it."""

    message_id: str
    fields: dict[str, str]
    deliveries: int = 1  # how many times it was handed to a worker, this one included


def flat(pairs: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in pairs.items():
        out += [key, str(value)]
    return out


def as_dict(items: Any) -> dict[str, str]:
    """A hash or stream entry as redis-py gives it (a flat list, or a dict), as str -> str."""
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        pairs = list(zip(items[::2], items[1::2], strict=True))
    return {_text(key): _text(value) for key, value in pairs}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def connect(url: str, *, timeout_seconds: float = 5.0, max_connections: int = 64) -> aioredis.Redis:
    """A client whose calls fail within `timeout_seconds` when Redis is away (a blocking read
    adds its own BLOCK time: redis-py waits that long on top). At most `max_connections` at
    once; a call beyond them waits for one to free (redis-py's default pool refuses it with
    "Too many connections", which left a worker's answered messages unacknowledged)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_seconds,
        decode_responses=True,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=30,
    )
    return aioredis.Redis.from_pool(pool)


# --------------------------------------------------------------------------- front door


async def enqueue(
    client: aioredis.Redis,
    stream: str,
    record_key: str,
    record: Mapping[str, Any],
    message: Mapping[str, Any],
    expire_seconds: int,
) -> dict[str, str] | None:
    """Queue `message` and write `record`, unless a record for the id exists: then that
    record, and nothing queued (a repeated X-Berth-Inference-Id)."""
    existing = await client.eval(
        _ENQUEUE, *_enqueue_arguments(stream, record_key, record, message, expire_seconds)
    )
    return as_dict(existing) if existing else None


def _enqueue_arguments(
    stream: str, record_key: str, record: Mapping[str, Any], message: Mapping[str, Any], expire_seconds: int
) -> list[Any]:
    fields = flat(record)
    return [2, record_key, stream, expire_seconds, len(fields) // 2, *fields, *flat(message)]


async def read_record(client: aioredis.Redis, record_key: str) -> dict[str, str] | None:
    found = await client.hgetall(record_key)
    return as_dict(found) if found else None


# --------------------------------------------------------------------------- workers


async def ensure_group(client: aioredis.Redis, stream: str) -> None:
    """The stream's consumer group, from its first entry: messages queued before any worker
    started are read too."""
    try:
        await client.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
    except redis.exceptions.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


async def read_new(
    client: aioredis.Redis, stream: str, consumer: str, count: int, block_ms: int
) -> list[Delivery]:
    """Up to `count` messages no worker has had, waiting up to `block_ms` for the first."""
    try:
        answer: Any = await client.xreadgroup(
            CONSUMER_GROUP, consumer, {stream: ">"}, count=count, block=block_ms
        )
    except redis.exceptions.ResponseError as error:
        if "NOGROUP" not in str(error):
            raise
        await ensure_group(client, stream)  # someone deleted the stream: start it again
        return []
    deliveries = []
    for _name, entries in answer or []:
        for message_id, fields in entries:
            if fields:  # None for an entry deleted while it was pending
                deliveries.append(Delivery(message_id, as_dict(fields)))
    return deliveries


async def heartbeat(client: aioredis.Redis, stream: str, consumer: str, message_ids: list[str]) -> None:
    """Reset the idle time of this worker's in-flight messages, so no other worker takes them
    over while they run (JUSTID: the delivery count stays)."""
    if message_ids:
        ids: list[Any] = list(message_ids)
        await client.xclaim(stream, CONSUMER_GROUP, consumer, 0, ids, justid=True)


async def reclaim(
    client: aioredis.Redis, stream: str, consumer: str, min_idle_seconds: float, count: int
) -> list[Delivery]:
    """Take over up to `count` messages whose worker has not touched them for
    `min_idle_seconds` (it died), with how often each was delivered."""
    answer = await client.xautoclaim(
        stream, CONSUMER_GROUP, consumer, int(min_idle_seconds * 1000), start_id="0-0", count=count
    )
    claimed = [(message_id, fields) for message_id, fields in answer[1] if fields]
    if len(answer) > 2 and answer[2]:  # entries deleted while pending: nothing left to answer
        await client.xack(stream, CONSUMER_GROUP, *answer[2])
    if not claimed:
        return []
    ids = [message_id for message_id, _ in claimed]
    pending = await client.xpending_range(
        stream, CONSUMER_GROUP, min=min(ids, key=_id_order), max=max(ids, key=_id_order),
        count=len(ids) + 16, consumername=consumer,
    )  # fmt: skip
    times = {_text(entry["message_id"]): int(entry["times_delivered"]) for entry in pending}
    return [Delivery(message_id, as_dict(fields), times.get(message_id, 2)) for message_id, fields in claimed]


def _id_order(message_id: str) -> tuple[int, int]:
    millis, _, sequence = message_id.partition("-")
    return int(millis), int(sequence or 0)


async def mark_running(client: aioredis.Redis, record_key: str, fields: Mapping[str, Any]) -> None:
    await client.eval(_UPDATE_IF_EXISTS, 1, record_key, *flat(fields))


async def mark_running_many(client: aioredis.Redis, marks: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """mark_running for several records in one round trip (a pipeline, not a transaction)."""
    async with client.pipeline(transaction=False) as pipe:
        for record_key, fields in marks:
            pipe.eval(_UPDATE_IF_EXISTS, 1, record_key, *flat(fields))
        await pipe.execute()


@dataclass(frozen=True)
class Finish:
    """One answered message: acknowledge and delete it, count `outcome`, update its record."""

    stream: str
    delivery: Delivery
    outcome: str
    record: Mapping[str, Any]

    def script_arguments(self) -> list[Any]:
        record_key = self.delivery.fields.get(F_RECORD, "")
        fields = flat(self.record) if record_key else []
        return [
            3,
            self.stream,
            counts_key(self.stream),
            record_key or self.stream,
            CONSUMER_GROUP,
            self.delivery.message_id,
            self.outcome,
            RECORD_RETENTION_SECONDS,
            *fields,
        ]


async def finish(
    client: aioredis.Redis,
    stream: str,
    delivery: Delivery,
    outcome: str,
    record: Mapping[str, Any],
) -> bool:
    """Acknowledge and delete the message, count `outcome` and update its record, atomically;
    False when it was no longer pending (another worker answered it): nothing is changed."""
    done = await client.eval(_FINISH, *Finish(stream, delivery, outcome, record).script_arguments())
    return bool(done)


class CoalescedEval:
    """Calls of one Lua script coalesced: those made while a round trip is out go together in
    the next (a pipeline, not a transaction: each script is still atomic on its own), the first
    at once, so a lone call waits for nothing. A round trip per message was a quarter of a busy
    worker's event-loop time, and 40% of the front door's."""

    def __init__(self, client: aioredis.Redis, script: str) -> None:
        self._client = client
        self._script = script
        self._waiting: list[tuple[list[Any], asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def __call__(self, *arguments: Any) -> Any:
        """The script's answer (EVAL's arguments after the script); the RedisError or OSError
        Redis answered for this call, or that the round trip met, raised."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((list(arguments), future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send())
        return await future

    async def _send(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    answers = await self._round_trip([arguments for arguments, _ in batch])
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as error:  # each caller handles what Redis raised, as before
                    answers = [error] * len(batch)
                for (_, future), answer in zip(batch, answers, strict=True):
                    if future.done():  # its caller was cancelled
                        continue
                    if isinstance(answer, BaseException):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
        finally:
            self._sender = None
            # Empty unless this task was cancelled: then nothing would send what came meanwhile.
            left, self._waiting = self._waiting, []
            for _, future in left:
                future.cancel()

    async def _round_trip(self, calls: list[list[Any]]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for arguments in calls:
                pipe.eval(self._script, *arguments)
            answers: list[Any] = await pipe.execute(raise_on_error=False)
        return answers


class Acknowledger:
    """finish, coalesced (CoalescedEval)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._finish = CoalescedEval(client, _FINISH)

    async def finish(self, item: Finish) -> bool:
        """As `finish`: whether the message was still pending."""
        return bool(await self._finish(*item.script_arguments()))


class Enqueuer:
    """enqueue, coalesced (CoalescedEval)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._enqueue = CoalescedEval(client, _ENQUEUE)

    async def enqueue(
        self,
        stream: str,
        record_key: str,
        record: Mapping[str, Any],
        message: Mapping[str, Any],
        expire_seconds: int,
    ) -> dict[str, str] | None:
        """As `enqueue`."""
        existing = await self._enqueue(
            *_enqueue_arguments(stream, record_key, record, message, expire_seconds)
        )
        return as_dict(existing) if existing else None


async def count(client: aioredis.Redis, stream: str, outcome: str, by: int = 1) -> None:
    await client.hincrby(counts_key(stream), outcome, by)


# --------------------------------------------------------------------------- readers


async def read_backlog(client: aioredis.Redis, stream: str, now: float) -> Backlog:
    """Size, in flight and oldest age of a stream's messages; a missing stream is empty (and
    stays missing: nothing is created)."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.xlen(stream)
        pipe.xrange(stream, count=1)
        size, first = await pipe.execute()
    if not size:
        return Backlog(0, 0, 0.0)
    try:
        summary = await client.xpending(stream, CONSUMER_GROUP)
        pending = int(summary["pending"]) if summary else 0
    except redis.exceptions.ResponseError as error:  # no group yet: no worker ever started
        if "NOGROUP" not in str(error):
            raise
        pending = 0
    oldest = 0.0
    if first:
        millis = _id_order(_text(first[0][0]))[0]
        oldest = max(0.0, now - millis / 1000.0)
    return Backlog(int(size), pending, oldest)


async def read_counts(client: aioredis.Redis, stream: str) -> dict[str, int]:
    """The outcome counters of a stream ({} when none was counted yet)."""
    found = await client.hgetall(counts_key(stream))
    return {key: int(value) for key, value in as_dict(found).items()} if found else {}

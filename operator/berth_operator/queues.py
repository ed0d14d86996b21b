"""The operator's view of the async queues: each stream's backlog and outcome counts, read from
Redis with redis.asyncio (never blocking kopf's loop) just before an Endpoint is planned.

The URL is the settings' async.redis.url; with async.redis.secretRef the operator cannot read a
Secret in every namespace, so it takes BERTH_REDIS_URL from its own environment (the chart sets
it from the same Secret in the release namespace). A Redis that cannot be reached is an answer
too: the planner turns it into a condition, the reconcile goes on.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis
import redis.exceptions
from berth_serving.asyncinf.keys import REDIS_URL_ENV
from berth_serving.asyncinf.queue import read_backlog, read_counts

from .planner.types import QueueState
from .settings import Settings

CONNECT_TIMEOUT_SECONDS = 2.0
READ_TIMEOUT_SECONDS = 3.0  # one reconcile never waits longer than this for the queues
NO_URL = (
    f"the operator has no Redis URL: async.redis.secretRef gives it to the pods; give the operator "
    f"{REDIS_URL_ENV} from the same Secret (the chart does)"
)


def operator_redis_url(settings: Settings) -> str | None:
    redis_settings = settings.async_.redis
    if redis_settings.url is not None:
        return redis_settings.url
    if redis_settings.secret_ref is not None:
        return os.environ.get(REDIS_URL_ENV) or None
    return None


@dataclass(frozen=True)
class QueueReading:
    queues: dict[str, QueueState]
    error: str | None = None


class QueueReader:
    """One connection pool for the operator run; closed at cleanup."""

    def __init__(self, url: str | None) -> None:
        self._client = (
            aioredis.from_url(
                url,
                socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
                socket_timeout=READ_TIMEOUT_SECONDS,
                decode_responses=False,
            )
            if url
            else None
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> QueueReader:
        return cls(operator_redis_url(settings))

    async def read(self, streams: Iterable[str], now: float) -> QueueReading:
        wanted = sorted(set(streams))
        if not wanted:
            return QueueReading({})
        if self._client is None:
            return QueueReading({}, NO_URL)
        try:
            async with asyncio.timeout(READ_TIMEOUT_SECONDS * 2):
                states = await asyncio.gather(*(self._one(stream, now) for stream in wanted))
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            text = str(exc).strip() or type(exc).__name__
            return QueueReading({}, f"Redis: {text}")
        return QueueReading(dict(zip(wanted, states, strict=True)))

    async def _one(self, stream: str, now: float) -> QueueState:
        assert self._client is not None
        backlog, counts = await asyncio.gather(
            read_backlog(self._client, stream, now), read_counts(self._client, stream)
        )
        return QueueState(backlog.size, backlog.pending, backlog.oldest_age_seconds, counts)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

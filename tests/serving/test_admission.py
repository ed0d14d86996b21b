"""The budget on request bytes held at once: requests that fit go at once, the rest wait
their turn and, past the wait, are 503s with Retry-After; every request gives its bytes back."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest
from berth_serving.admission import BODY_BUDGET_PAYLOADS, BodyBudget
from berth_serving.errors import HTTPError

from tests.serving.support import post_concurrently, serving

pytestmark = pytest.mark.timeout(60)


def test_requests_within_the_budget_go_at_once_and_the_rest_wait_in_order() -> None:
    async def scenario() -> list[str]:
        budget = BodyBudget(100)
        order: list[str] = []
        await budget.acquire(60, 1.0)
        await budget.acquire(40, 1.0)
        assert budget.used == 100

        async def later(name: str, size: int) -> None:
            await budget.acquire(size, 5.0)
            order.append(name)

        big = asyncio.create_task(later("big", 70))
        await asyncio.sleep(0)
        small = asyncio.create_task(later("small", 10))  # fits once 60 is back, but queues behind big
        await asyncio.sleep(0.01)
        assert order == []
        budget.release(60)
        await asyncio.sleep(0.01)
        assert order == []  # 40 + 70 > 100: big still waits, and small waits behind it
        budget.release(40)
        await asyncio.gather(big, small)
        assert budget.used == 80
        return order

    assert asyncio.run(scenario()) == ["big", "small"]


def test_a_request_that_waits_too_long_is_a_503_and_leaves_no_trace() -> None:
    async def scenario() -> None:
        budget = BodyBudget(100)
        await budget.acquire(100, 1.0)
        with pytest.raises(HTTPError) as refused:
            await budget.acquire(1, 0.05)
        assert refused.value.code == 503 and refused.value.retry_after == 1
        assert "limit 100 bytes" in refused.value.message
        cancelled = asyncio.create_task(budget.acquire(50, 5.0))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        budget.release(100)
        assert budget.used == 0
        await budget.acquire(100, 0.0)  # nobody left waiting ahead

    asyncio.run(scenario())


def test_many_large_concurrent_requests_are_all_answered_within_the_budget(onnx_models) -> None:  # type: ignore[no-untyped-def]
    """40 bodies of ~60 KiB at once against a 64 KiB limit: the server holds at most
    BODY_BUDGET_PAYLOADS of them, the others wait, and every answer is right."""
    limit = 64 * 1024
    rows = np.round(np.random.default_rng(5).uniform(-1, 1, size=(40, 400, 16)), 4)
    bodies = [orjson.dumps(block.tolist()) for block in rows]
    assert all(limit // 2 < len(body) <= limit for body in bodies)
    assert sum(map(len, bodies)) > 4 * BODY_BUDGET_PAYLOADS * limit
    with serving(onnx_models.identity, max_payload_bytes=limit, max_batch_size=1) as server:
        answers = post_concurrently(server.url, "/invocations", bodies, concurrency=40, timeout=50)
        assert server.service.app.body_budget.used == 0
    for block, (status, body) in zip(rows, answers, strict=True):
        assert status == 200, body
        answer = np.asarray(orjson.loads(body)["predictions"], dtype=np.float32)
        np.testing.assert_array_equal(answer, block.astype(np.float32))

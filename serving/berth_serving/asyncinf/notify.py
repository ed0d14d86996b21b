"""Webhook notifications of answered async inferences: CloudEvents 1.0, structured mode.

Each event is POSTed from a background task, retried with exponential backoff a bounded
number of times within a bounded total time; the worker never waits for it (a message is
acknowledged as soon as its answer is written). An event that keeps failing is counted,
logged once and dropped.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

log = logging.getLogger("berth.async.notify")

CONTENT_TYPE = "application/cloudevents+json"
SUCCEEDED_TYPE = "dev.berth.async.succeeded"
FAILED_TYPE = "dev.berth.async.failed"
SPEC_VERSION = "1.0"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    first_backoff_seconds: float = 0.5  # then doubled: 0.5, 1, 2, 4
    total_seconds: float = 60.0  # every attempt together, waits included
    attempt_timeout_seconds: float = 10.0


def cloud_event(
    *, succeeded: bool, source: str, inference_id: str, location: str, reason: str = ""
) -> dict[str, Any]:
    data: dict[str, Any] = {"inferenceId": inference_id}
    if succeeded:
        data["outputLocation"] = location
    else:
        data["failureLocation"] = location
        data["reason"] = reason
    return {
        "specversion": SPEC_VERSION,
        "id": uuid.uuid4().hex,
        "source": source,
        "type": SUCCEEDED_TYPE if succeeded else FAILED_TYPE,
        "subject": inference_id,
        "time": datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": data,
    }


class Notifier:
    """Sends events in the background; `aclose()` waits for those still being retried (up to
    a bound) and closes the client."""

    def __init__(
        self, policy: RetryPolicy | None = None, on_dropped: Callable[[], None] | None = None
    ) -> None:
        self.policy = policy or RetryPolicy()
        self.on_dropped = on_dropped or (lambda: None)
        self.dropped = 0
        self.delivered = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.policy.attempt_timeout_seconds), follow_redirects=False
        )

    def send(self, url: str, event: dict[str, Any]) -> None:
        """Start delivering `event` to `url`; returns at once."""
        task = asyncio.get_running_loop().create_task(self._deliver(url, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def in_progress(self) -> int:
        return len(self._tasks)

    async def _deliver(self, url: str, event: dict[str, Any]) -> None:
        policy = self.policy
        body = orjson.dumps(event)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.total_seconds
        backoff = policy.first_backoff_seconds
        last = ""
        for attempt in range(1, policy.attempts + 1):
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                answer = await self._client.post(
                    url,
                    content=body,
                    headers={"content-type": CONTENT_TYPE},
                    timeout=min(policy.attempt_timeout_seconds, left),
                )
                if answer.status_code < 300:
                    self.delivered += 1
                    return
                last = f"HTTP {answer.status_code}"
                if 400 <= answer.status_code < 500 and answer.status_code not in (408, 429):
                    break  # the receiver refuses this event: asking again changes nothing
            except httpx.HTTPError as error:
                last = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            if attempt < policy.attempts:
                await asyncio.sleep(min(backoff, max(0.0, deadline - loop.time())))
                backoff *= 2
        self.dropped += 1
        self.on_dropped()
        log.warning(
            "notification dropped",
            extra={"fields": {"url": _safe_url(url), "type": event["type"], "error": last}},
        )

    async def aclose(self, wait_seconds: float = 5.0) -> None:
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=wait_seconds)
            for task in pending:
                task.cancel()
        await self._client.aclose()


def _safe_url(url: str) -> str:
    """The URL without its query (a webhook's query often carries a token)."""
    return url.split("?", 1)[0]

"""Webhook notifications: CloudEvents against real local HTTP servers that fail at first."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from berth_serving.asyncinf.notify import CONTENT_TYPE, Notifier, RetryPolicy, cloud_event

from tests.asyncinf.support import (
    StandInModel,
    Variant,
    Webhook,
    children,
    metric_value,
    post,
    start_frontdoor,
    start_worker,
    wait_done,
    wait_for,
    write_routes,
)
from tests.serving.support import free_port, request

pytestmark = pytest.mark.timeout(90)
FAST = RetryPolicy(attempts=5, first_backoff_seconds=0.2, total_seconds=10.0, attempt_timeout_seconds=2.0)


def deliver(url: str, policy: RetryPolicy, event: dict | None = None) -> SimpleNamespace:
    """Send one event through a real Notifier and wait for its outcome."""
    dropped: list[float] = []

    async def main() -> SimpleNamespace:
        notifier = Notifier(policy, on_dropped=lambda: dropped.append(time.monotonic()))
        started = time.monotonic()
        notifier.send(
            url, event or cloud_event(succeeded=True, source="s", inference_id="i", location="file:///o")
        )
        send_returned = time.monotonic() - started
        await notifier.aclose(wait_seconds=30)
        return SimpleNamespace(
            delivered=notifier.delivered, dropped=notifier.dropped, send_seconds=send_returned,
            seconds=time.monotonic() - started, dropped_calls=len(dropped),
        )  # fmt: skip

    return asyncio.run(main())


def test_a_webhook_failing_twice_gets_the_event_on_the_third_try_with_growing_backoff() -> None:
    with Webhook(fail_first=2) as hook:
        outcome = deliver(hook.url, FAST)
    assert outcome.delivered == 1 and outcome.dropped == 0
    assert outcome.send_seconds < 0.01  # send() never waits for the receiver
    assert len(hook.attempts) == 3
    times = [at for at, _, _ in hook.attempts]
    first_gap, second_gap = times[1] - times[0], times[2] - times[1]
    assert first_gap >= 0.18 and second_gap >= 0.38 and second_gap > first_gap * 1.5
    assert {content_type for _, content_type, _ in hook.attempts} == {CONTENT_TYPE}
    assert hook.events[0] == hook.events[2]  # the same event, id included, on every attempt


def test_the_event_is_cloudevents_1_0_structured() -> None:
    event = cloud_event(
        succeeded=False, source="berth/cfg/blue", inference_id="abc", location="s3://b/f/abc-error.out",
        reason="timed out after 5 s",
    )  # fmt: skip
    with Webhook() as hook:
        deliver(hook.url, FAST, event)
    [received] = hook.events
    assert received["specversion"] == "1.0"
    assert received["type"] == "dev.berth.async.failed"
    assert received["source"] == "berth/cfg/blue" and received["subject"] == "abc"
    assert received["id"] and received["time"].endswith("Z")
    assert received["datacontenttype"] == "application/json"
    assert received["data"] == {
        "inferenceId": "abc",
        "failureLocation": "s3://b/f/abc-error.out",
        "reason": "timed out after 5 s",
    }
    success = cloud_event(succeeded=True, source="s", inference_id="x", location="s3://b/o/x.out")
    assert success["type"] == "dev.berth.async.succeeded"
    assert success["data"] == {"inferenceId": "x", "outputLocation": "s3://b/o/x.out"}


def test_a_webhook_that_keeps_failing_is_dropped_after_bounded_attempts() -> None:
    with Webhook(fail_first=100) as hook:
        outcome = deliver(hook.url, FAST)
    assert len(hook.attempts) == 5
    assert outcome.delivered == 0 and outcome.dropped == 1 and outcome.dropped_calls == 1
    assert outcome.seconds < 0.2 + 0.4 + 0.8 + 1.6 + 2.0


def test_the_total_time_bound_stops_retries_early() -> None:
    policy = RetryPolicy(
        attempts=10, first_backoff_seconds=0.3, total_seconds=1.0, attempt_timeout_seconds=1.0
    )
    with Webhook(fail_first=100) as hook:
        outcome = deliver(hook.url, policy)
    assert outcome.dropped == 1
    assert 2 <= len(hook.attempts) <= 4
    assert outcome.seconds < 1.6


def test_a_client_error_is_not_retried_and_an_unreachable_hook_is_dropped() -> None:
    with Webhook(fail_first=100, status=400) as hook:
        outcome = deliver(hook.url, FAST)
    assert len(hook.attempts) == 1 and outcome.dropped == 1
    unreachable = deliver(f"http://127.0.0.1:{free_port()}/hook", FAST)
    assert unreachable.dropped == 1 and unreachable.delivered == 0


def test_the_worker_notifies_success_and_error_hooks_and_counts_dropped_ones(
    redis_url: str, tmp_path: Path
) -> None:
    variant = Variant("blue", "cfg-1", 1.0, f"file://{tmp_path}/out/", f"file://{tmp_path}/failed/")
    routes = tmp_path / "routes.json"
    write_routes(routes, [variant])
    dead_hook = f"http://127.0.0.1:{free_port()}/gone"
    with StandInModel() as model, Webhook(fail_first=1) as hook, children() as started:
        door = start_frontdoor(redis_url, routes, tmp_path / "frontdoor.log")
        started.append(door)
        worker = start_worker(
            redis_url, variant, model.invoke_url, tmp_path / "w.log",
            "--success-webhook", hook.url, "--error-webhook", dead_hook,
        )  # fmt: skip
        started.append(worker)
        ok = post(door.url, b"[1]").json
        assert wait_done(door.url, ok["inferenceId"])["state"] == "Succeeded"
        wait_for(lambda: len(hook.attempts) == 2)  # the first answered 503, then retried
        assert hook.events[1]["data"] == {
            "inferenceId": ok["inferenceId"],
            "outputLocation": ok["outputLocation"],
        }
        failed = post(door.url, b"fail:500").json
        assert wait_done(door.url, failed["inferenceId"])["state"] == "Failed"
        metrics = f"http://127.0.0.1:{worker.port}/metrics"
        # Five attempts 0.5, 1, 2 and 4 s apart: dropped after about 7.5 s, never blocking the queue.
        also = post(door.url, b"[2]").json
        assert wait_done(door.url, also["inferenceId"], timeout=5)["state"] == "Succeeded"
        wait_for(
            lambda: (
                metric_value(request(metrics).body.decode(), "berth_async_notification_failures_total") == 1
            ),
            20,
        )
        assert "notification dropped" in worker.log() and "token=secret" not in worker.log()

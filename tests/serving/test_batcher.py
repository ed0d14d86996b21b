"""The batcher on its own: immediate dispatch when alone, merging while the worker is busy,
the max batch size, shape compatibility, and one bad request not failing its batch-mates.
The run function is plain numpy, gated by an Event so the queue state is deterministic."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest
from berth_serving.batcher import Batcher, RunFn

pytestmark = pytest.mark.timeout(30)


class Recorder:
    """A model: doubles `x`; refuses any batch holding a negative value; the first call can
    be held back so later jobs pile up in the queue."""

    def __init__(self, hold_first: bool = False) -> None:
        self.batches: list[int] = []
        self.release = threading.Event()
        self.started = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, feed: dict[str, np.ndarray]) -> list[Any]:
        self.started.set()
        self.release.wait(10)
        x = feed["x"]
        self.batches.append(x.shape[0])
        if (x < 0).any():
            raise ValueError("negative input")
        return [x * 2]


def make(run: RunFn, loop: asyncio.AbstractEventLoop, **options: Any) -> Batcher:
    settings = {"batchable": True, "max_batch_size": 32, "max_delay_seconds": 0.002, **options}
    batcher = Batcher(run, loop, **settings)
    batcher.start()
    return batcher


def rows(value: float, count: int = 1, width: int = 4) -> dict[str, np.ndarray]:
    return {"x": np.full((count, width), value, dtype=np.float32)}


def test_a_lone_request_is_dispatched_at_once_whatever_the_delay() -> None:
    async def scenario() -> float:
        run = Recorder()
        batcher = make(run, asyncio.get_running_loop(), max_delay_seconds=5.0)
        try:
            started = time.perf_counter()
            outputs, _ = await batcher.submit(rows(1.0), 1).future
            np.testing.assert_array_equal(outputs[0], np.full((1, 4), 2.0))
            return time.perf_counter() - started
        finally:
            batcher.stop()

    assert asyncio.run(scenario()) < 1.0  # far below the 5 s delay


def test_queued_requests_merge_into_batches_no_larger_than_the_limit() -> None:
    async def scenario() -> Recorder:
        run = Recorder(hold_first=True)
        batcher = make(run, asyncio.get_running_loop(), max_batch_size=4)
        try:
            first = batcher.submit(rows(0.0), 1)
            await asyncio.to_thread(run.started.wait, 10)
            jobs = [batcher.submit(rows(float(i)), 1) for i in range(1, 11)]
            assert batcher.pending == 11
            run.release.set()
            results = await asyncio.gather(first.future, *(job.future for job in jobs))
            for index, (outputs, _) in enumerate(results):
                np.testing.assert_array_equal(outputs[0], np.full((1, 4), 2.0 * index))
            assert batcher.pending == 0
            return run
        finally:
            batcher.stop()

    run = asyncio.run(scenario())
    assert run.batches[0] == 1
    assert sum(run.batches) == 11
    assert max(run.batches) == 4
    assert len(run.batches) == 4  # 1, then 4 + 4 + 2


def test_incompatible_shapes_are_not_merged() -> None:
    async def scenario() -> Recorder:
        run = Recorder(hold_first=True)
        batcher = make(run, asyncio.get_running_loop())
        try:
            first = batcher.submit(rows(1.0), 1)
            await asyncio.to_thread(run.started.wait, 10)
            narrow = [batcher.submit(rows(1.0, width=4), 1) for _ in range(3)]
            wide = [batcher.submit(rows(1.0, width=6), 1) for _ in range(3)]
            run.release.set()
            await first.future
            for job in narrow:
                assert (await job.future)[0][0].shape == (1, 4)
            for job in wide:
                assert (await job.future)[0][0].shape == (1, 6)
            return run
        finally:
            batcher.stop()

    assert asyncio.run(scenario()).batches == [1, 3, 3]


def test_a_failing_request_does_not_fail_its_batch_mates() -> None:
    async def scenario() -> Recorder:
        run = Recorder(hold_first=True)
        batcher = make(run, asyncio.get_running_loop())
        try:
            first = batcher.submit(rows(1.0), 1)
            await asyncio.to_thread(run.started.wait, 10)
            good = [batcher.submit(rows(2.0), 1) for _ in range(2)]
            bad = batcher.submit(rows(-1.0), 1)
            run.release.set()
            await first.future
            for job in good:
                np.testing.assert_array_equal((await job.future)[0][0], np.full((1, 4), 4.0))
            with pytest.raises(ValueError, match="negative input"):
                await bad.future
            assert batcher.pending == 0
            return run
        finally:
            batcher.stop()

    # The merged call of 3 failed; each was then run alone.
    assert asyncio.run(scenario()).batches == [1, 3, 1, 1, 1]


def test_models_without_a_batch_dimension_run_one_request_at_a_time() -> None:
    async def scenario() -> Recorder:
        run = Recorder(hold_first=True)
        batcher = make(run, asyncio.get_running_loop(), batchable=False)
        try:
            jobs = [batcher.submit(rows(1.0), 1)]
            await asyncio.to_thread(run.started.wait, 10)
            jobs += [batcher.submit(rows(1.0), 1) for _ in range(4)]
            run.release.set()
            await asyncio.gather(*(job.future for job in jobs))
            return run
        finally:
            batcher.stop()

    assert asyncio.run(scenario()).batches == [1, 1, 1, 1, 1]


def test_cancelled_jobs_are_skipped_and_released() -> None:
    async def scenario() -> Recorder:
        run = Recorder(hold_first=True)
        batcher = make(run, asyncio.get_running_loop())
        try:
            first = batcher.submit(rows(1.0), 1)
            await asyncio.to_thread(run.started.wait, 10)
            gone = batcher.submit(rows(5.0), 1)
            gone.cancelled = True  # what the server's timeout does
            gone.future.cancel()
            kept = batcher.submit(rows(3.0), 1)
            run.release.set()
            await first.future
            np.testing.assert_array_equal((await kept.future)[0][0], np.full((1, 4), 6.0))
            while batcher.pending:
                await asyncio.sleep(0.01)
            return run
        finally:
            batcher.stop()

    assert asyncio.run(scenario()).batches == [1, 1]


def test_an_output_that_does_not_keep_the_rows_is_never_split_across_jobs() -> None:
    """A model whose signature claims batch-aligned outputs but answers [2N, 2]: the merged
    answer is thrown away, each job runs alone, and merging stops for good."""

    class Reshaping(Recorder):
        def __call__(self, feed: dict[str, np.ndarray]) -> list[Any]:
            return [super().__call__(feed)[0].reshape(-1, 2)]

    async def scenario() -> Recorder:
        run = Reshaping(hold_first=True)
        batcher = make(run, asyncio.get_running_loop())
        try:
            first = batcher.submit(rows(1.0), 1)
            await asyncio.to_thread(run.started.wait, 10)
            jobs = [batcher.submit(rows(float(i)), 1) for i in range(2, 5)]
            run.release.set()
            await first.future
            for value, job in zip(range(2, 5), jobs, strict=True):
                np.testing.assert_array_equal((await job.future)[0][0], np.full((2, 2), 2.0 * value))
            later = [batcher.submit(rows(7.0), 1) for _ in range(3)]
            for job in later:
                np.testing.assert_array_equal((await job.future)[0][0], np.full((2, 2), 14.0))
            return run
        finally:
            batcher.stop()

    batches = asyncio.run(scenario()).batches
    assert batches[:5] == [1, 3, 1, 1, 1]  # the merged call of 3, then each alone
    assert batches[5:] == [1, 1, 1]  # and never merged again


class CountingLoop(asyncio.SelectorEventLoop):
    """A real event loop that counts the callbacks other threads hand it: the wake-ups."""

    def __init__(self) -> None:
        super().__init__()
        self.wakeups: list[str] = []

    def call_soon_threadsafe(self, callback: Any, *args: Any, context: Any = None) -> asyncio.Handle:
        self.wakeups.append(getattr(callback, "__qualname__", repr(callback)))
        return super().call_soon_threadsafe(callback, *args, context=context)


def run_counting(scenario: Any) -> tuple[Any, list[str]]:
    loop = CountingLoop()
    try:
        return loop.run_until_complete(scenario(loop)), loop.wakeups
    finally:
        loop.close()


def test_a_batch_costs_the_event_loop_one_wake_up() -> None:
    async def scenario(loop: CountingLoop) -> tuple[Recorder, int]:
        run = Recorder(hold_first=True)
        batcher = make(run, loop)
        try:
            first = batcher.submit(rows(0.0), 1)
            await asyncio.to_thread(run.started.wait, 10)
            before = len(loop.wakeups)  # to_thread's own hand-back is not the batcher's
            jobs = [batcher.submit(rows(float(i)), 1) for i in range(1, 11)]
            run.release.set()
            results = await asyncio.gather(first.future, *(job.future for job in jobs))
            for index, (outputs, _) in enumerate(results):
                np.testing.assert_array_equal(outputs[0], np.full((1, 4), 2.0 * index))
            return run, len(loop.wakeups) - before
        finally:
            batcher.stop()

    (run, wakeups), _ = run_counting(scenario)
    assert run.batches == [1, 10]
    assert wakeups == 2  # one per ORT call, not one per request (11)


def test_a_failed_merge_and_its_retries_cost_one_wake_up() -> None:
    """The merged call fails, each job is retried alone: all of that round's outcomes come
    back to the event loop together."""

    async def scenario(loop: CountingLoop) -> tuple[Recorder, int, int]:
        run = Recorder(hold_first=True)
        batcher = make(run, loop)
        try:
            first = batcher.submit(rows(1.0), 1)
            await asyncio.to_thread(run.started.wait, 10)
            before = len(loop.wakeups)
            good = [batcher.submit(rows(2.0), 1) for _ in range(3)]
            bad = batcher.submit(rows(-1.0), 1)
            gone = batcher.submit(rows(3.0), 1)
            gone.cancelled = True  # what the server's timeout does
            gone.future.cancel()
            run.release.set()
            await first.future
            for job in good:
                np.testing.assert_array_equal((await job.future)[0][0], np.full((1, 4), 4.0))
            with pytest.raises(ValueError, match="negative input"):
                await bad.future
            while batcher.pending:
                await asyncio.sleep(0.01)
            return run, len(loop.wakeups) - before, batcher.pending
        finally:
            batcher.stop()

    (run, wakeups, pending), names = run_counting(scenario)
    assert run.batches == [1, 4, 1, 1, 1, 1]  # the merge of four failed; each ran alone
    assert wakeups == 2
    assert pending == 0
    assert all(name.endswith("Batcher._deliver") for name in names[-2:])


def test_a_request_alone_in_flight_reaches_the_worker_before_the_loop_runs_again() -> None:
    async def scenario() -> Recorder:
        run = Recorder()
        batcher = make(run, asyncio.get_running_loop())
        try:
            job = batcher.submit(rows(1.0), 1, alone=True)
            # The loop is blocked here (no callback can run): the worker got the job anyway.
            assert run.started.wait(10)
            outputs, _ = await job.future
            np.testing.assert_array_equal(outputs[0], np.full((1, 4), 2.0))
            return run
        finally:
            batcher.stop()

    assert asyncio.run(scenario()).batches == [1]


def test_the_jobs_of_one_loop_iteration_reach_an_idle_worker_together() -> None:
    """Between the submits the GIL is free (a blocking sleep) but the loop does not run: a
    worker woken by the first job would take it alone."""

    async def scenario() -> Recorder:
        run = Recorder()
        batcher = make(run, asyncio.get_running_loop())
        try:
            jobs = []
            for value in range(5):
                jobs.append(batcher.submit(rows(float(value)), 1))
                time.sleep(0.02)
            results = await asyncio.gather(*(job.future for job in jobs))
            for value, (outputs, _) in enumerate(results):
                np.testing.assert_array_equal(outputs[0], np.full((1, 4), 2.0 * value))
            return run
        finally:
            batcher.stop()

    assert asyncio.run(scenario()).batches == [5]


class Expired(Exception):
    """The timeout error the tests hand the batcher."""


class TimerCountingLoop(asyncio.SelectorEventLoop):
    """A real event loop that records the timers the batcher arms."""

    def __init__(self) -> None:
        super().__init__()
        self.batcher_timers = 0

    def call_at(  # type: ignore[override]
        self, when: float, callback: Any, *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        if getattr(callback, "__qualname__", "").startswith("Batcher."):
            self.batcher_timers += 1
        return super().call_at(when, callback, *args, context=context)


def test_jobs_past_their_deadline_fail_with_the_timeout_error_and_are_not_run() -> None:
    """A later job with an earlier deadline is expired at its own time, not the first's."""

    async def scenario() -> tuple[Recorder, float, float]:
        run = Recorder(hold_first=True)
        loop = asyncio.get_running_loop()
        batcher = make(run, loop)
        try:
            first = batcher.submit(rows(1.0), 1)
            await asyncio.to_thread(run.started.wait, 10)
            started = loop.time()
            late = batcher.submit(rows(2.0), 1, deadline=started + 0.4, timeout=Expired)
            kept = batcher.submit(rows(3.0), 1, deadline=started + 30, timeout=Expired)
            soon = batcher.submit(rows(4.0), 1, deadline=started + 0.1, timeout=Expired)
            with pytest.raises(Expired):
                await soon.future
            soon_at = loop.time() - started
            with pytest.raises(Expired):
                await late.future
            late_at = loop.time() - started
            run.release.set()
            await first.future
            np.testing.assert_array_equal((await kept.future)[0][0], np.full((1, 4), 6.0))
            while batcher.pending:
                await asyncio.sleep(0.01)
            return run, soon_at, late_at
        finally:
            batcher.stop()

    run, soon_at, late_at = asyncio.run(scenario())
    assert 0.099 <= soon_at < 0.35  # its own deadline, well before the earlier job's 0.4 s
    assert 0.399 <= late_at < 2.0
    assert run.batches == [1, 1]  # the expired jobs never reached the model


def test_one_timer_serves_the_deadlines_of_every_pending_job() -> None:
    async def scenario(loop: TimerCountingLoop) -> int:
        run = Recorder(hold_first=True)
        batcher = make(run, loop)
        try:
            first = batcher.submit(rows(0.0), 1, deadline=loop.time() + 30, timeout=Expired)
            await asyncio.to_thread(run.started.wait, 10)
            jobs = [
                batcher.submit(rows(float(i)), 1, deadline=loop.time() + 30, timeout=Expired)
                for i in range(1, 51)
            ]
            run.release.set()
            results = await asyncio.gather(first.future, *(job.future for job in jobs))
            for index, (outputs, _) in enumerate(results):
                np.testing.assert_array_equal(outputs[0], np.full((1, 4), 2.0 * index))
            return loop.batcher_timers
        finally:
            batcher.stop()

    loop = TimerCountingLoop()
    try:
        assert loop.run_until_complete(scenario(loop)) == 1  # not one per request (51)
    finally:
        loop.close()


class ThreadRecorder:
    """A model that doubles `x`, taking `seconds`, and records the thread of each call."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.threads: list[int] = []

    def __call__(self, feed: dict[str, np.ndarray]) -> list[Any]:
        self.threads.append(threading.get_ident())
        if self.seconds:
            time.sleep(self.seconds)
        return [feed["x"] * 2]


def test_a_lone_request_of_a_fast_model_runs_on_the_event_loop_without_a_hand_off() -> None:
    async def scenario(loop: CountingLoop) -> tuple[ThreadRecorder, int]:
        run = ThreadRecorder()
        batcher = make(run, loop)
        try:
            await batcher.submit(rows(1.0), 1, alone=True).future  # its cost unknown: the worker
            before = len(loop.wakeups)
            second = batcher.submit(rows(2.0), 1, alone=True)
            np.testing.assert_array_equal((await second.future)[0][0], np.full((1, 4), 4.0))
            handed_back = len(loop.wakeups) - before
            # 10,000 rows at the first calls' cost per row would block the loop: the worker.
            await batcher.submit(rows(3.0, count=10_000), 10_000, alone=True).future
            assert batcher.pending == 0
            return run, handed_back
        finally:
            batcher.stop()

    (run, handed_back), _ = run_counting(scenario)
    assert handed_back == 0  # no call_soon_threadsafe: it never left the loop thread
    main = threading.get_ident()
    assert [thread == main for thread in run.threads] == [False, True, False]


def test_requests_of_one_loop_iteration_go_to_the_worker_together_even_for_a_fast_model() -> None:
    """Under load a request's task often runs to its end alone in flight: inline would then
    take every request one by one and nothing would be batched."""

    async def scenario() -> tuple[ThreadRecorder, list[int]]:
        run = ThreadRecorder()
        sizes: list[int] = []
        batcher = make(run, asyncio.get_running_loop(), on_batch=lambda rows, _: sizes.append(rows))
        try:
            await batcher.submit(rows(1.0), 1, alone=True).future
            await batcher.submit(rows(1.0), 1, alone=True).future  # inline
            jobs = [batcher.submit(rows(float(i)), 1, alone=True) for i in range(3)]
            await asyncio.gather(*(job.future for job in jobs))
            return run, sizes
        finally:
            batcher.stop()

    run, sizes = asyncio.run(scenario())
    main = threading.get_ident()
    assert [thread == main for thread in run.threads] == [False, True, False]
    assert sizes == [1, 1, 3]


def test_a_lone_request_of_a_slow_model_stays_on_the_worker() -> None:
    async def scenario() -> ThreadRecorder:
        run = ThreadRecorder(seconds=0.002)  # above INLINE_BELOW_SECONDS
        batcher = make(run, asyncio.get_running_loop())
        try:
            for value in range(3):
                job = batcher.submit(rows(float(value)), 1, alone=True)
                assert not job.future.done()
                await job.future
            return run
        finally:
            batcher.stop()

    run = asyncio.run(scenario())
    assert threading.get_ident() not in run.threads


def test_a_job_submitted_idle_runs_at_once_and_only_when_nothing_is_pending() -> None:
    async def scenario() -> tuple[ThreadRecorder, bool, bool]:
        run = ThreadRecorder()
        batcher = make(run, asyncio.get_running_loop())
        try:
            await batcher.submit(rows(1.0), 1, idle=True).future  # its cost unknown: the worker
            now = batcher.submit(rows(2.0), 1, idle=True)
            done_on_return = now.future.done()
            await now.future
            # With jobs pending, "idle" is not believed: the new one waits for the worker.
            run.seconds = 0.05
            busy = [batcher.submit(rows(3.0), 1), batcher.submit(rows(3.0), 1)]  # one batch
            await asyncio.sleep(0.01)
            behind = batcher.submit(rows(4.0), 1, idle=True)
            behind_done_on_return = behind.future.done()
            await asyncio.gather(*(job.future for job in busy), behind.future)
            return run, done_on_return, behind_done_on_return
        finally:
            batcher.stop()

    run, done_on_return, behind_done_on_return = asyncio.run(scenario())
    assert done_on_return and not behind_done_on_return
    main = threading.get_ident()
    assert [thread == main for thread in run.threads] == [False, True, False, False]


class RowTimed:
    """A model that doubles `x`, taking `per_row` seconds a row, and records each call's rows."""

    def __init__(self, per_row: float) -> None:
        self.per_row = per_row
        self.batches: list[int] = []

    def __call__(self, feed: dict[str, np.ndarray]) -> list[Any]:
        rows = feed["x"].shape[0]
        self.batches.append(rows)
        time.sleep(rows * self.per_row)
        return [feed["x"] * 2]


def test_batches_of_small_requests_take_the_one_thread_twin_and_large_work_every_thread() -> None:
    """50 ms a request is the line here (ONE_THREAD_BELOW_SECONDS in production): 1 ms a row
    puts requests of 1 row far below it and one of 200 rows far above."""

    async def scenario() -> tuple[RowTimed, RowTimed]:
        wide, twin = RowTimed(0.001), RowTimed(0.001)
        batcher = make(wide, asyncio.get_running_loop(), run_one_thread=twin, one_thread_below_seconds=0.05)
        try:
            await batcher.submit(rows(1.0), 1, alone=True).future  # no cost known yet: every thread
            small = [batcher.submit(rows(float(i)), 1) for i in range(8)]  # one loop iteration: one batch
            for i, (outputs, _) in enumerate(await asyncio.gather(*(job.future for job in small))):
                np.testing.assert_array_equal(outputs[0], np.full((1, 4), 2.0 * i))
            (large,), _ = await batcher.submit(rows(3.0, count=200), 200, alone=True).future
            np.testing.assert_array_equal(large, np.full((200, 4), 6.0))
            await asyncio.gather(*(batcher.submit(rows(4.0), 1).future for _ in range(4)))
            return wide, twin
        finally:
            batcher.stop()

    wide, twin = asyncio.run(scenario())
    assert wide.batches == [1, 200]
    assert twin.batches == [8, 4]

"""Dynamic batching: requests with compatible shapes are merged into ONE ONNX Runtime
call on a dedicated worker thread, then split back.

The event loop only enqueues jobs and resolves futures; the worker does the concatenation,
the ORT call and the slicing, with the GIL released inside ORT. A batch costs the event loop
ONE wake-up: the worker hands back every outcome of a round (the merged call, and the
retries alone when it failed) through a single `call_soon_threadsafe` callback, which
resolves all the round's futures. The hand-over is one too: the jobs submitted in one loop
iteration go to the worker together at its end (one put), so an idle worker no longer wakes
at the first of them and takes it alone while the loop is still parsing the rest (one-row
MLP requests at c64 here: 14 rows per ORT call on average that way, 24 this way). Nothing
waits when nothing else is queued: a request alone in flight goes to the worker at once or,
when the model's last lone call shows it costs less than INLINE_BELOW_SECONDS, runs on the
event loop itself at the end of the loop iteration, with no hand-off at all, provided it is
still the only job then (see INLINE_BELOW_SECONDS). Under load, requests
pile up while the worker is busy and the next call takes them all (up to `max_batch_size`
rows). With a `max_delay` above zero (the server sets one for GPU providers only, see
loaded.batch_delay_seconds) and a queue that shows concurrency, the worker also keeps
collecting while requests keep arriving (each within ARRIVAL_GAP of the last), but never past
`max_delay` from the oldest job's arrival. A batch of small requests runs on the model's
one-thread twin when it has one (see ONE_THREAD_BELOW_SECONDS).

A job submitted with a deadline fails with the caller's timeout error when it is not done by
then. One timer serves every pending job (armed for the earliest deadline, moved only when
an earlier one comes): a `call_later` and its cancel per request cost the event loop 3.7 us
under uvloop here, plus closing the timer's handle later.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import Any

import numpy as np

log = logging.getLogger("berth.serving.batcher")

# feed -> outputs (one per model output, each with the batch as first axis)
RunFn = Callable[[dict[str, np.ndarray]], list[Any]]
# Longest pause between arrivals the worker waits through while filling a batch.
ARRIVAL_GAP_SECONDS = 0.0002
# (rows in the ORT call, seconds inside ORT): metrics hook, called on the worker thread
BatchHook = Callable[[int, float], None]
# One job's outcome: its outputs and the seconds of the ORT call it was part of, or the error.
Outcome = tuple["Job", list[Any] | None, float, BaseException | None]
# What a job past its deadline fails with (made when it expires).
Expiry = Callable[[], BaseException]
# The only job of a loop iteration, with nothing else pending, runs on the event loop thread
# when the model's last lone call, scaled to this job's rows, took less than this. Deciding at
# the end of the iteration matters: a request whose task runs to its end without waiting keeps
# `inflight` at 1, so at concurrency 64 "alone in flight" held for almost every request and a
# no-op model ran 1.3 rows per ORT call (18.4 through the worker) and lost throughput. The hand-off to the worker and
# back cost 0.03-0.14 ms of latency at concurrency 1 here (a small model's p50 0.327 / 0.448 ms
# through the worker, 0.293 / 0.307 ms inline, ORT itself 0.025 ms); the loop is blocked about
# this long at most (a call's cost varies), only when nothing else is in flight. The first lone
# call always goes to the worker (its cost unknown).
INLINE_BELOW_SECONDS = 0.0005
# A batch whose ORT time per request, at the last call's cost per row (on either session),
# is below this runs on the twin (session.load_one_thread_twin) when the model has one: the
# event loop's own cost per request here is 0.05-0.07 ms, so such work cannot outpace the loop
# with more threads, only take CPU from it. One-row MLP requests at c64, no-op c64 = 1, medians
# of 12 interleaved slices: 0.80 with the twin, 0.74 without; a lone 256-row request (7 ms) keeps
# every thread.
ONE_THREAD_BELOW_SECONDS = 0.0002
# Deadlines this close are treated as passed: uvloop's timers fire to the millisecond, and a
# timer a fraction of one early would otherwise be re-armed in a loop until the time came.
DEADLINE_SLACK_SECONDS = 0.001


class Job:
    """One request's arrays on their way through the worker. Made on the event loop for
    every request, so it is a plain slotted class (a dataclass cost 2-3x to build) and its
    merge key is computed by the worker, only when there is something to merge with."""

    __slots__ = ("_key", "cancelled", "enqueued", "future", "inputs", "rows")

    def __init__(
        self, inputs: dict[str, np.ndarray], rows: int, future: asyncio.Future[tuple[list[Any], float]]
    ) -> None:
        self.inputs = inputs
        self.rows = rows
        self.future = future
        self.enqueued = time.perf_counter()
        self.cancelled = False
        self._key: tuple[Any, ...] | None = None

    @property
    def key(self) -> tuple[Any, ...]:
        """Jobs merge only when every input agrees on dtype and on all but the first dimension."""
        key = self._key
        if key is None:
            key = self._key = tuple((name, a.dtype.str, a.shape[1:]) for name, a in self.inputs.items())
        return key


class NotRowAligned(Exception):
    """A merged call answered an output whose first dimension is not the batch's rows."""


class Batcher:
    """Owns the worker thread. `submit` and result delivery happen on the event loop thread
    (and so does the ORT call of a lone job of a fast model: see INLINE_BELOW_SECONDS)."""

    def __init__(
        self,
        run: RunFn,
        loop: asyncio.AbstractEventLoop,
        *,
        batchable: bool,
        max_batch_size: int,
        max_delay_seconds: float,
        on_batch: BatchHook | None = None,
        run_one_thread: RunFn | None = None,
        one_thread_below_seconds: float = ONE_THREAD_BELOW_SECONDS,
    ) -> None:
        self._run = run
        self._run_one_thread = run_one_thread
        self._one_thread_below = one_thread_below_seconds
        # Seconds per row of the last call, on either session: whether the next batch takes the
        # twin. One figure for both: the session with more threads is faster per row by at most
        # their number, and a hiccup (a preempted call) is forgotten at the next call.
        self._row_seconds: float | None = None
        self._loop = loop
        self._batchable = batchable and max_batch_size > 1
        self._max_rows = max(1, max_batch_size)
        self._max_delay = max(0.0, max_delay_seconds)
        self._on_batch = on_batch
        # What the event loop hands over: a job, the jobs of one loop iteration, or None (stop).
        self._queue: queue.SimpleQueue[Job | list[Job] | None] = queue.SimpleQueue()
        self._inbox: deque[Job] = deque()  # the rest of a list taken from the queue; worker only
        self._carry: deque[Job] = deque()
        self.pending = 0  # jobs submitted and not yet delivered; event loop thread only
        self._staged: list[Job] = []  # submitted in this loop iteration, not yet handed over
        self._flush_scheduled = False
        # Pending jobs with a deadline (loop.time()) and their timeout error; event loop only.
        self._deadlines: dict[Job, tuple[float, Expiry]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        # Seconds per row of the last call that ran one job: whether a lone job runs inline.
        self._alone_row_seconds: float | None = None
        self._thread = threading.Thread(target=self._work, name="berth-ort-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def submit(
        self,
        inputs: dict[str, np.ndarray],
        rows: int,
        alone: bool = False,
        deadline: float | None = None,
        timeout: Expiry | None = None,
        idle: bool = False,
    ) -> Job:
        """Queue a job. `alone` (no other request in progress) hands it to the worker at
        once; otherwise the jobs submitted in this loop iteration go over together, in one
        hand-off at its end, so an idle worker wakes once for all of them. With a `deadline`
        (in loop.time()), the job's future fails with `timeout()` if not done by then, and the
        worker skips it if it has not started it. `idle` (no other request exists at all, not
        even one waiting to start) lets a job that may run inline run at once, its future done
        on return, without waiting for the end of the loop iteration."""
        job = Job(inputs, rows, self._loop.create_future())
        self.pending += 1
        if idle and not self._staged and self._inline_fits(rows):
            outcomes: list[Outcome] = []
            self._run_jobs([job], outcomes)
            self._deliver(1, outcomes)
            return job
        if deadline is not None:
            self._deadlines[job] = (deadline, timeout or _timed_out)
            if deadline < self._timer_at:
                self._arm(deadline)
        if alone and not self._staged and not self._inline_fits(rows):
            self._queue.put(job)
            return job
        # Staged: at the end of this loop iteration _flush hands over every job submitted in
        # it, or runs the only one inline.
        self._staged.append(job)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return job

    def _inline_fits(self, rows: int) -> bool:
        """Nothing else pending and the model's last lone call, scaled to `rows`, was short."""
        per_row = self._alone_row_seconds
        return self.pending == 1 and per_row is not None and rows * per_row < INLINE_BELOW_SECONDS

    def _flush(self) -> None:
        self._flush_scheduled = False
        staged, self._staged = self._staged, []
        if len(staged) == 1:
            job = staged[0]
            if not job.cancelled and self._inline_fits(job.rows):
                # The only job of this loop iteration, the worker idle: run it here, no hand-off.
                outcomes: list[Outcome] = []
                self._run_jobs([job], outcomes)
                self._deliver(1, outcomes)
            else:
                self._queue.put(job)
        elif staged:
            self._queue.put(staged)

    # --- worker thread -------------------------------------------------------------
    def _work(self) -> None:
        while True:
            first = self._carry.popleft() if self._carry else self._take(None)
            if first is None:
                return
            batch = [first]
            if self._batchable and first.rows < self._max_rows and not first.cancelled:
                self._gather(batch)
            self._execute(batch)

    def _take(self, timeout: float | None) -> Job | None:
        """The next job handed over (None: stop); queue.Empty after `timeout` (0: do not wait)."""
        if self._inbox:
            return self._inbox.popleft()
        item = self._queue.get_nowait() if timeout == 0.0 else self._queue.get(timeout=timeout)
        if type(item) is list:
            self._inbox.extend(item)
            return self._inbox.popleft()
        return item  # type: ignore[return-value]

    def _gather(self, batch: list[Job]) -> None:
        first = batch[0]
        rows = first.rows
        # Compatible jobs left over from an earlier round go first, in arrival order.
        keep: deque[Job] = deque()
        while self._carry:
            held = self._carry.popleft()
            if held.key == first.key and rows + held.rows <= self._max_rows:
                batch.append(held)
                rows += held.rows
            else:
                keep.append(held)
        self._carry = keep
        deadline = first.enqueued + self._max_delay
        while rows < self._max_rows:
            job: Job | None
            try:
                job = self._take(0.0)
            except queue.Empty:
                # Wait for more only when the queue has shown concurrency.
                remaining = deadline - time.perf_counter()
                if len(batch) < 2 or remaining <= 0:
                    break
                try:
                    job = self._take(min(remaining, ARRIVAL_GAP_SECONDS))
                except queue.Empty:
                    break
            if job is None:
                self._queue.put(None)  # stop after this batch
                break
            if job.key == first.key and rows + job.rows <= self._max_rows:
                batch.append(job)
                rows += job.rows
            else:
                self._carry.append(job)

    def _execute(self, batch: list[Job]) -> None:
        """Run one round and hand its outcomes to the event loop in one callback."""
        outcomes: list[Outcome] = []
        self._run_jobs([job for job in batch if not job.cancelled], outcomes)
        self._loop.call_soon_threadsafe(self._deliver, len(batch), outcomes)

    def _run_jobs(self, live: list[Job], outcomes: list[Outcome]) -> None:
        if not live:
            return
        try:
            per_job, seconds = self._call(live)
        except NotRowAligned as error:
            # The signature promised rows it did not keep: never merge for this model again.
            log.warning("merging disabled: %s", error)
            self._batchable = False
            for job in live:
                self._run_jobs([job], outcomes)
            return
        except Exception as error:
            if len(live) == 1:
                outcomes.append((live[0], None, 0.0, error))
                return
            # One bad request must not fail the others it was merged with: retry them alone.
            for job in live:
                self._run_jobs([job], outcomes)
            return
        outcomes.extend(zip(live, per_job, repeat(seconds), repeat(None)))

    def _call(self, jobs: Sequence[Job]) -> tuple[list[list[Any]], float]:
        """Run jobs as one ORT call; returns each job's outputs and the seconds inside ORT."""
        if len(jobs) == 1:
            feed = jobs[0].inputs
            rows = jobs[0].rows
        else:
            feed = {name: np.concatenate([job.inputs[name] for job in jobs]) for name in jobs[0].inputs}
            rows = 0
            for job in jobs:
                rows += job.rows
        twin = self._run_one_thread if self._one_thread_fits(rows, len(jobs)) else None
        started = time.perf_counter()
        outputs = (twin or self._run)(feed)
        seconds = time.perf_counter() - started
        per_row = self._row_seconds = seconds / max(rows, 1)
        if self._on_batch is not None:
            self._on_batch(rows, seconds)
        if len(jobs) == 1:
            self._alone_row_seconds = per_row
            return [outputs], seconds
        for output in outputs:
            if _rows(output) != rows:
                raise NotRowAligned(f"an output of {_rows(output)} rows for a batch of {rows}")
        bounds = []
        start = 0
        for job in jobs:
            end = start + job.rows
            bounds.append((start, end))
            start = end
        if len(outputs) == 1:
            only = outputs[0]
            return [[only[start:end]] for start, end in bounds], seconds
        return [[output[start:end] for output in outputs] for start, end in bounds], seconds

    def _one_thread_fits(self, rows: int, jobs: int) -> bool:
        """Whether this batch runs on the one-thread twin (see ONE_THREAD_BELOW_SECONDS)."""
        per_row = self._row_seconds
        if self._run_one_thread is None or per_row is None:
            return False
        return rows * per_row < self._one_thread_below * jobs

    # --- event loop thread ---------------------------------------------------------
    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(at, self._expire_due)
        self._timer_at = at

    def _expire_due(self) -> None:
        """Fail the jobs past their deadline; wait for the earliest of the rest."""
        self._timer, self._timer_at = None, float("inf")
        deadlines = self._deadlines
        if not deadlines:
            return
        now = self._loop.time() + DEADLINE_SLACK_SECONDS
        for job in [job for job, (at, _) in deadlines.items() if at <= now]:
            _, timeout = deadlines.pop(job)
            if not job.future.done():
                job.cancelled = True
                job.future.set_exception(timeout())
        if deadlines:
            self._arm(min(at for at, _ in deadlines.values()))

    def _deliver(self, finished: int, outcomes: list[Outcome]) -> None:
        self.pending -= finished
        deadlines = self._deadlines
        for job, outputs, seconds, error in outcomes:
            if deadlines:
                deadlines.pop(job, None)
            future = job.future
            if future.done():
                continue  # timed out meanwhile
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result((outputs or [], seconds))


def _timed_out() -> BaseException:
    return TimeoutError("the job passed its deadline")


def _rows(output: Any) -> int | None:
    """The first dimension of an output (a list for ZipMap), None for a scalar."""
    try:
        return len(output)
    except TypeError:
        return None

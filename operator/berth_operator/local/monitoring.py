"""MonitoringSchedules in `berth up`: the planner's CronJob, run as a local process on its cron.

For each schedule the same planner as the operator's (plan_monitoring) gives the CronJob; at
each fire time (planner/cron.py, UTC as the CronJob's timeZone Etc/UTC) its container's
command line runs here, exactly as planned, with the container's env, BERTH_TERMINATION_LOG
pointing to a file of the run and TMPDIR to a spool directory in the run dir. When it ends,
what a cluster's pod would show (containerStatuses[].state.terminated: exitCode, the
termination message, finishedAt; the label job-name) goes back to plan_monitoring as its pods,
so the status comes from the one planner.

As the CronJob says: concurrencyPolicy Forbid (a fire while a run goes on is skipped), suspend
(no run starts), HISTORY finished runs kept per outcome, and a missed fire (the machine slept)
runs once, not once per missed time. A run never starts at `berth up`'s start unless asked
(`berth up --monitor-now`, as `kubectl create job --from=cronjob/...` would).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from berth_serving.termination import TERMINATION_LOG_ENV

from ..api import Endpoint, EndpointConfig, MonitoringSchedule, MonitoringScheduleStatus
from ..planner.cron import CronError, next_after
from ..planner.monitoring import HISTORY, MONITOR_CONTAINER, plan_monitoring
from ..planner.types import Manifest
from ..settings import Settings
from . import procs
from .asyncfleet import resolve_env
from .sidecar import BERTH_ARGV, berth_args
from .versions import with_generation

log = logging.getLogger("berth.up")

Key = tuple[str, str]  # (namespace, name)
# Kubernetes' FallbackToLogsOnError: the last 80 lines, at most 2048 bytes, of a failed container's log.
FALLBACK_LINES = 80
FALLBACK_BYTES = 2048
STOP_GRACE_SECONDS = 10.0
TICK_SECONDS = 1.0  # the longest wait between looks at the clock (it may jump: a laptop sleeps)


def utc_now() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """Whole seconds, as a pod's finishedAt."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_name(cron_job: str, fire: datetime) -> str:
    """The CronJob controller's name for the Job of a fire: CRONJOB-<minutes since the epoch>."""
    return f"{cron_job}-{int(fire.timestamp()) // 60}"


def container_of(cron_job: Manifest) -> Manifest:
    pod = cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    containers = pod.get("containers") or []
    found: Manifest = next((c for c in containers if c.get("name") == MONITOR_CONTAINER), {})
    return found


def observed_pod(
    job: str, labels: Mapping[str, str], code: int, message: str, finished: datetime
) -> Manifest:
    """A finished run as the operator reads its pod."""
    return {
        "metadata": {"name": f"{job}-local", "labels": {**labels, "job-name": job}},
        "status": {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": MONITOR_CONTAINER,
                    "state": {
                        "terminated": {"exitCode": code, "message": message, "finishedAt": rfc3339(finished)}
                    },
                }
            ],
        },
    }


def kept(pods: list[Manifest]) -> list[Manifest]:
    """The last HISTORY succeeded and the last HISTORY failed runs (the CronJob's history limits)."""
    succeeded = [p for p in pods if p["status"]["phase"] == "Succeeded"][-HISTORY:]
    failed = [p for p in pods if p["status"]["phase"] != "Succeeded"][-HISTORY:]
    return [p for p in pods if any(p is q for q in succeeded + failed)]


@dataclass
class ScheduleState:
    schedule: MonitoringSchedule
    status: MonitoringScheduleStatus | None = None
    cron_job: Manifest | None = None
    next_run: datetime | None = None
    pods: list[Manifest] = field(default_factory=list)  # finished runs, oldest first
    running: asyncio.Task[None] | None = None
    running_job: str = ""
    runs: int = 0
    skipped: int = 0  # fires that found a run still going (Forbid)
    problem: str = ""  # why no run can start here (logged once)
    run_now: bool = False


class LocalMonitoring:
    """The schedules `berth up` read: planned on every tick, run at their fire times."""

    def __init__(
        self,
        settings: Settings,
        run_dir: Path,
        endpoints: Callable[[], Mapping[Key, Endpoint]],
        base_env: Mapping[str, str] | None = None,
        clock: Callable[[], datetime] = utc_now,
        run_now: bool = False,
    ) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self._endpoints = endpoints
        self._base_env = dict(base_env if base_env is not None else {**os.environ, "PYTHONUNBUFFERED": "1"})
        self.clock = clock
        self.run_now = run_now
        self.schedules: dict[Key, ScheduleState] = {}
        self.configs: Mapping[Key, EndpointConfig] = {}
        self.secrets: Mapping[Key, Mapping[str, bytes]] = {}
        self.wake = asyncio.Event()

    # ------------------------------------------------------------------ inputs

    def load(
        self,
        schedules: Mapping[Key, MonitoringSchedule],
        configs: Mapping[Key, EndpointConfig],
        secrets: Mapping[Key, Mapping[str, bytes]],
    ) -> None:
        """New manifests: keep each schedule's status and runs; bump generation on a spec change;
        a schedule no longer among them stops its run (a deleted CronJob's Jobs go with it)."""
        states: dict[Key, ScheduleState] = {}
        for key, schedule in schedules.items():
            state = self.schedules.get(key)
            if state is not None and state.schedule.spec.schedule != schedule.spec.schedule:
                state.next_run = None  # the new schedule's next fire, from now
            previous = state.schedule if state is not None else None
            versioned = with_generation(previous, schedule).model_copy(update={"status": None})
            if state is None:
                state = ScheduleState(versioned, run_now=self.run_now)
            state.schedule = versioned
            states[key] = state
        for key, state in self.schedules.items():
            if key not in states and state.running is not None:
                state.running.cancel()
        self.schedules = states
        self.configs = configs
        self.secrets = secrets
        self.wake.set()

    # ------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.wake.clear()
            self.tick()
            dues = [s.next_run for s in self.schedules.values() if s.next_run is not None]
            timeout = TICK_SECONDS
            if dues:
                timeout = max(0.0, min(timeout, (min(dues) - self.clock()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=timeout)

    def tick(self) -> list[str]:
        """Plan every schedule as of the clock and start the runs that are due; the Jobs started."""
        now = self.clock()
        started = []
        for key, state in sorted(self.schedules.items()):
            try:
                job = self._tick(key, state, now)
            except Exception as exc:  # one schedule's bug must not stop the others
                self._problem(key, state, f"plan failed: {type(exc).__name__}: {exc}")
                continue
            if job:
                started.append(job)
        return started

    def _tick(self, key: Key, state: ScheduleState, now: datetime) -> str:
        self._plan(key, state, now)
        cron_job = state.cron_job
        if cron_job is None or cron_job["spec"].get("suspend"):
            state.next_run = None
            if cron_job is not None:  # --monitor-now meant at start, not when it is resumed
                state.run_now = False
            return ""
        try:
            if state.next_run is None:
                state.next_run = now if state.run_now else next_after(cron_job["spec"]["schedule"], now)
                state.run_now = False
            if state.next_run > now:
                return ""
            fire, state.next_run = state.next_run, next_after(cron_job["spec"]["schedule"], now)
        except CronError as exc:  # source.py refuses such a schedule when it reads it
            self._problem(key, state, f"spec.schedule: {exc}")
            return ""
        state.problem = ""
        if state.running is not None and not state.running.done():
            state.skipped += 1  # concurrencyPolicy Forbid
            log.info(
                "MonitoringSchedule %s/%s: run of %s skipped: %s still runs",
                *key,
                rfc3339(fire),
                state.running_job,
            )
            return ""
        job = job_name(cron_job["metadata"]["name"], fire)
        state.running_job = job
        state.running = asyncio.get_running_loop().create_task(self._execute(key, state, cron_job, job))
        return job

    def _plan(self, key: Key, state: ScheduleState, now: datetime) -> None:
        namespace, _ = key
        schedule = state.schedule.model_copy(update={"status": state.status})
        endpoint = self._endpoints().get((namespace, schedule.spec.endpoint_name))
        configs = {n: c for (ns, n), c in self.configs.items() if ns == namespace}
        plan = plan_monitoring(schedule, endpoint, configs, state.pods, self.settings, now)
        state.status = plan.status
        state.cron_job = next((o for o in plan.objects if o["kind"] == "CronJob"), None)

    def _problem(self, key: Key, state: ScheduleState, message: str) -> None:
        if message != state.problem:
            log.error("MonitoringSchedule %s/%s: %s", *key, message)
        state.problem = message

    # ------------------------------------------------------------------ one run

    def spool(self, key: Key) -> Path:
        return self.run_dir / "monitoring" / key[0] / key[1]

    def command(self, key: Key, cron_job: Manifest, termination: Path) -> tuple[list[str], dict[str, str]]:
        """The container's command line and env as this machine runs them."""
        container = container_of(cron_job)
        command = [str(a) for a in container.get("command") or []]
        if not command or Path(command[0]).name != "berth":
            raise ValueError(f"container {container.get('name')!r} runs {command}: not a berth command")
        env, pod_name, missing = resolve_env(container, self.secrets, key[0])
        for name in missing:  # a cluster would not start the pod; here the run goes without it
            log.warning("MonitoringSchedule %s/%s: %s is not among the manifests, left out", *key, name)
        env.update({name: cron_job["metadata"]["name"] for name in pod_name})
        spool = self.spool(key) / "spool"
        spool.mkdir(parents=True, exist_ok=True)
        env.update({"TMPDIR": str(spool), TERMINATION_LOG_ENV: str(termination)})
        return [*BERTH_ARGV, *berth_args(container)], {**self._base_env, **env}

    async def _execute(self, key: Key, state: ScheduleState, cron_job: Manifest, job: str) -> None:
        directory = self.spool(key)
        directory.mkdir(parents=True, exist_ok=True)
        termination = directory / f"{job}.termination-log"
        termination.unlink(missing_ok=True)
        log_path = self.run_dir / "logs" / f"{job}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        tail: collections.deque[str] = collections.deque(maxlen=FALLBACK_LINES)
        labels = dict(cron_job["spec"]["jobTemplate"]["metadata"].get("labels") or {})
        state.runs += 1
        try:
            argv, env = self.command(key, cron_job, termination)
            log.info("MonitoringSchedule %s/%s: %s started", *key, job)
            process = await procs.spawn(argv, env)
        except (OSError, ValueError) as exc:
            code, message = 128, f"cannot start: {exc}"
        else:
            try:
                with log_path.open("w") as sink:
                    await asyncio.gather(
                        *(
                            self._copy(s, sink, tail)
                            for s in (process.stdout, process.stderr)
                            if s is not None
                        )
                    )
                    code = await process.wait()
            except asyncio.CancelledError:
                await procs.terminate(process, STOP_GRACE_SECONDS)
                raise
            finally:
                procs.forget(process.pid)
            message = termination.read_text() if termination.exists() else ""
            if not message.strip() and code != 0:  # terminationMessagePolicy FallbackToLogsOnError
                message = "".join(tail).encode()[-FALLBACK_BYTES:].decode("utf-8", "ignore")
        state.pods = kept([*state.pods, observed_pod(job, labels, code, message, self.clock())])
        log.info("MonitoringSchedule %s/%s: %s exited with code %d", *key, job, code)
        self.wake.set()

    @staticmethod
    async def _copy(stream: asyncio.StreamReader, sink: Any, tail: collections.deque[str]) -> None:
        while line := await stream.readline():
            text = line.decode("utf-8", "replace")
            sink.write(text)
            tail.append(text)

    async def idle(self) -> None:
        """Until no run goes on."""
        running = [s.running for s in self.schedules.values() if s.running is not None]
        await asyncio.gather(*running, return_exceptions=True)

    async def shutdown(self) -> None:
        """Stop the runs that go on (SIGTERM, then SIGKILL after the grace)."""
        running = [
            s.running for s in self.schedules.values() if s.running is not None and not s.running.done()
        ]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    # ------------------------------------------------------------------ reporting

    def snapshot(self) -> list[dict[str, Any]]:
        """What the display and /_berth/status show of each schedule."""
        found = []
        for (namespace, name), state in sorted(self.schedules.items()):
            spec = state.schedule.spec
            running = state.running is not None and not state.running.done()
            found.append(
                {
                    "namespace": namespace,
                    "name": name,
                    "endpoint": spec.endpoint_name,
                    "schedule": spec.schedule,
                    "suspend": spec.suspend,
                    "nextRun": rfc3339(state.next_run) if state.next_run is not None else None,
                    "running": state.running_job if running else None,
                    "runs": state.runs,
                    "skipped": state.skipped,
                    "problem": state.problem,
                    "status": state.status.to_wire() if state.status is not None else {},
                }
            )
        return found

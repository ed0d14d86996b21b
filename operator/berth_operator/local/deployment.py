"""The local processes behind one planned Deployment (a LocalDeployment).

Level-triggered like a ReplicaSet controller: fetch the model (the storage-initializer's
job in a pod), keep `replicas` processes of the current template running, and when the
template changes start the new processes first and stop the old ones once the new are
ready. A fleet that wakes from zero replicas fetches again (a cache hit when the model did
not change), as a new pod's storage-initializer would: each phase of a cold start is timed.
A MultiModel fleet fetches nothing up front (its pods have no storage-initializer): each
replica serves the prefix and fetches a model on its first request. A pipeline's fleet fetches
each stage (a pod's storage-initializer per stage) and its replicas serve the fetched files
(`berth serve` with BERTH_PIPELINE naming them).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import orjson
from berth_serving.config import ENV, PipelineStage, pipeline_to_json

from .modelcache import ModelCache
from .replica import Replica, ReplicaSpec
from .sidecar import SidecarSpec

FetchState = Literal["Fetching", "Fetched", "Failed"]
FETCH_MAX_BACKOFF = 30.0
# How a replica's crash reason starts when `berth serve` could not load the model (server.py).
MODEL_LOAD_FAILED = "model load failed"


@dataclass(frozen=True)
class DeploymentSpec:
    namespace: str
    name: str  # the Deployment's name
    labels: Mapping[str, str]  # the pod template's labels
    replicas: int
    model_uri: str | None  # None: the pods serve no model (the async front door runs `args`)
    sha256: str | None
    env: Mapping[str, str] = field(default_factory=dict)
    grace_seconds: float = 30.0
    args: tuple[str, ...] = ()  # a `berth` command line instead of `berth serve MODEL`
    sidecars: tuple[SidecarSpec, ...] = ()
    multi_model: bool = False  # model_uri is a MultiModel prefix, served as it is
    # A pipeline (model_uri None): its stages, each fetched before the replicas start.
    pipeline: tuple[PipelineStage, ...] = ()

    @property
    def fetches(self) -> bool:
        """Something is fetched before the replicas start: the model, or a pipeline's stages."""
        return bool(self.pipeline) or (self.model_uri is not None and not self.multi_model)

    @property
    def template_hash(self) -> str:
        sidecars = [[s.container, s.args, sorted(s.env.items()), s.pod_name_env] for s in self.sidecars]
        stages = [[s.name, s.model_uri, s.sha256, list(s.outputs)] for s in self.pipeline]
        material = orjson.dumps(
            [self.model_uri, self.sha256, sorted(self.env.items()), sorted(self.labels.items())]
            + ([[self.args, sidecars]] if self.args or sidecars else [])  # hashes of plain fleets stay
            + (["multi-model"] if self.multi_model else [])
            + ([["pipeline", stages]] if stages else [])
        )
        return hashlib.sha256(material).hexdigest()[:8]


class LocalDeployment:
    def __init__(
        self,
        spec: DeploymentSpec,
        cache: ModelCache,
        run_dir: Path,
        base_env: Mapping[str, str],
        on_change: Callable[[], None],
        echo: Callable[[str, str], None] | None = None,
    ) -> None:
        self.spec = spec
        self.generation = 1
        self.replicas: list[Replica] = []
        self.fetch_state: FetchState = "Fetching"
        self.fetch_error = ""
        self.fetch_failures = 0
        self.model_path: Path | None = None
        self.stage_paths: tuple[Path, ...] = ()  # a pipeline's: each ONNX stage's fetched file
        self.served = False  # some replica was ready once: its Model became Ready
        # time.monotonic() of the last wake from zero replicas (or of the start), and of the model
        # file being ready after it: the scheduled and model-fetched ends of a cold start.
        self.woke_at: float | None = None
        self.fetched_at: float | None = None
        self._asleep = True
        self._fetched_hash = ""
        self._evicted_hash = ""  # the template whose cached model was dropped after a load failure
        self._cache = cache
        self._run_dir = run_dir
        self._base_env = base_env
        self._on_change = on_change
        self._echo = echo
        self._dirty = asyncio.Event()
        self._stopping = False
        self._retry_at = 0.0
        self._next_index = 0
        self._stops: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        self._dirty.set()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"fleet {self.spec.name}")

    def update(self, spec: DeploymentSpec) -> None:
        if spec == self.spec:
            return
        if spec.template_hash != self.spec.template_hash:
            self.fetch_state, self.fetch_error, self.fetch_failures = "Fetching", "", 0
        self.spec = spec
        self.generation += 1
        self._dirty.set()

    async def stop(self) -> None:
        """Drain and stop every replica (route first, then SIGTERM)."""
        self._stopping = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*(r.stop() for r in self.replicas), *self._stops)
        self._on_change()

    # ------------------------------------------------------------------ views

    def current(self) -> list[Replica]:
        """Replicas of the current template that are not being stopped."""
        tag = self.spec.template_hash
        return [r for r in self.replicas if r.spec.template == tag and r.state != "Terminating"]

    def routable(self) -> list[Replica]:
        return [r for r in self.replicas if r.ready and r.state not in ("Terminating", "Stopped")]

    def unready_reason(self) -> str:
        """Why no replica serves, when something says so: the fetch's error, a crash's reason."""
        if self.fetch_state == "Failed":
            return f"model fetch failed: {self.fetch_error}"
        for replica in self.current():
            if replica.state == "CrashLoopBackOff" and replica.last_error:
                return f"replica {replica.name} CrashLoopBackOff: {replica.last_error}"
        return ""

    # ------------------------------------------------------------------ reconcile loop

    async def _loop(self) -> None:
        while not self._stopping:
            await self._dirty.wait()
            self._dirty.clear()
            await self._reconcile()

    def _changed(self) -> None:
        self.served = self.served or any(r.ready for r in self.replicas)
        self._dirty.set()
        self._on_change()

    async def _reconcile(self) -> None:
        spec = self.spec
        tag = spec.template_hash
        if spec.replicas == 0:
            self._asleep = True
        elif self._asleep:
            self._asleep = False
            self.woke_at, self.fetched_at = time.monotonic(), None
            if not self.current():
                self._fetched_hash = ""  # the new pods' init containers fetch (from the cache)
        if not spec.fetches:  # nothing to fetch first
            self.fetch_state, self._fetched_hash = "Fetched", tag
            if spec.multi_model and self.fetched_at is None:  # a cold start's fetch phase is empty
                self.fetched_at = time.monotonic()
        elif self._fetched_hash == tag and self._evicted_hash != tag and self._model_failed_to_load():
            # The cache gave the replicas a file they cannot load: drop it and fetch again, once
            # per template (one that still fails, freshly fetched, is the model's own fault).
            self._evicted_hash = tag
            for uri, sha256 in _sources(spec):
                self._cache.evict(uri, sha256)
            self._fetched_hash = ""
        if self._fetched_hash != tag:
            if not await self._fetch(spec):
                return
            self._fetched_hash = tag
        current = self.current()
        for _ in range(spec.replicas - len(current)):
            self._start_replica(spec)
        for extra in sorted(current, key=lambda r: r.name)[spec.replicas :]:
            self._stop_replica(extra)
        # Old template: stop once the new one is fully ready (surge first, like maxUnavailable 0).
        ready_new = sum(1 for r in self.current() if r.ready)
        old = [r for r in self.replicas if r not in self.current() and r.state != "Terminating"]
        if old and ready_new >= spec.replicas:
            for replica in old:
                self._stop_replica(replica)

    def _model_failed_to_load(self) -> bool:
        return any(
            r.state == "CrashLoopBackOff" and r.last_error.startswith(MODEL_LOAD_FAILED)
            for r in self.current()
        )

    async def _fetch(self, spec: DeploymentSpec) -> bool:
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self.fetch_state = "Fetching"
        where = ""
        try:
            if spec.pipeline:  # one after the other, as the pod's storage-initializers
                paths = []
                for stage in spec.pipeline:
                    where = f"stage {stage.name}: "
                    paths.append(await self._cache.get(stage.model_uri, stage.sha256 or None))
                self.stage_paths = tuple(paths)
            else:
                assert spec.model_uri is not None
                self.model_path = await self._cache.get(spec.model_uri, spec.sha256)
        except Exception as exc:  # any fetch error is reported, as the init container would
            self.fetch_state = "Failed"
            said = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            self.fetch_error = where + said
            self.fetch_failures += 1
            self._retry_at = time.monotonic() + min(FETCH_MAX_BACKOFF, 2.0 ** min(self.fetch_failures, 5))
            self._on_change()
            self._dirty.set()  # try again after the backoff
            return False
        self.fetch_state, self.fetch_error = "Fetched", ""
        self.fetched_at = time.monotonic()
        self._on_change()
        return True

    def _start_replica(self, spec: DeploymentSpec) -> None:
        assert self.model_path is not None or spec.model_uri is None or spec.multi_model
        name = f"{spec.name}-{spec.template_hash}-{self._next_index}"
        self._next_index += 1
        env = {**self._base_env, **spec.env}
        if spec.pipeline:  # the files fetched (and checked) here, instead of the pod's directories
            served = tuple(
                replace(stage, model_uri=str(path), sha256="")
                for stage, path in zip(spec.pipeline, self.stage_paths, strict=True)
            )
            env[ENV["pipeline"]] = pipeline_to_json(served)
        replica_spec = ReplicaSpec(
            name=name,
            model_path=self.model_path if spec.model_uri is not None and not spec.multi_model else None,
            prefix=spec.model_uri if spec.multi_model else None,
            pipeline=bool(spec.pipeline),
            env=env,
            log_path=self._run_dir / "logs" / f"{name}.log",
            grace_seconds=spec.grace_seconds,
            template=spec.template_hash,
            args=spec.args,
            # A sidecar has the environment of its own container, not the serving one's.
            sidecars=tuple(replace(s, env={**self._base_env, **s.env}) for s in spec.sidecars),
        )
        replica = Replica(replica_spec, on_change=self._changed, echo=self._echo)
        self.replicas.append(replica)
        replica.start()

    def _stop_replica(self, replica: Replica) -> None:
        async def stop_and_forget() -> None:
            await replica.stop()
            if replica in self.replicas:
                self.replicas.remove(replica)
            self._changed()

        task = asyncio.get_running_loop().create_task(stop_and_forget())
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)


def _sources(spec: DeploymentSpec) -> list[tuple[str, str | None]]:
    """(URI, sha256) of each model the fleet fetches: the model, or every stage of a pipeline."""
    if spec.pipeline:
        return [(stage.model_uri, stage.sha256 or None) for stage in spec.pipeline]
    assert spec.model_uri is not None
    return [(spec.model_uri, spec.sha256)]

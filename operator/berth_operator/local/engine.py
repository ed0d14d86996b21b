"""The local control loop: the operator's reconcile, with processes instead of a cluster.

For every Endpoint: observe (children as applied, Deployments and Pods synthesized from
the fleets, the new fleet's metrics during a rollout), call the same pure planner, then
carry out the Plan: the HTTPRoute goes to the router, Deployments become fleets of local
`berth serve` processes, deletions drain before they stop. HTTPScaledObjects go to the
router's interceptor (interceptor.py), which keeps the replica count of their Deployments.

A MultiModel variant's replicas serve its prefix (`berth serve --multi-model PREFIX`) with no
peers: on a cluster they forward a model's requests to its owner among themselves, here the
router does that (modelroute.py), so each Service of such a variant is given to the router
as a ModelPool.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from berth_serving.config import DEFAULT_CACHE_SHARE, ENV, PipelineStage, ServeConfig
from berth_serving.multimodel.rendezvous import SATURATED_BATCHES

from ..api import Endpoint, EndpointConfig, EndpointStatus, Model
from ..planner import labels
from ..planner.fleetmetrics import fleets_to_scrape, from_texts
from ..planner.pods import SERVER_CONTAINER
from ..planner.serverless import HTTP_SCALED_OBJECT_KIND
from ..planner.types import Event, FleetMetrics, Manifest, ObjectRef, Observed, PlanInput, QueueState
from ..settings import Settings
from . import asyncfleet
from .access import API_KEYS_ENV, local_endpoint, write_api_keys
from .deployment import DeploymentSpec, LocalDeployment
from .interceptor import LocalInterceptor
from .keda import LocalKeda
from .modelcache import ModelCache
from .monitoring import LocalMonitoring
from .reported import observed_deployment, observed_pods, observed_route
from .router import Router, Upstream
from .source import Resources
from .versions import with_generation

log = logging.getLogger("berth.up")

Key = tuple[str, str]  # (namespace, name)
# Serving settings that belong to the pod, not to a local process.
NOT_LOCAL = frozenset({ENV["host"], ENV["port"], ENV["model_uri"], ENV["sha256"]})
TICK_SECONDS = 1.0
MIN_TICK_SECONDS = 0.05
# How often the status asks each MultiModel replica which models it holds (GET /models).
MODELS_POLL_SECONDS = 2.0


def local_settings(settings: Settings, port: int) -> Settings:
    """The user's settings, routed through the local router (a Gateway API HTTPRoute)."""
    routing = settings.routing.model_copy(
        update={"mode": "gateway", "public_url": f"http://127.0.0.1:{port}"}
    )
    return settings.model_copy(update={"routing": routing})


def container_env(deployment: Manifest) -> tuple[dict[str, str], list[str]]:
    """Literal env of the serving container, minus what only means something in a pod;
    and the names that could not be carried over (valueFrom)."""
    pod = deployment["spec"]["template"]["spec"]
    containers = pod.get("containers", [])
    server = next(
        (c for c in containers if c.get("name") == SERVER_CONTAINER), containers[0] if containers else {}
    )
    env: dict[str, str] = {}
    skipped: list[str] = []
    for var in server.get("env", []):
        if var["name"] in NOT_LOCAL:
            continue
        if "value" in var:
            env[var["name"]] = str(var["value"])
        else:
            skipped.append(var["name"])
    return env, skipped


def model_of(deployment: Manifest, models: Mapping[Key, Model]) -> Model:
    """The Model the Deployment's pods serve (by their model label)."""
    namespace = deployment["metadata"].get("namespace", "default")
    model_name = deployment["spec"]["template"]["metadata"].get("labels", {}).get(labels.MODEL)
    for (ns, name), model in models.items():
        if ns == namespace and labels.label_value(name) == model_name:
            return model
    raise ValueError(f"Deployment {deployment['metadata']['name']}: no Model {model_name} to fetch")


def model_source(deployment: Manifest, models: Mapping[Key, Model]) -> tuple[str, str | None]:
    """(modelUri, sha256) the Deployment's storage-initializer would fetch: the Model its pods name."""
    model = model_of(deployment, models)
    return model.spec.uri, model.spec.sha256


def pipeline_stages(model: Model) -> tuple[PipelineStage, ...]:
    """A pipeline Model's stages as its local fleet fetches them: each ONNX stage's URI (made
    absolute against its manifest when it was read) and sha256. Image stages never get here:
    local mode refuses such a Model when it reads it (source.py)."""
    return tuple(
        PipelineStage(
            name, model_uri=stage.model_uri, sha256=stage.sha256 or "", outputs=tuple(stage.outputs)
        )
        for name, stage in model.spec.stages
        if stage.model_uri is not None
    )


# What a MultiModel pod has that a local replica must not: its peers are the router's job here,
# and its pod IP (from the downward API) names it among peers it does not have.
NOT_LOCAL_MULTI_MODEL = frozenset({ENV["peers"], ENV["pod_ip"]})


def memory_limit_bytes(deployment: Manifest) -> int | None:
    """The serving container's memory limit in bytes, as the planner set it (the instance type's)."""
    from ..quantity import to_bytes

    pod = deployment["spec"]["template"]["spec"]
    server: Manifest = next((c for c in pod.get("containers", []) if c.get("name") == SERVER_CONTAINER), {})
    limit = ((server.get("resources") or {}).get("limits") or {}).get("memory")
    if limit is None:
        return None
    try:
        return int(to_bytes(limit))
    except ValueError:
        return None


def multi_model_env(
    env: Mapping[str, str], model: Model, deployment: Manifest, router_url: str = ""
) -> dict[str, str]:
    """A MultiModel replica's settings, with no peers, and its cache sized as in its pod:
    cacheBytes, else the share of the container's memory limit the runtime takes by default
    (a local process has no such limit, and that share of the machine for each of several
    replicas would be no limit at all). A rollout's warm-up source, the old variant's headless
    Service, becomes the router's view of that Service (`router_url`: the router's base URL)."""
    settings = model.spec.multi_model_settings
    cache_bytes = settings.cache_bytes
    if cache_bytes is None and env.get(ENV["cache_bytes"], "0") in ("", "0"):
        limit = memory_limit_bytes(deployment)
        cache_bytes = int(DEFAULT_CACHE_SHARE * limit) if limit else 0
    config = ServeConfig(
        model_uri=model.spec.uri,
        multi_model=True,
        cache_bytes=cache_bytes or 0,
        max_loaded_models=settings.max_loaded_models or 0,
    )
    ours = {k: v for k, v in config.to_env().items() if k not in NOT_LOCAL}
    warm_from = env.get(ENV["warm_from"])
    if warm_from and router_url:
        ours[ENV["warm_from"]] = local_warm_from(warm_from, router_url)
    return {**{k: v for k, v in env.items() if k not in NOT_LOCAL_MULTI_MODEL}, **ours}


def local_warm_from(url: str, router_url: str) -> str:
    """http://SERVICE.NAMESPACE.svc[.cluster.local]:PORT/models -> the router's GET /models of
    that Service's replicas (router.SERVICES_PATH); any other URL is kept as it is."""
    import urllib.parse

    from .router import SERVICES_PATH

    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").split(".")
    if parts.scheme != "http" or parts.path != "/models" or len(host) < 3 or host[2] != "svc":
        return url
    return f"{router_url.rstrip('/')}{SERVICES_PATH}{host[1]}/{host[0]}/models"


def saturation(env: Mapping[str, str]) -> int:
    """When the router counts a MultiModel replica saturated for a model (modelroute.ModelPool):
    two of the variant's full batches of requests for it in flight there."""
    try:
        batch = int(env.get(ENV["max_batch_size"], ""))
    except ValueError:
        batch = ServeConfig(model_uri="").max_batch_size
    return SATURATED_BATCHES * batch


def desired_replicas(
    deployment: Manifest,
    applied: Mapping[ObjectRef, Manifest],
    keda: LocalKeda | None = None,
    interceptor: LocalInterceptor | None = None,
) -> int:
    if "replicas" in deployment["spec"]:
        return int(deployment["spec"]["replicas"])
    name = deployment["metadata"]["name"]
    key = (deployment["metadata"].get("namespace", "default"), name)
    scaled = keda.replicas(key) if keda else None
    if scaled is not None:  # a ScaledObject on a Redis stream: the local KEDA keeps the count
        return scaled
    held = interceptor.replicas(key) if interceptor else None
    if held is not None:  # an HTTPScaledObject: the local interceptor keeps the count
        return held
    for obj in applied.values():  # autoscaled: an HPA owns the count; start at its minimum
        if obj["kind"] == "HorizontalPodAutoscaler" and obj["spec"]["scaleTargetRef"]["name"] == name:
            return int(obj["spec"].get("minReplicas", 1))
        if obj["kind"] == "ScaledObject" and obj["spec"]["scaleTargetRef"]["name"] == name:
            return int(obj["spec"].get("minReplicaCount", 1))
        if obj["kind"] == HTTP_SCALED_OBJECT_KIND and obj["spec"]["scaleTargetRef"]["name"] == name:
            return int((obj["spec"].get("replicas") or {}).get("min", 0))
    return 1


@dataclass
class EndpointState:
    endpoint: Endpoint
    status: EndpointStatus | None = None
    due: float | None = None  # loop time when the planner asked to be called again
    events: list[Event] = field(default_factory=list)
    error: str = ""  # the last reconcile failure, logged once


class Engine:
    def __init__(
        self,
        settings: Settings,
        cache: ModelCache,
        run_dir: Path,
        router: Router,
        echo: Callable[[str, str], None] | None = None,
        on_event: Callable[[Endpoint, Event], None] | None = None,
        redis_url: str | None = None,
        monitor_now: bool = False,
    ) -> None:
        from ..planner import plan_endpoint

        self._plan = plan_endpoint
        self.settings = settings
        self.cache = cache
        self.run_dir = run_dir
        self.router = router
        self.resources = Resources()
        self.endpoints: dict[Key, EndpointState] = {}
        self.applied: dict[ObjectRef, Manifest] = {}
        self.deployments: dict[Key, LocalDeployment] = {}
        self.wake = asyncio.Event()
        self._echo = echo
        self._on_event = on_event
        self._draining: set[asyncio.Task[None]] = set()
        self._warned_env: set[str] = set()
        self._base_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._scrape: aiohttp.ClientSession | None = None
        # A MultiModel replica's name -> the models it holds, as its GET /models last said.
        self.held_models: dict[str, list[dict[str, Any]]] = {}
        self._started = time.time()
        self.redis_url = redis_url
        self._redis: Any = None  # redis.asyncio.Redis, made on the loop
        self.keda: LocalKeda | None = LocalKeda(self._read_backlog, self._scaled) if redis_url else None
        self.interceptor = router.interceptor
        self.interceptor.on_scale = self._scaled
        # MonitoringSchedules: their CronJobs run here, planned against the Endpoints' statuses.
        self.monitoring = LocalMonitoring(
            settings, run_dir, self.served_endpoints, self._base_env, run_now=monitor_now
        )

    # ------------------------------------------------------------------ inputs

    def load(self, resources: Resources) -> None:
        """New manifests: keep each Endpoint's status; bump generation on a spec change.

        States are updated in place, so a reconcile in flight stores its status where the
        next one reads it."""
        states: dict[Key, EndpointState] = {}
        for key, endpoint in resources.endpoints.items():
            state = self.endpoints.get(key)
            versioned = with_generation(state.endpoint if state is not None else None, endpoint)
            if state is None or state.endpoint.spec.auth != endpoint.spec.auth:
                log.info("%s", local_endpoint(versioned)[1])
            if state is None:
                state = EndpointState(endpoint=versioned)
            state.endpoint = versioned
            states[key] = state
        self.resources = resources
        self.endpoints = states
        self.monitoring.load(resources.monitoring, resources.configs, resources.secrets)
        self.wake.set()

    def served_endpoints(self) -> dict[Key, Endpoint]:
        """Each Endpoint with its status as last planned (which config it serves)."""
        return {key: s.endpoint.model_copy(update={"status": s.status}) for key, s in self.endpoints.items()}

    def model_ever_ready(self, key: Key) -> bool:
        """Some replica of a fleet serving this Model was ready once (local mode may replace a
        Model that never was, see source.immutability_errors)."""
        namespace, name = key
        model = labels.label_value(name)
        return any(
            fleet.served and ns == namespace and fleet.spec.labels.get(labels.MODEL) == model
            for (ns, _), fleet in self.deployments.items()
        )

    # ------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        scalers = [
            asyncio.ensure_future(self.interceptor.run(stop)),
            asyncio.ensure_future(self._watch_models(stop)),
            asyncio.ensure_future(self.monitoring.run(stop)),
        ]
        if self.keda:
            scalers.append(asyncio.ensure_future(self.keda.run(stop)))
        try:
            await self._loop(loop, stop)
        finally:
            for scaler in scalers:
                scaler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scaler

    async def _loop(self, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.wake.clear()
            await self.reconcile_all()
            dues = [s.due for s in self.endpoints.values() if s.due is not None]
            timeout = TICK_SECONDS
            if dues:
                timeout = max(MIN_TICK_SECONDS, min(timeout, min(dues) - loop.time()))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wait_any(self.wake, stop), timeout=timeout)

    @staticmethod
    async def _wait_any(*events: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def reconcile_all(self) -> None:
        live = set(self.endpoints)
        for key, state in sorted(self.endpoints.items()):
            try:
                await self.reconcile(key, state)
            except Exception as exc:  # one endpoint's bug must not stop the others
                message = f"{key[0]}/{key[1]}: reconcile failed: {type(exc).__name__}: {exc}"
                if message != state.error:
                    log.exception("%s", message)
                state.error = message
        gone = {
            (ref.namespace, obj["metadata"].get("labels", {}).get(labels.ENDPOINT, ""))
            for ref, obj in self.applied.items()
        }
        for namespace, endpoint_label in gone:
            if not any(
                ns == namespace and labels.endpoint_label(name) == endpoint_label for ns, name in live
            ):
                self._delete_children(namespace, endpoint_label)

    async def reconcile(self, key: Key, state: EndpointState) -> None:
        namespace, name = key
        endpoint, _ = local_endpoint(state.endpoint.model_copy(update={"status": state.status}))
        children = self._children(namespace, labels.endpoint_label(name))
        configs = {n: c for (ns, n), c in self.resources.configs.items() if ns == namespace}
        queues, queue_error = await self._queues(endpoint, configs)
        observed = Observed(
            now=datetime.now(UTC),
            children=[self._observed(obj) for obj in children],
            pods=[pod for obj in children if obj["kind"] == "Deployment" for pod in self._pods(obj)],
            metrics=await self._metrics(namespace, name, state.status, configs),
            queues=queues,
            queue_error=queue_error,
        )
        plan = self._plan(
            PlanInput(
                endpoint=endpoint,
                configs=configs,
                models={n: m for (ns, n), m in self.resources.models.items() if ns == namespace},
                settings=self.settings,
                observed=observed,
            )
        )
        for obj in plan.objects:
            self.applied[ObjectRef.of(obj)] = obj
        deleted = [self.applied.pop(ref) for ref in plan.delete if ref in self.applied]
        self._sync_async()
        self._sync_serverless()
        self._sync_fleets()
        self._sync_routes()
        for obj in deleted:
            if obj["kind"] == "Deployment":
                self._stop_fleet((namespace, obj["metadata"]["name"]))
        state.status = plan.status
        loop = asyncio.get_running_loop()
        state.due = loop.time() + plan.requeue_after if plan.requeue_after is not None else None
        for event in plan.events:
            state.events = [*state.events[-19:], event]
            if self._on_event is not None:
                self._on_event(endpoint, event)

    # ------------------------------------------------------------------ observation

    def _children(self, namespace: str, endpoint_label: str) -> list[Manifest]:
        return [
            obj
            for ref, obj in sorted(self.applied.items())
            if ref.namespace == namespace
            and obj["metadata"].get("labels", {}).get(labels.ENDPOINT) == endpoint_label
        ]

    def _observed(self, obj: Manifest) -> Manifest:
        if obj["kind"] == "Deployment":
            fleet = self.deployments.get(
                (obj["metadata"].get("namespace", "default"), obj["metadata"]["name"])
            )
            if fleet is not None:
                return observed_deployment(obj, fleet)
        if obj["kind"] == "HTTPRoute":
            return observed_route(obj, self._started)
        return obj

    def _pods(self, deployment: Manifest) -> list[Manifest]:
        fleet = self.deployments.get(
            (deployment["metadata"].get("namespace", "default"), deployment["metadata"]["name"])
        )
        return observed_pods(fleet) if fleet is not None else []

    async def _metrics(
        self, namespace: str, name: str, status: EndpointStatus | None, configs: Mapping[str, EndpointConfig]
    ) -> dict[str, FleetMetrics]:
        """The metrics the planner asked for (the new fleet's during a bake, the serving fleet's
        while it captures), from the replicas' own /metrics, reduced as the operator reduces its pods'."""
        found: dict[str, FleetMetrics] = {}
        endpoint_label = labels.endpoint_label(name)
        for target in fleets_to_scrape(status, configs):
            config_label = labels.label_value(target)
            upstreams = [
                replica.upstream
                for (ns, _), fleet in self.deployments.items()
                if ns == namespace
                and fleet.spec.labels.get(labels.ENDPOINT) == endpoint_label
                and fleet.spec.labels.get(labels.ENDPOINT_CONFIG) == config_label
                for replica in fleet.routable()
                if replica.upstream is not None
            ]
            found[target] = await self.scrape([u.base_url + "/metrics" for u in upstreams])
        return found

    async def scrape(self, urls: list[str]) -> FleetMetrics:
        """The Prometheus text at each URL (those that answer), reduced to a fleet's health."""
        texts = await self._texts(urls)
        return from_texts(text for text in texts if text)

    async def _watch_models(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.poll_models()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), MODELS_POLL_SECONDS)

    async def poll_models(self) -> None:
        """Which models each ready MultiModel replica holds, for the status (not for routing:
        the router's choice depends on the ready replicas alone)."""
        replicas = [
            (replica.name, replica.upstream.base_url + "/models")
            for fleet in self.deployments.values()
            if fleet.spec.multi_model
            for replica in fleet.routable()
            if replica.upstream is not None
        ]
        if not replicas and not self.held_models:
            return
        texts = await self._texts([url for _, url in replicas])
        held: dict[str, list[dict[str, Any]]] = {}
        for (name, _), text in zip(replicas, texts, strict=True):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                held[name] = [
                    {"key": str(m["key"]), "bytes": int(m.get("bytes", 0))}
                    for m in orjson.loads(text).get("models", [])
                    if isinstance(m, dict) and m.get("key")
                ]
        self.held_models = held

    async def _texts(self, urls: list[str]) -> list[str]:
        if self._scrape is None:
            self._scrape = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        return list(await asyncio.gather(*(self._fetch_text(url) for url in urls)))

    async def _fetch_text(self, url: str) -> str:
        assert self._scrape is not None
        try:
            async with self._scrape.get(url) as response:
                return await response.text() if response.status == 200 else ""
        except (TimeoutError, aiohttp.ClientError, OSError):
            return ""

    # ------------------------------------------------------------------ carrying out

    def _sync_fleets(self) -> None:
        for ref, obj in self.applied.items():
            if ref.kind != "Deployment":
                continue
            namespace, name = ref.namespace, ref.name
            spec = self._fleet_spec(obj)
            if spec is None:
                continue
            fleet = self.deployments.get((namespace, name))
            if fleet is None:
                fleet = LocalDeployment(
                    spec, self.cache, self.run_dir, self._base_env, self.changed, self._echo
                )
                self.deployments[(namespace, name)] = fleet
                fleet.start()
            else:
                fleet.update(spec)

    def _fleet_spec(self, deployment: Manifest) -> DeploymentSpec | None:
        meta = deployment["metadata"]
        namespace = meta.get("namespace", "default")
        pod_spec = deployment["spec"]["template"]["spec"]
        uri: str | None = None
        sha256: str | None = None
        args: tuple[str, ...] = ()
        model: Model | None = None
        stages: tuple[PipelineStage, ...] = ()
        if asyncfleet.serves_model(pod_spec):
            try:
                model = model_of(deployment, self.resources.models)
            except ValueError as exc:
                log.error("%s", exc)
                return None
            uri, sha256 = model.spec.model_uri, model.spec.sha256
            stages = pipeline_stages(model)
        else:  # a pod of one `berth` command (the async front door)
            found = asyncfleet.process_args(pod_spec, self.run_dir, namespace)
            if isinstance(found, str):
                self._warn_once(f"Deployment {namespace}/{meta['name']}: {found}")
                return None
            args = found
        multi_model = model is not None and model.spec.is_multi_model
        sidecars, warnings = asyncfleet.sidecars(pod_spec, self.resources.secrets, self.run_dir, namespace)
        for warning in warnings:
            self._warn_once(f"Deployment {namespace}/{meta['name']}: {warning}")
        env, skipped = container_env(deployment)
        if multi_model:
            assert model is not None
            env = multi_model_env(env, model, deployment, str(self.settings.routing.public_url or ""))
            skipped = [var for var in skipped if var not in NOT_LOCAL_MULTI_MODEL]
        if args:  # the front door: its Secrets and fieldRefs too, as its worker sidecars get them
            resolved, pod_name, skipped = asyncfleet.resolve_env(
                asyncfleet.main_container(pod_spec), self.resources.secrets, namespace
            )
            env = {k: v for k, v in resolved.items() if k not in NOT_LOCAL}
            env.update({var: meta["name"] for var in pod_name})
        if API_KEYS_ENV in env:
            keys = write_api_keys(deployment, self.resources.secrets, self.run_dir)
            if isinstance(keys, str):
                log.error("%s", keys)
                return None
            env[API_KEYS_ENV] = str(keys)
        for var in skipped:
            if var not in self._warned_env:
                self._warned_env.add(var)
                log.warning("env %s uses valueFrom: not available in local mode, left out", var)
        pod = deployment["spec"]["template"]
        return DeploymentSpec(
            namespace=meta.get("namespace", "default"),
            name=meta["name"],
            labels=dict(pod["metadata"].get("labels", {})),
            replicas=desired_replicas(deployment, self.applied, self.keda, self.interceptor),
            model_uri=uri,
            sha256=sha256,
            env=env,
            grace_seconds=float(pod["spec"].get("terminationGracePeriodSeconds", 30)),
            args=args,
            sidecars=sidecars,
            multi_model=multi_model,
            pipeline=stages,
        )

    def _warn_once(self, message: str) -> None:
        if message not in self._warned_env:
            self._warned_env.add(message)
            log.warning("%s", message)

    # ------------------------------------------------------------------ async inference

    def _sync_async(self) -> None:
        """ConfigMaps to files (the front door's routes), ScaledObjects to the local KEDA."""
        asyncfleet.write_config_maps(
            [o for o in self.applied.values() if o["kind"] == "ConfigMap"], self.run_dir
        )
        if self.keda is not None:
            self.keda.set_objects([o for o in self.applied.values() if o["kind"] == "ScaledObject"])

    async def _queues(
        self, endpoint: Endpoint, configs: Mapping[str, Any]
    ) -> tuple[dict[str, QueueState], str | None]:
        """The async variants' streams as the operator reads them before it plans."""
        from ..planner.asyncinf import streams_to_observe

        streams = streams_to_observe(endpoint, configs)
        if not streams:
            return {}, None
        if self.redis_url is None:
            return {}, "berth up has no queue"
        from berth_serving.asyncinf.queue import read_counts

        now = time.time()
        try:
            backlogs = await asyncio.gather(*(self._read_backlog(s, now) for s in streams))
            counts = await asyncio.gather(*(read_counts(self._client(), s) for s in streams))
        except Exception as exc:  # Redis away: a condition of the Endpoint, not a crash
            return {}, f"cannot read the queue: {type(exc).__name__}: {exc}"
        return {
            stream: QueueState(
                size=backlog.size,
                pending=backlog.pending,
                oldest_age_seconds=backlog.oldest_age_seconds,
                counts=count,
            )
            for stream, backlog, count in zip(streams, backlogs, counts, strict=True)
        }, None

    def _client(self) -> Any:
        if self._redis is None:
            import redis.asyncio as aioredis

            self._redis = aioredis.Redis.from_url(
                self.redis_url or "", socket_timeout=2, socket_connect_timeout=2
            )
        return self._redis

    async def _read_backlog(self, stream: str, now: float) -> Any:
        from berth_serving.asyncinf.queue import read_backlog

        return await read_backlog(self._client(), stream, now)

    def _scaled(self) -> None:
        """The local KEDA (or its HTTP add-on) changed a replica count: carry it out now."""
        self._sync_fleets()
        self.wake.set()

    # ------------------------------------------------------------------ serverless

    def _sync_serverless(self) -> None:
        """HTTPScaledObjects to the router's interceptor (before the fleets: it keeps their count)."""
        self.router.set_scaled_objects(
            [o for o in self.applied.values() if o["kind"] == HTTP_SCALED_OBJECT_KIND]
        )

    def _note_serverless(self) -> None:
        """The fleets' side of the cold starts in progress (when each phase ended), and why a
        serverless fleet has no ready replica (said in the 503 of a request that waited)."""
        for key, cold in self.interceptor.cold_starts():
            fleet = self.deployments.get(key)
            if fleet is None:
                continue
            if cold.scheduled_at is None and fleet.woke_at is not None and fleet.spec.replicas > 0:
                cold.scheduled_at = fleet.woke_at
            if cold.fetched_at is None and fleet.fetched_at is not None and fleet.fetch_state == "Fetched":
                cold.fetched_at = fleet.fetched_at
            ready = [r.ready_at for r in fleet.routable() if r.ready_at is not None]
            if cold.loaded_at is None and ready:
                cold.loaded_at = min(ready)
        for gate in self.interceptor.gates.values():
            fleet = self.deployments.get(gate.target.key)
            gate.reason = fleet.unready_reason() if fleet is not None and gate.ready == 0 else ""

    def _note_cold_starts(self) -> None:
        self._note_serverless()
        if self.keda is None or not self.keda.cold_starts:
            return
        for key in list(self.keda.cold_starts):
            fleet = self.deployments.get(key)
            if fleet is not None:
                self.keda.ready(key, len(fleet.routable()))

    def _stop_fleet(self, key: Key) -> None:
        fleet = self.deployments.pop(key, None)
        if fleet is None:
            return
        self._sync_pools()  # off the route before anything is stopped
        task = asyncio.get_running_loop().create_task(fleet.stop())
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    def _delete_children(self, namespace: str, endpoint_label: str) -> None:
        doomed = [
            k
            for k, obj in self.applied.items()
            if k.namespace == namespace
            and obj["metadata"].get("labels", {}).get(labels.ENDPOINT) == endpoint_label
        ]
        for key in doomed:
            obj = self.applied.pop(key)
            if obj["kind"] == "Deployment":
                self._stop_fleet((namespace, obj["metadata"]["name"]))
        self._sync_routes()

    def _sync_routes(self) -> None:
        self.router.set_routes([obj for obj in self.applied.values() if obj["kind"] == "HTTPRoute"])
        self._sync_pools()

    def _sync_pools(self) -> None:
        pools: dict[Key, list[Upstream]] = {}
        multi_model: dict[Key, int] = {}  # a MultiModel variant's Service -> its saturation
        for ref, obj in self.applied.items():
            if ref.kind != "Service":
                continue
            namespace, name = ref.namespace, ref.name
            selector = obj["spec"].get("selector", {})
            fleets = [
                fleet
                for (ns, _), fleet in sorted(self.deployments.items())
                if ns == namespace and selector and labels.selects(selector, fleet.spec.labels)
            ]
            pools[(namespace, name)] = [
                replica.upstream
                for fleet in fleets
                for replica in fleet.routable()
                if replica.upstream is not None
            ]
            if any(fleet.spec.multi_model for fleet in fleets):
                multi_model[(namespace, name)] = min(
                    saturation(fleet.spec.env) for fleet in fleets if fleet.spec.multi_model
                )
        self.router.set_pools(pools, multi_model)

    def changed(self) -> None:
        """A replica or fleet changed state: route at once, plan soon."""
        self._sync_pools()
        self._note_cold_starts()
        self.wake.set()

    async def shutdown(self) -> None:
        """Stop every fleet (each drains first) and wait for them all."""
        fleets = list(self.deployments.values())
        self.deployments.clear()
        self._sync_pools()
        await asyncio.gather(
            *(f.stop() for f in fleets), *self._draining, self.monitoring.shutdown(), return_exceptions=True
        )
        if self._scrape is not None:
            await self._scrape.close()
        if self._redis is not None:
            await self._redis.aclose()

    # ------------------------------------------------------------------ reporting

    def snapshot(self) -> dict[str, Any]:
        """Everything the status table and /_berth/status show."""
        endpoints = []
        serverless = self.interceptor.snapshot()
        for (namespace, name), state in sorted(self.endpoints.items()):
            status = state.status.to_wire() if state.status else {}
            label = labels.endpoint_label(name)
            replicas = []
            for (ns, deployment), fleet in sorted(self.deployments.items()):
                if ns != namespace or fleet.spec.labels.get(labels.ENDPOINT) != label:
                    continue
                for replica in fleet.replicas:
                    held = (
                        {"models": self.held_models.get(replica.name, [])} if fleet.spec.multi_model else {}
                    )
                    replicas.append(
                        {
                            **held,
                            "name": replica.name,
                            "deployment": deployment,
                            "variant": fleet.spec.labels.get(labels.VARIANT, ""),
                            "config": fleet.spec.labels.get(labels.ENDPOINT_CONFIG, ""),
                            "state": replica.state,
                            "ready": replica.ready,
                            "restarts": replica.restarts,
                            "lastError": replica.last_error,
                            "pid": replica.pid,
                            "port": replica.upstream.port if replica.upstream else None,
                        }
                    )
                if fleet.fetch_state == "Failed":
                    replicas.append(
                        {
                            "name": f"{deployment} (fetch)",
                            "deployment": deployment,
                            "state": "FetchFailed",
                            "lastError": fleet.fetch_error,
                        }
                    )
            multi_model = [
                {
                    "deployment": deployment,
                    "config": fleet.spec.labels.get(labels.ENDPOINT_CONFIG, ""),
                    "variant": fleet.spec.labels.get(labels.VARIANT, ""),
                    "prefix": fleet.spec.model_uri,
                }
                for (ns, deployment), fleet in sorted(self.deployments.items())
                if ns == namespace
                and fleet.spec.labels.get(labels.ENDPOINT) == label
                and fleet.spec.multi_model
            ]
            endpoints.append(
                {
                    "namespace": namespace,
                    "name": name,
                    "status": status,
                    "replicas": replicas,
                    "multiModel": multi_model,
                    "serverless": [
                        item
                        for item in serverless
                        if item["namespace"] == namespace and item["endpoint"] == label
                    ],
                    "events": [
                        {"type": e.type, "reason": e.reason, "message": e.message} for e in state.events
                    ],
                }
            )
        return {
            "endpoints": endpoints,
            "router": {
                "mirrorsSent": self.router.mirrors_sent,
                "mirrorsDropped": self.router.mirrors_dropped,
            },
            "runDir": str(self.run_dir),
            "async": self._async_snapshot(),
            "monitoring": self.monitoring.snapshot(),
        }

    def _async_snapshot(self) -> dict[str, Any]:
        if self.keda is None:
            return {}
        return {
            "redisUrl": self.redis_url,
            "queueError": self.keda.error,
            "scaledObjects": [
                {
                    "namespace": namespace,
                    "deployment": deployment,
                    "replicas": self.keda.replicas((namespace, deployment)),
                    "backlog": {
                        stream: dataclasses.asdict(self.keda.backlogs[stream])
                        for stream in item.streams
                        if stream in self.keda.backlogs
                    },
                    "lastColdStartSeconds": self.keda.cold_start_seconds.get((namespace, deployment)),
                }
                for (namespace, deployment), item in sorted(self.keda.scaled.items())
            ],
        }

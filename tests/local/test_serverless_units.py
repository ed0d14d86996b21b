"""Local mode's KEDA HTTP add-on, piece by piece: reading HTTPScaledObjects, admission, scaling,
cold-start phases, routes through the interceptor, the status table; then the router in front
of a recording replica, holding and releasing real HTTP requests."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import uvloop
from berth_operator.api import Endpoint, ServerlessConfig
from berth_operator.local import display
from berth_operator.local.interceptor import (
    ColdStart,
    Gate,
    HttpTarget,
    LocalInterceptor,
    admit,
    next_replicas,
)
from berth_operator.local.router import QuietServer, Router, Upstream
from berth_operator.local.routetable import compile_routes, pick_backend, select_rule
from berth_operator.planner.serverless import http_scaled_object, interceptor_backend_ref
from berth_operator.settings import Settings

from .router_support import PREFIX, ROUTE, RecordingReplica
from .support import free_port

OBJECT = "ep-ep-v1-main"
HEADER = f"default/{OBJECT}"


def scaled_object(
    minimum: int = 0,
    maximum: int = 4,
    per_replica: int = 2,
    scaledown: int = 10,
    max_concurrency: int = 8,
    max_held: int = 5,
    timeout: int = 3,
) -> dict[str, Any]:
    """Written by hand after the contract (planner/serverless.py writes the same shape)."""
    return {
        "apiVersion": "http.keda.sh/v1alpha1",
        "kind": "HTTPScaledObject",
        "metadata": {
            "name": OBJECT,
            "namespace": "default",
            "labels": {
                "berth.dev/endpoint": "ep",
                "berth.dev/endpoint-config": "ep-v1",
                "berth.dev/variant": "main",
            },
            "annotations": {
                "berth.dev/max-concurrency": str(max_concurrency),
                "berth.dev/max-held-requests": str(max_held),
                "berth.dev/cold-start-timeout-seconds": str(timeout),
            },
        },
        "spec": {
            "hosts": ["*"],
            "pathPrefixes": ["/"],
            "headers": [{"name": "X-Berth-Serverless-Target", "value": HEADER}],
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": OBJECT,
                "service": OBJECT,
                "port": 8080,
            },
            "replicas": {"min": minimum, "max": maximum},
            "scaledownPeriod": scaledown,
            "scalingMetric": {"concurrency": {"targetValue": per_replica}},
            "timeouts": {"conditionWait": f"{timeout}s"},
        },
    }


def route(backend_refs: list[dict[str, Any]]) -> dict[str, Any]:
    """router_support's one-rule route, with these backendRefs."""
    found = copy.deepcopy(ROUTE)
    found["spec"]["rules"][0]["backendRefs"] = backend_refs
    return found


INTERCEPTED = {
    "kind": "Service",
    "name": "some-interceptor",  # whatever settings name: local mode keys on the header
    "namespace": "elsewhere",
    "port": 8080,
    "weight": 100,
    "filters": [
        {
            "type": "RequestHeaderModifier",
            "requestHeaderModifier": {"set": [{"name": "X-Berth-Serverless-Target", "value": HEADER}]},
        }
    ],
}


# --------------------------------------------------------------------------- reading


def test_the_target_is_read_from_the_annotations_and_the_spec() -> None:
    target = HttpTarget.from_manifest(scaled_object(minimum=1, maximum=3, max_concurrency=6, max_held=7))
    assert target is not None
    assert target.key == ("default", OBJECT) and target.service_key == ("default", OBJECT)
    assert target.header == HEADER
    assert (target.min_replicas, target.max_replicas, target.per_replica) == (1, 3, 2)
    assert (target.max_concurrency, target.max_held, target.cold_start_timeout) == (6, 7, 3)
    assert target.scaledown_seconds == 10
    assert target.labels["berth.dev/variant"] == "main"


def test_the_planners_own_object_reads_as_its_config_says() -> None:
    endpoint = Endpoint.model_validate(
        {"apiVersion": "berth.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": "ep"},
         "spec": {"endpointConfigName": "ep-v1"}}
    )  # fmt: skip
    config = ServerlessConfig.model_validate(
        {"memorySizeInMB": 2048, "maxConcurrency": 9, "idleSeconds": 42, "coldStartTimeoutSeconds": 17,
         "maxHeldRequests": 33}
    )  # fmt: skip
    target = HttpTarget.from_manifest(http_scaled_object(endpoint, OBJECT, config, 0, {}))
    assert target is not None
    assert (target.max_concurrency, target.max_held, target.cold_start_timeout) == (9, 33, 17)
    assert (target.min_replicas, target.scaledown_seconds, target.header) == (0, 42, HEADER)
    assert target.per_replica * target.max_replicas >= 9  # max replicas take maxConcurrency


def test_an_object_without_the_target_header_is_not_read() -> None:
    obj = scaled_object()
    obj["spec"]["headers"] = []
    assert HttpTarget.from_manifest(obj) is None
    obj = scaled_object()
    obj["kind"] = "ScaledObject"
    assert HttpTarget.from_manifest(obj) is None


# --------------------------------------------------------------------------- decisions


def target(**kwargs: Any) -> HttpTarget:
    found = HttpTarget.from_manifest(scaled_object(**kwargs))
    assert found is not None
    return found


def test_admission_goes_holds_or_refuses() -> None:
    t = target(max_concurrency=2, max_held=3)
    assert admit(t, ready=0, in_flight=0, held=0) == "hold"  # at zero: held for the cold start
    assert admit(t, ready=1, in_flight=1, held=0) == "go"
    assert admit(t, ready=1, in_flight=2, held=0) == "hold"  # maxConcurrency in flight
    assert admit(t, ready=1, in_flight=0, held=1) == "hold"  # first come, first served
    assert admit(t, ready=1, in_flight=2, held=3) == "full"  # 429
    assert admit(target(max_held=0), ready=0, in_flight=0, held=0) == "full"


def test_scaling_follows_concurrency_and_falls_to_min_after_the_idle_period() -> None:
    t = target(minimum=0, maximum=4, per_replica=2, scaledown=10)
    history: deque[tuple[float, int]] = deque()
    assert next_replicas(t, history, peak=0, now=0.0) == 0
    assert next_replicas(t, history, peak=1, now=1.0) == 1  # a held request at zero: one starts
    assert next_replicas(t, history, peak=5, now=2.0) == 3  # ceil(5 / 2)
    assert next_replicas(t, history, peak=50, now=3.0) == 4  # clamped to max
    assert next_replicas(t, history, peak=1, now=12.0) == 4  # the peak of the last 10 s holds
    assert next_replicas(t, history, peak=0, now=13.5) == 1  # 3.0 left the window; 12.0 is in
    assert next_replicas(t, history, peak=0, now=22.5) == 0  # no request for scaledownPeriod
    warm = target(minimum=2, maximum=4)
    assert next_replicas(warm, deque(), peak=0, now=0.0) == 2  # provisioned stays
    assert next_replicas(warm, deque(), peak=9, now=0.0) == 4


def test_cold_start_phases_add_up_to_the_total_whatever_was_seen() -> None:
    cold = ColdStart(held_at=10.0, scheduled_at=10.1, fetched_at=10.3, loaded_at=11.5, answered_at=11.6)
    phases = cold.phases()
    assert list(phases) == ["scheduled", "modelFetched", "modelLoaded", "firstAnswer"]
    assert phases["modelLoaded"] == pytest.approx(1.2)
    assert sum(phases.values()) == pytest.approx(cold.total()) == pytest.approx(1.6)
    # The fleet was already starting (it woke before the request): those phases are 0, none < 0.
    early = ColdStart(held_at=10.0, scheduled_at=9.0, fetched_at=None, loaded_at=10.5, answered_at=10.6)
    assert early.phases()["scheduled"] == 0 and min(early.phases().values()) >= 0
    assert early.total() == pytest.approx(0.6)


# --------------------------------------------------------------------------- routes


def test_a_backend_through_the_interceptor_reaches_the_scaled_objects_service() -> None:
    plain = {"name": "other", "port": 8080, "weight": 0}
    table = compile_routes([route([INTERCEPTED, plain])], {HEADER: ("default", OBJECT)})
    rule = select_rule(table.prefixes[PREFIX], {})
    assert rule is not None
    through, direct = rule.backends
    assert through.key == ("default", OBJECT) and through.target == HEADER
    assert direct.key == ("default", "other") and direct.target is None
    # Unknown header: still marked, keyed by the interceptor's Service (no pool: 503 as unready).
    unknown = compile_routes([route([INTERCEPTED])]).prefixes[PREFIX][0].backends[0]
    assert unknown.key == ("elsewhere", "some-interceptor") and unknown.target == HEADER


def test_the_planners_backend_ref_is_recognised() -> None:
    ref = interceptor_backend_ref("default", OBJECT, 7, Settings())
    backend = compile_routes([route([ref])], {HEADER: ("default", OBJECT)}).prefixes[PREFIX][0].backends[0]
    assert backend.key == ("default", OBJECT) and backend.weight == 7 and backend.target == HEADER


def test_a_serverless_target_at_zero_can_still_be_chosen() -> None:
    router = Router(seed=1)
    router.set_scaled_objects([scaled_object()])
    router.set_routes([route([INTERCEPTED])])
    router.set_pools({})
    backend = pick_backend(router.table.prefixes[PREFIX][0].backends, router.available, router._rng)
    assert backend is not None and backend.target == HEADER


# --------------------------------------------------------------------------- the gate


def test_the_gate_holds_at_zero_and_releases_in_order_when_a_replica_is_ready() -> None:
    async def scenario() -> None:
        demands: list[int] = []
        gate = Gate(target(max_concurrency=1, max_held=2, timeout=5), lambda g: demands.append(g.held))
        first = asyncio.ensure_future(gate.enter())
        second = asyncio.ensure_future(gate.enter())
        await asyncio.sleep(0)
        assert gate.held == 2 and demands  # the scaler was told at once
        assert (await gate.enter()).outcome == "full"
        assert gate.refused == 1 and gate.cold is not None
        gate.set_ready(1)
        admitted = await first
        assert admitted.outcome == "go" and admitted.cold_ms is not None
        assert not second.done() and gate.in_flight == 1  # maxConcurrency 1
        assert gate.answered(admitted.cold_ms) is not None and gate.cold_starts == 1
        gate.exit()
        assert (await second).outcome == "go" and gate.in_flight == 1
        gate.exit()
        assert gate.in_flight == 0 and gate.held == 0

    asyncio.run(scenario())


def test_a_held_request_times_out_and_a_leaving_client_frees_its_place() -> None:
    async def scenario() -> None:
        gate = Gate(target(max_held=1, timeout=1), lambda g: None)
        gate.reason = "replica x CrashLoopBackOff: model load failed: bad file"
        started = time.monotonic()
        timed_out = await gate.enter()
        assert timed_out.outcome == "timeout" and time.monotonic() - started >= 0.9
        assert "model load failed" in gate.last_error and gate.timed_out == 1 and gate.held == 0
        assert gate.cold is None  # that cold start failed; the next is timed from its own start
        left = asyncio.Event()

        async def disconnected() -> None:
            await left.wait()

        leaving = asyncio.ensure_future(gate.enter(disconnected))
        await asyncio.sleep(0)
        assert gate.held == 1
        left.set()
        assert (await leaving).outcome == "gone" and gate.held == 0

    asyncio.run(scenario())


def test_the_interceptor_scales_up_at_once_for_a_held_request() -> None:
    async def scenario() -> None:
        interceptor = LocalInterceptor()
        scaled = asyncio.Event()
        interceptor.on_scale = scaled.set
        interceptor.set_objects([scaled_object(minimum=0, timeout=5)])
        key = ("default", OBJECT)
        assert interceptor.replicas(key) == 0
        held = asyncio.ensure_future(interceptor.gates[HEADER].enter())
        await asyncio.wait_for(scaled.wait(), 1)  # no poll: decided on the next loop turn
        assert interceptor.replicas(key) == 1
        interceptor.set_ready({key: 1})
        assert (await held).outcome == "go"
        # A raised floor (provisioned, or a rollout proving its fleet) applies at once.
        interceptor.set_objects([scaled_object(minimum=2, timeout=5)])
        assert interceptor.replicas(key) == 2
        interceptor.set_objects([])
        assert interceptor.replicas(key) is None and not interceptor.gates

    asyncio.run(scenario())


# --------------------------------------------------------------------------- the status table


def test_the_table_shows_an_idle_serverless_variant_and_its_last_cold_start() -> None:
    status = {
        "phase": "InService",
        "endpointConfigName": "ep-v1",
        "productionVariants": [
            {"variantName": "main", "currentWeight": 1, "readyInstanceCount": 0, "desiredInstanceCount": 0}
        ],
    }
    item = {
        "deployment": OBJECT, "config": "ep-v1", "variant": "main", "held": 0, "coldStarting": False,
        "coldStarts": 2, "lastError": "",
        "lastColdStart": {"totalSeconds": 1.5, "phases": {"scheduled": 0.01, "modelFetched": 0.02,
                                                          "modelLoaded": 1.4, "firstAnswer": 0.07}},
    }  # fmt: skip
    snapshot = {"endpoints": [{"namespace": "default", "name": "ep", "status": status, "serverless": [item]}]}
    assert "main 100% 0/0 (idle)" in display.table(snapshot)
    details = display.details(snapshot)
    assert "last cold start 1.50 s (scheduled 0.01 s, model fetched 0.02 s, model loaded 1.40 s" in details
    assert "first answer 0.07 s), 2 cold starts" in details
    assert any("cold start 1.50 s" in line for line in display.summary_lines(snapshot).values())
    # Not serverless: 0/0 is just 0/0.
    assert "(idle)" not in display.table(
        {"endpoints": [{"namespace": "default", "name": "ep", "status": status}]}
    )


# --------------------------------------------------------------------------- the router, for real


class HeldRouter:
    """The router on its own loop in a thread, one serverless target, no replica until told."""

    def __init__(self, replica_port: int, **kwargs: Any) -> None:
        self.replica_port = replica_port
        self.port = free_port()
        self.router = Router()
        self.router.set_scaled_objects([scaled_object(**kwargs)])
        self.router.set_routes([route([INTERCEPTED])])
        self.server = QuietServer(self.router, "127.0.0.1", self.port)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: uvloop.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve()

    def __enter__(self) -> HeldRouter:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.server.started
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        self._thread.join(10)

    def on_loop(self, fn: Any) -> None:
        assert self.loop is not None
        done = threading.Event()

        def run() -> None:
            fn()
            done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(5)

    def replica_ready(self) -> None:
        upstream = Upstream("127.0.0.1", self.replica_port, "r0")
        self.on_loop(lambda: self.router.set_pools({("default", OBJECT): [upstream]}))

    def held(self) -> int:
        return self.router.interceptor.gates[HEADER].held


@pytest.fixture
def replica() -> Iterator[RecordingReplica]:
    recording = RecordingReplica().start()
    yield recording
    recording.stop()


def wait_for(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.timeout(60)
def test_requests_at_zero_are_held_then_answered_with_the_cold_start_time(replica: RecordingReplica) -> None:
    with HeldRouter(replica.port, max_held=3, timeout=20) as held:
        url = f"http://127.0.0.1:{held.port}{PREFIX}/invocations"
        with ThreadPoolExecutor(5) as pool:
            answers = [pool.submit(httpx.post, url, content=b"x", timeout=30) for _ in range(5)]
            wait_for(lambda: held.held() == 3 and held.router.interceptor.gates[HEADER].refused == 2)
            assert (held.router.interceptor.replicas(("default", OBJECT)) or 0) >= 1  # asked at once
            assert not any(a.done() and a.result().status_code == 200 for a in answers)  # all held
            held.replica_ready()
            results = [a.result() for a in answers]
        codes = sorted(r.status_code for r in results)
        assert codes == [200, 200, 200, 429, 429], codes
        for r in results:
            if r.status_code == 429:
                assert r.headers["retry-after"] == "1" and r.json()["error"]["code"] == 429
            else:
                assert int(r.headers["x-berth-cold-start"]) >= 0
        assert len(replica.requests) == 3
        # The header the route set reached the replica, as the interceptor passes it on.
        assert (b"x-berth-serverless-target", HEADER.encode()) in replica.requests[0].headers
        warm = httpx.post(url, content=b"x")
        assert warm.status_code == 200 and "x-berth-cold-start" not in warm.headers


@pytest.mark.timeout(60)
def test_a_request_held_past_the_timeout_gets_a_503_with_retry_after(replica: RecordingReplica) -> None:
    with HeldRouter(replica.port, timeout=1) as held:
        answer = httpx.post(f"http://127.0.0.1:{held.port}{PREFIX}/invocations", content=b"x", timeout=30)
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
        assert "coldStartTimeoutSeconds" in answer.json()["error"]["message"]
        assert held.held() == 0 and replica.requests == []

"""Model-affinity routing of `berth up` for a MultiModel variant: which model a request names
(modelroute.request_target), which replica it goes to (ModelPool), and the router carrying
it out over HTTP in front of small replicas that say who answered and can refuse or hold."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from berth_operator.api import Endpoint, EndpointConfig, Model
from berth_operator.local import display
from berth_operator.local.engine import (
    container_env,
    local_settings,
    local_warm_from,
    memory_limit_bytes,
    multi_model_env,
    saturation,
)
from berth_operator.local.modelroute import ModelPool, request_target
from berth_operator.local.replica import ReplicaSpec
from berth_operator.local.router import Upstream
from berth_operator.local.source import load_resources
from berth_operator.planner import Observed, PlanInput, plan_endpoint
from berth_operator.settings import Settings
from berth_serving.config import ENV, ServeConfig
from berth_serving.multimodel import rendezvous

from .router_support import PREFIX, RouterServer
from .support import config as local_config
from .support import endpoint as local_endpoint
from .support import model as local_model
from .support import variant as local_variant
from .support import write_yaml

pytestmark = pytest.mark.timeout(60)
SERVICE = ("default", "ep-v")


# ---------------------------------------------------------------------- which model


@pytest.mark.parametrize(
    ("target", "headers", "key"),
    [
        (b"/invocations", [(b"x-berth-target-model", b"customer-17.tar.gz")], "customer-17"),
        (b"/invocations", [(b"x-amzn-sagemaker-target-model", b"eu/fraud.onnx")], "eu/fraud"),
        (b"/invocations?x=1", [(b"x-berth-target-model", b"plain")], "plain"),
        (b"/v2/models/customer-17/infer", [], "customer-17"),
        (b"/v2/models/customer-17", [], "customer-17"),
        (b"/v2/models/customer-17/ready", [], "customer-17"),
        (b"/v2/models/eu/fraud/infer", [], "eu/fraud"),
        (b"/v2/models/eu%2Ffraud/versions/2/infer", [], "eu/fraud"),
        (b"/v2/repository/models/m-3/load", [], "m-3"),
        (b"/v2/repository/models/m-3/unload", [], "m-3"),
        # The path names the model of a v2 request, whatever a header says.
        (b"/v2/models/a/infer", [(b"x-berth-target-model", b"b.onnx")], "a"),
    ],
)
def test_the_model_a_request_names(target: bytes, headers: list[tuple[bytes, bytes]], key: str) -> None:
    found = request_target(target, headers)
    assert (found.key, found.problem) == (key, None)


@pytest.mark.parametrize("target", [b"/invocations", b"/invocations?x=1"])
def test_invocations_without_a_model_is_refused_naming_both_headers(target: bytes) -> None:
    found = request_target(target, [(b"content-type", b"application/json")])
    assert found.key is None and found.problem is not None
    assert "X-Berth-Target-Model" in found.problem and "X-Amzn-SageMaker-Target-Model" in found.problem


@pytest.mark.parametrize(
    ("target", "headers", "says"),
    [
        (b"/invocations", [(b"x-berth-target-model", b"../secret.onnx")], "X-Berth-Target-Model"),
        (b"/invocations", [(b"x-berth-target-model", b"")], "1 to 1024 characters"),
        (b"/v2/models/a%2F..%2Fb/infer", [], "in the path"),
    ],
)
def test_a_bad_model_name_is_refused_saying_why(
    target: bytes, headers: list[tuple[bytes, bytes]], says: str
) -> None:
    found = request_target(target, headers)
    assert found.key is None and found.problem is not None and says in found.problem


@pytest.mark.parametrize(
    "target", [b"/models", b"/ping", b"/v2/repository/index", b"/v2/models/", b"/metrics"]
)
def test_requests_for_no_model_go_anywhere(target: bytes) -> None:
    assert request_target(target, []) == type(request_target(target, []))()


# ---------------------------------------------------------------------- which replica


@dataclass(eq=False)
class FakeReplica:
    identity: str
    models_inflight: dict[str, int] = field(default_factory=dict)


def replicas(count: int, first_port: int = 9000) -> list[FakeReplica]:
    return [FakeReplica(f"127.0.0.1:{first_port + i}") for i in range(count)]


KEYS = [f"customer-{i}" for i in range(300)]


def owners(pool: ModelPool[FakeReplica]) -> dict[str, str]:
    chosen = {key: pool.choose(key) for key in KEYS}
    return {key: replica.identity for key, replica in chosen.items() if replica is not None}


def test_each_model_has_one_owner_the_shared_hash_picks() -> None:
    fleet = replicas(3)
    pool = ModelPool(fleet, saturation=4)
    found = owners(pool)
    ids = [r.identity for r in fleet]
    assert found == {key: rendezvous.rank(key, ids)[0] for key in KEYS}
    assert owners(ModelPool(list(reversed(fleet)), saturation=4)) == found  # order does not matter
    per_replica = [sum(1 for owner in found.values() if owner == i) for i in ids]
    assert min(per_replica) > len(KEYS) / 3 * 0.7, per_replica  # spread, roughly evenly


def test_a_replica_that_leaves_moves_only_its_models() -> None:
    fleet = replicas(3)
    before = owners(ModelPool(fleet, 4))
    gone = fleet[1]
    after = owners(ModelPool([fleet[0], fleet[2]], 4))
    moved = {key for key in KEYS if before[key] != after[key]}
    assert moved == {key for key, owner in before.items() if owner == gone.identity}
    assert moved  # it owned some


def test_a_replica_that_joins_takes_models_only_for_itself() -> None:
    fleet = replicas(4)
    before = owners(ModelPool(fleet[:3], 4))
    after = owners(ModelPool(fleet, 4))
    moved = {key for key in KEYS if before[key] != after[key]}
    assert moved and all(after[key] == fleet[3].identity for key in moved)


def test_a_saturated_owner_spills_to_the_second_choice_never_a_third() -> None:
    fleet = replicas(3)
    pool = ModelPool(fleet, saturation=2)
    by_id = {r.identity: r for r in fleet}
    key = "hot"
    first, second, _third = (by_id[i] for i in rendezvous.rank(key, by_id))
    assert pool.choose(key) is first
    first.models_inflight[key] = 1
    assert pool.choose(key) is first  # below the threshold
    first.models_inflight[key] = 2
    assert pool.choose(key) is second
    first.models_inflight["other"] = 99  # other models' requests do not count against this one
    second.models_inflight[key] = 2
    assert pool.choose(key) is first  # both saturated: back to the owner, not a third replica
    assert pool.other_choice(key, first) is second
    assert pool.other_choice(key, second) is first


def test_a_failed_replica_is_avoided_as_if_it_had_left() -> None:
    fleet = replicas(3)
    pool = ModelPool(fleet, 4)
    for key in KEYS[:50]:
        owner = pool.choose(key)
        assert owner is not None
        without = ModelPool([r for r in fleet if r is not owner], 4).choose(key)
        assert pool.choose(key, avoid=(owner,)) is without


def test_one_replica_and_none() -> None:
    only = replicas(1)
    pool = ModelPool(only, 1)
    only[0].models_inflight["m"] = 5
    assert pool.choose("m") is only[0]  # saturated, but there is nowhere else
    assert pool.other_choice("m", only[0]) is None
    assert pool.choose("m", avoid=only) is None
    assert ModelPool([], 1).choose("m") is None
    assert ModelPool([], 1).take() is None


# ---------------------------------------------------------------------- the router, over HTTP


class Replica:
    """A replica that answers with its name and the model it was asked for; `status` makes it
    refuse, `hold` keeps its answers until set."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = 200
        self.hold: threading.Event | None = None
        self.arrived = threading.Semaphore(0)
        self.seen: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                model = self.headers.get("x-berth-target-model") or self.path
                owner.seen.append(model)
                owner.arrived.release()
                if owner.hold is not None:
                    owner.hold.wait(20)
                answer: dict[str, Any] = {"replica": owner.name, "model": model}
                if self.path == "/models":  # what a multi-model replica holds
                    answer = {"models": [{"key": f"held-by-{owner.name}", "requests": 2}]}
                payload = json.dumps(answer).encode()
                self.send_response(owner.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def identity(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def call(port: int, path: str, model: str | None = None, method: str = "POST") -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        headers = {"content-type": "application/json"}
        if model is not None:
            headers["X-Berth-Target-Model"] = model
        connection.request(
            method, PREFIX + path, body=b"[[1.0]]" if method == "POST" else None, headers=headers
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


@pytest.fixture
def fleet() -> Iterator[list[Replica]]:
    started = [Replica(f"r{i}") for i in range(3)]
    try:
        yield started
    finally:
        for replica in started:
            replica.stop()


def start_router(fleet: list[Replica], saturation: int = 8) -> RouterServer:
    server = RouterServer(fleet[0].port)
    upstreams = [Upstream("127.0.0.1", r.port, r.name) for r in fleet]
    server.router.set_pools({SERVICE: upstreams}, multi_model={SERVICE: saturation})
    return server.start()


@pytest.fixture
def router(fleet: list[Replica]) -> Iterator[RouterServer]:
    server = start_router(fleet)
    try:
        yield server
    finally:
        server.stop()


def owner_name(fleet: list[Replica], key: str, among: list[Replica] | None = None) -> str:
    group = among if among is not None else fleet
    owner = rendezvous.rank(key, [r.identity for r in group])[0]
    return next(r.name for r in group if r.identity == owner)


def test_router_sends_each_model_to_its_owner_by_header_and_by_v2_path(
    fleet: list[Replica], router: RouterServer
) -> None:
    names = [f"customer-{i}" for i in range(24)]
    for name in names:
        for _ in range(3):
            status, answer = call(router.port, "/invocations", f"{name}.tar.gz")
            assert status == 200 and answer["replica"] == owner_name(fleet, name), (name, answer)
        status, answer = call(router.port, f"/v2/models/{name}/infer")
        assert status == 200 and answer["replica"] == owner_name(fleet, name), (name, answer)
    assert all(replica.seen for replica in fleet)  # every replica owns some of 24 models


def test_router_refuses_invocations_naming_no_model(fleet: list[Replica], router: RouterServer) -> None:
    status, answer = call(router.port, "/invocations")
    assert status == 400
    message = answer["error"]["message"]
    assert "X-Berth-Target-Model" in message and "X-Amzn-SageMaker-Target-Model" in message
    assert not any(replica.seen for replica in fleet)  # refused by the router itself
    status, _ = call(router.port, "/models", method="GET")  # no model named: any replica answers
    assert status == 200


def test_router_tries_the_second_choice_once_when_the_owner_refuses(
    fleet: list[Replica], router: RouterServer
) -> None:
    key = "busy-model"
    ranked = [
        next(r for r in fleet if r.identity == i) for i in rendezvous.rank(key, [r.identity for r in fleet])
    ]
    ranked[0].status = 503
    status, answer = call(router.port, "/invocations", f"{key}.onnx")
    assert (status, answer["replica"]) == (200, ranked[1].name)
    ranked[1].status = 429
    status, answer = call(router.port, "/invocations", f"{key}.onnx")
    assert status == 429 and answer["replica"] == ranked[1].name  # once, never a third replica
    assert not ranked[2].seen


def test_router_moves_only_a_dead_replicas_models(fleet: list[Replica], router: RouterServer) -> None:
    names = [f"m{i}" for i in range(30)]
    before = {name: call(router.port, "/invocations", name)[1]["replica"] for name in names}
    dead = fleet[0]
    dead.stop()  # still in the pool (not yet unready): its requests fail over
    living = fleet[1:]
    for name in names:
        status, answer = call(router.port, "/invocations", name)
        assert status == 200
        if before[name] == dead.name:
            assert answer["replica"] == owner_name(fleet, name, living)
        else:
            assert answer["replica"] == before[name]
    assert any(owner == dead.name for owner in before.values())


def test_router_spills_a_hot_model_once_its_owner_is_saturated(fleet: list[Replica]) -> None:
    saturation = 2
    server = start_router(fleet, saturation=saturation)
    key = "hot"
    ranked = [
        next(r for r in fleet if r.identity == i) for i in rendezvous.rank(key, [r.identity for r in fleet])
    ]
    gate = threading.Event()
    for replica in fleet:
        replica.hold = gate
    results: list[tuple[int, dict[str, Any]]] = []
    threads = []
    try:
        for index in range(saturation + 1):
            thread = threading.Thread(target=lambda: results.append(call(server.port, "/invocations", key)))
            thread.start()
            threads.append(thread)
            # One at a time, each held by its replica before the next is sent.
            chosen = ranked[0] if index < saturation else ranked[1]
            assert chosen.arrived.acquire(timeout=10), f"request {index} did not reach {chosen.name}"
        assert len(ranked[0].seen) == saturation and len(ranked[1].seen) == 1
        gate.set()
        for thread in threads:
            thread.join(20)
        assert sorted(answer["replica"] for _, answer in results) == sorted(
            [ranked[0].name] * saturation + [ranked[1].name]
        )
        # Idle again: the owner takes the model's requests back.
        assert call(server.port, "/invocations", key)[1]["replica"] == ranked[0].name
    finally:
        gate.set()
        server.stop()


# ---------------------------------------------------------------------- the replicas' settings


def planned_deployment(multi_model: dict[str, Any] | None = None) -> tuple[dict[str, Any], Model]:
    spec: dict[str, Any] = {"modelUri": "file:///models/customers/", "mode": "MultiModel"}
    if multi_model is not None:
        spec["multiModel"] = multi_model
    model = Model.model_validate({**local_model("customers", ""), "spec": spec})
    plan = plan_endpoint(
        PlanInput(
            Endpoint.model_validate(local_endpoint("ep", "c1")),
            {
                "c1": EndpointConfig.model_validate(
                    local_config("c1", [local_variant("all", "customers", count=3)])
                )
            },
            {"customers": model},
            local_settings(Settings(), 8080),
            Observed(now=datetime(2026, 1, 1, tzinfo=UTC)),
        )
    )
    (deployment,) = [o for o in plan.objects if o["kind"] == "Deployment"]
    return deployment, model


def test_a_multi_model_replica_serves_its_prefix_with_no_peers() -> None:
    deployment, model = planned_deployment()
    env = multi_model_env(container_env(deployment)[0], model, deployment)
    assert env[ENV["multi_model"]] == "true"
    assert ENV["peers"] not in env and ENV["pod_ip"] not in env  # the router does the affinity
    assert ENV["model_uri"] not in env  # the prefix is the replica's argument
    limit = memory_limit_bytes(deployment)
    assert limit == 2 * 1024**3  # cpu-small's, as the planner set it
    assert env[ENV["cache_bytes"]] == str(int(0.8 * limit))  # as in the pod: 80% of its limit
    assert ENV["max_loaded_models"] not in env  # no count limit: the replica's default


def test_a_multi_model_replicas_cache_settings_come_from_the_model() -> None:
    deployment, model = planned_deployment({"cacheBytes": 123_456_789, "maxLoadedModels": 7})
    env = multi_model_env(container_env(deployment)[0], model, deployment)
    assert (env[ENV["cache_bytes"]], env[ENV["max_loaded_models"]]) == ("123456789", "7")


def test_the_routers_saturation_is_two_of_the_variants_batches() -> None:
    assert saturation({ENV["max_batch_size"]: "8"}) == 16  # one batch running, one waiting
    assert saturation({}) == 2 * ServeConfig(model_uri="").max_batch_size


def test_a_multi_model_replica_is_started_on_its_prefix(tmp_path: Path) -> None:
    spec = ReplicaSpec(
        name="r", model_path=None, env={}, log_path=tmp_path / "r.log", prefix="s3://b/models/"
    )
    argv = spec.argv(8123)
    assert argv[3:5] == ["serve", "s3://b/models/"] and argv[-2:] == ["--port", "8123"]


def test_a_relative_prefix_keeps_its_trailing_slash(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    write_yaml(
        tmp_path / "all.yaml",
        [
            {**local_model("customers", ""), "spec": {"modelUri": "file://models/", "mode": "MultiModel"}},
            local_config("c1", [local_variant("all", "customers")]),
            local_endpoint("ep", "c1"),
        ],
    )
    resources = load_resources([tmp_path])
    assert resources.models[("default", "customers")].spec.model_uri == f"file://{tmp_path / 'models'}/"


# ---------------------------------------------------------------------- what `berth up` shows


def multi_model_snapshot() -> dict[str, Any]:
    def replica(index: int, keys: list[str]) -> dict[str, Any]:
        return {
            "name": f"mm-c1-all-abc-{index}",
            "config": "c1",
            "variant": "all",
            "state": "Running",
            "ready": True,
            "restarts": 0,
            "models": [{"key": k, "bytes": 1024} for k in keys],
        }

    status = {
        "phase": "InService",
        "endpointConfigName": "c1",
        "productionVariants": [
            {"variantName": "all", "currentWeight": 1, "readyInstanceCount": 3, "desiredInstanceCount": 3}
        ],
        "url": "http://127.0.0.1:8080/endpoints/default/mm/invocations",
    }
    keys = [f"customer-{i}" for i in range(7)]
    return {
        "endpoints": [
            {
                "namespace": "default",
                "name": "mm",
                "status": status,
                "replicas": [replica(0, keys[:6]), replica(1, keys[6:]), replica(2, [])],
                "multiModel": [{"config": "c1", "variant": "all", "prefix": "file:///m/"}],
            }
        ]
    }


def test_the_table_counts_the_models_a_multi_model_variant_holds() -> None:
    snapshot = multi_model_snapshot()
    assert "all 100% 3/3 7 models loaded" in display.table(snapshot).splitlines()[1]
    details = display.details(snapshot).splitlines()
    assert "  variant all: MultiModel, the models under file:///m/" in details
    assert (
        "  mm-c1-all-abc-0 holds customer-0, customer-1, customer-2, customer-3, +2 more (6.0 KiB)" in details
    )
    assert "  mm-c1-all-abc-2 holds no model loaded" in details
    assert display.replica_lines(snapshot)["mm-c1-all-abc-1"].endswith("restarts=0 models=1")
    hint = display.multi_model_hint(snapshot)
    assert "X-Berth-Target-Model" in hint and hint.endswith("/endpoints/default/mm/invocations")


def test_a_single_model_endpoint_shows_no_models() -> None:
    snapshot = multi_model_snapshot()
    endpoint_view = snapshot["endpoints"][0]
    endpoint_view["multiModel"] = []
    for replica in endpoint_view["replicas"]:
        del replica["models"]
    assert "loaded" not in display.table(snapshot)
    assert display.details(snapshot) == ""
    assert display.multi_model_hint(snapshot) == ""


def test_the_router_lists_the_models_of_every_replica_of_a_service(
    fleet: list[Replica], router: RouterServer
) -> None:
    fleet[2].stop()  # one that does not answer leaves the others' models in the answer
    connection = http.client.HTTPConnection("127.0.0.1", router.port, timeout=20)
    try:
        connection.request("GET", "/_berth/services/default/ep-v/models")
        response = connection.getresponse()
        document = json.loads(response.read())
        assert response.status == 200
        connection.request("GET", "/_berth/services/default/nothing/models")
        missing = connection.getresponse()
        assert missing.status == 404 and b"default/nothing" in missing.read()
    finally:
        connection.close()
    assert document["replicas"] == 3
    assert sorted(m["key"] for m in document["models"]) == ["held-by-r0", "held-by-r1"]


@pytest.mark.parametrize(
    ("url", "local"),
    [
        (
            "http://ep-c2-all-peers.team.svc:8080/models",
            "http://127.0.0.1:9/_berth/services/team/ep-c2-all-peers/models",
        ),
        (
            "http://old-peers.default.svc.cluster.local:8080/models",
            "http://127.0.0.1:9/_berth/services/default/old-peers/models",
        ),
        ("http://127.0.0.1:8123/models", "http://127.0.0.1:8123/models"),  # a replica's own: kept
        ("http://old.team.svc:8080/other", "http://old.team.svc:8080/other"),
    ],
)
def test_a_rollouts_warm_up_source_becomes_the_routers_view_of_the_old_fleet(url: str, local: str) -> None:
    assert local_warm_from(url, "http://127.0.0.1:9") == local


def test_a_planned_warm_up_source_is_rewritten_for_local_replicas() -> None:
    deployment, model = planned_deployment()
    planned = {**container_env(deployment)[0], ENV["warm_from"]: "http://old-peers.default.svc:8080/models"}
    env = multi_model_env(planned, model, deployment, "http://127.0.0.1:9")
    assert env[ENV["warm_from"]] == "http://127.0.0.1:9/_berth/services/default/old-peers/models"

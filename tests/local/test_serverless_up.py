"""Serverless variants under `berth up`: real replicas, real ONNX models, the router holding
requests through cold starts, refusing beyond maxHeldRequests, timing out a model that cannot
load, scaling to zero after idleSeconds, and a rollout onto a serverless config."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serving.models import build_slow

from .conftest import ROW, SLOW_ITERATIONS
from .support import BerthUp, config, endpoint, model, variant, write_yaml
from .test_up_lifecycle import Load

BODY = {"instances": [ROW]}
IDLE_SECONDS = 10  # the API's least idleSeconds


def serverless(name: str, model_name: str, **config: Any) -> dict[str, Any]:
    return {
        "variantName": name,
        "modelName": model_name,
        "initialVariantWeight": 1,
        "serverlessConfig": {"memorySizeInMB": 2048, "idleSeconds": IDLE_SECONDS, **config},
    }


@pytest.fixture(scope="module")
def up(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BerthUp]:
    """Serverless endpoints: `cold` (logreg), `crowd` (logreg, one replica of 12 in flight,
    100 held at most), `busy` (a model of about 1 s a call, 2 in flight and 3 held at most),
    `broken` (a file that is no model, 2 s cold-start timeout), and `roll`, always-on, whose
    test rolls it onto a serverless config."""
    tmp = tmp_path_factory.mktemp("serverless-up")
    build_slow(tmp / "slower.onnx", n_features=4, iterations=SLOW_ITERATIONS * 10)
    manifests = tmp / "manifests"
    manifests.mkdir()
    write_yaml(
        manifests / "models.yaml",
        [
            model("logreg", f"file://{model_dir / 'logreg.onnx'}"),
            model("slower", f"file://{tmp / 'slower.onnx'}"),
            model("garbage", f"file://{model_dir / 'garbage.onnx'}"),
        ],
    )
    write_yaml(
        manifests / "configs.yaml",
        [
            config("cold-v1", [serverless("main", "logreg", coldStartTimeoutSeconds=60)]),
            config(
                "crowd-v1",
                [
                    serverless(
                        "main",
                        "logreg",
                        memorySizeInMB=6144,
                        maxConcurrency=12,
                        maxHeldRequests=100,
                        coldStartTimeoutSeconds=60,
                    )
                ],
            ),
            config(
                "busy-v1",
                [
                    serverless(
                        "main",
                        "slower",
                        memorySizeInMB=1024,
                        maxConcurrency=2,
                        maxHeldRequests=3,
                        coldStartTimeoutSeconds=60,
                    )
                ],
            ),
            config("broken-v1", [serverless("main", "garbage", coldStartTimeoutSeconds=2)]),
            config("roll-v1", [variant("warm", "logreg")]),
            config("roll-v2", [serverless("lean", "logreg", coldStartTimeoutSeconds=60)]),
        ],
    )
    write_yaml(
        manifests / "endpoints.yaml",
        [endpoint(name, f"{name}-v1") for name in ("cold", "crowd", "busy", "broken")],
    )
    write_yaml(manifests / "roll.yaml", [endpoint("roll", "roll-v1")])
    berth_up = BerthUp(manifests, tmp, env={"BERTH_UP_LIVENESS_SECONDS": "3"})
    berth_up.manifests = manifests  # type: ignore[attr-defined]
    try:
        berth_up.wait_in_service("cold", "crowd", "busy", "roll", timeout=90)
        yield berth_up
    finally:
        berth_up.stop()


def held(up: BerthUp, name: str) -> dict[str, Any]:
    """The interceptor's entry of the endpoint's (only) serverless variant."""
    items = up.endpoint(name)["serverless"]
    assert len(items) == 1, items
    found: dict[str, Any] = items[0]
    return found


def wait_idle(up: BerthUp, name: str) -> None:
    """At zero: the interceptor says 0, and no replica process is left."""

    def idle() -> bool:
        ep = up.endpoint(name)
        return held(up, name)["replicas"] == 0 and not ep["replicas"] and ep["status"]["phase"] == "InService"

    up.wait(idle, IDLE_SECONDS + 60, f"{name} at zero replicas")


@pytest.mark.timeout(180)
def test_first_request_after_idle_is_held_and_answered_with_its_cold_start(up: BerthUp) -> None:
    wait_idle(up, "cold")
    up.wait(
        lambda: "default/cold: InService config=cold-v1 variants=[main 100% 0/0 (idle)]" in up.log(),
        10,
        "idle in the table",
    )
    started = time.monotonic()
    answer = up.invoke("cold", BODY)
    elapsed_ms = (time.monotonic() - started) * 1000
    assert answer.status_code == 200, answer.text
    cold_ms = int(answer.headers["x-berth-cold-start"])
    assert 0 < cold_ms <= elapsed_ms
    item = held(up, "cold")
    assert item["coldStarts"] >= 1 and item["lastError"] == ""
    last = item["lastColdStart"]
    assert list(last["phases"]) == ["scheduled", "modelFetched", "modelLoaded", "firstAnswer"]
    assert sum(last["phases"].values()) == pytest.approx(last["totalSeconds"])
    assert last["phases"]["modelLoaded"] > 0  # a process started and loaded the model
    assert abs(last["totalSeconds"] * 1000 - cold_ms) < 1000  # held time, plus the first answer
    assert "x-berth-cold-start" not in up.invoke("cold", BODY).headers  # warm now
    assert "cold start" in up.log() and "model loaded" in up.log()

    # Idle for idleSeconds: back to zero, its replica processes stopped.
    pids = {r["pid"] for r in up.endpoint("cold")["replicas"]}
    assert pids
    wait_idle(up, "cold")
    assert up.endpoint("cold")["status"]["phase"] == "InService"


async def _burst(url: str, count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        return await asyncio.gather(*(client.post(url, json=BODY) for _ in range(count)))


@pytest.mark.timeout(180)
def test_150_requests_at_zero_give_100_answers_and_50_clean_429s(up: BerthUp) -> None:
    wait_idle(up, "crowd")
    answers = asyncio.run(_burst(f"{up.base}/endpoints/default/crowd/invocations", 150))
    codes = Counter(a.status_code for a in answers)
    assert codes == {200: 100, 429: 50}, codes
    for answer in answers:
        if answer.status_code == 429:
            assert answer.headers["retry-after"] == "1"
            assert (
                answer.json()["error"]["code"] == 429
                and "maxHeldRequests" in answer.json()["error"]["message"]
            )
        else:
            assert "x-berth-cold-start" in answer.headers
    item = held(up, "crowd")
    assert item["refused"] == 50 and item["held"] == 0 and item["inFlight"] == 0


@pytest.mark.timeout(180)
def test_beyond_max_concurrency_in_flight_and_max_held_requests_are_429(up: BerthUp) -> None:
    url = f"{up.base}/endpoints/default/busy/invocations"
    assert httpx.post(url, json=BODY, timeout=120).status_code == 200  # warm: one replica
    up.wait(
        lambda: held(up, "busy")["readyReplicas"] == 1 and held(up, "busy")["inFlight"] == 0, 30, "busy warm"
    )
    answers = asyncio.run(_burst(url, 10))
    codes = Counter(a.status_code for a in answers)
    assert codes == {200: 5, 429: 5}, codes  # 2 in flight + 3 held answered; the rest refused
    assert all("x-berth-cold-start" not in a.headers for a in answers)  # held for a slot, not a start


@pytest.mark.timeout(120)
def test_a_model_that_cannot_load_gives_503_after_the_timeout_and_a_reason(up: BerthUp) -> None:
    started = time.monotonic()
    answer = up.invoke("broken", BODY)
    assert answer.status_code == 503, answer.text
    assert time.monotonic() - started >= 1.9
    assert answer.headers["retry-after"] == "5"
    message = answer.json()["error"]["message"]
    assert "coldStartTimeoutSeconds" in message

    def reason_known() -> bool:
        status = up.endpoint("broken")["status"]
        return "garbage.onnx" in (status.get("failureReason") or "")

    up.wait(reason_known, 30, "the load failure in the status")
    item = held(up, "broken")
    assert item["timedOut"] >= 1 and "coldStartTimeoutSeconds" in item["lastError"]
    # Once the crash is known, the answer says why.
    up.wait(lambda: "model load failed" in up.invoke("broken", BODY).json()["error"]["message"], 30, "why")


@pytest.mark.timeout(240)
def test_a_rollout_onto_a_serverless_config_has_zero_failures(up: BerthUp) -> None:
    roll = up.manifests / "roll.yaml"  # type: ignore[attr-defined]
    with Load(f"{up.base}/endpoints/default/roll/invocations") as load:
        up.wait(lambda: load.total > 20, 30, "answers of the old config")
        write_yaml(roll, [endpoint("roll", "roll-v2")])

        def rolled_out() -> bool:
            ep = up.endpoint("roll")
            status = ep["status"]
            return (
                status.get("endpointConfigName") == "roll-v2"
                and not status.get("pendingEndpointConfigName")
                and status.get("phase") == "InService"
                and {r["config"] for r in ep["replicas"]} == {"roll-v2"}
            )

        up.wait(rolled_out, 90, "the rollout to roll-v2 with the old fleet stopped")
        answered_before = load.total
        up.wait(lambda: load.total > answered_before + 20, 30, "answers from the serverless fleet")
    assert load.failures == [], load.failures[:5]
    assert load.variants["warm"] > 0 and load.variants["lean"] > 0, load.variants
    # With the load gone, the serverless fleet goes to zero and stays InService.
    wait_idle(up, "roll")

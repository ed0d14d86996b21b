"""`berth up` serving real replicas: weights, header targeting, mirroring, errors, failures."""

from __future__ import annotations

import os
import signal
import statistics
import time
from collections import Counter

import httpx
import pytest
from berth_operator.invoke import invoke_command
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ROW
from .support import BerthUp

BODY = {"instances": [ROW]}
pytestmark = pytest.mark.timeout(180)


def replicas(up: BerthUp, endpoint: str, variant: str | None = None) -> list[dict]:
    return [r for r in up.endpoint(endpoint)["replicas"] if variant is None or r.get("variant") == variant]


def invocations(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "berth_invocations_total"
    )


def test_weighted_split_follows_the_weights(shared_up: BerthUp) -> None:
    counts: Counter[str] = Counter()
    for _ in range(1000):
        response = shared_up.invoke("split", BODY)
        assert response.status_code == 200, response.text
        counts[response.headers["x-berth-variant"]] += 1
    assert set(counts) == {"a", "b"}
    # 70/30 over 1,000 requests: one standard deviation is 1.45 points; allow 5.
    assert abs(counts["a"] / 1000 - 0.70) < 0.05, counts


def test_header_picks_the_variant(shared_up: BerthUp) -> None:
    for name in ("a", "b"):
        answered = {
            shared_up.invoke("split", BODY, {"X-Berth-Target-Variant": name}).headers["x-berth-variant"]
            for _ in range(30)
        }
        assert answered == {name}
    # An unknown name matches no variant rule: the replica that gets it says which names there are
    # (it used to answer 200 from the default, silently).
    response = shared_up.invoke("split", BODY, {"X-Berth-Target-Variant": "nobody"})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "nobody" in message and "a" in message and "b" in message


def test_mirror_reaches_the_shadow_without_delaying_the_answer(shared_up: BerthUp) -> None:
    (shadow,) = replicas(shared_up, "mirrored", "s")
    direct = httpx.post(f"http://127.0.0.1:{shadow['port']}/invocations", json=BODY, timeout=30)
    assert direct.status_code == 200
    started = time.perf_counter()
    httpx.post(f"http://127.0.0.1:{shadow['port']}/invocations", json=BODY, timeout=30)
    shadow_seconds = time.perf_counter() - started
    before = invocations(shadow["port"])
    latencies = []
    for _ in range(20):
        started = time.perf_counter()
        response = shared_up.invoke("mirrored", BODY)
        latencies.append(time.perf_counter() - started)
        assert response.status_code == 200
        assert response.headers["x-berth-variant"] == "p"  # the shadow never answers
    # The slow shadow takes ~0.1 s a call; answers through the router do not wait for it.
    assert statistics.median(latencies) < shadow_seconds / 2, (latencies, shadow_seconds)
    shared_up.wait(
        lambda: invocations(shadow["port"]) >= before + 20, 30, "20 mirrored requests on the shadow"
    )


def test_unknown_endpoint_is_404_listing_the_known_ones(shared_up: BerthUp) -> None:
    response = shared_up.client.post("/endpoints/default/nope/invocations", json=BODY)
    assert response.status_code == 404
    error = response.json()["error"]
    assert "/endpoints/default/nope/invocations" in error["message"]
    assert "/endpoints/default/split/invocations" in error["knownEndpoints"]
    assert "/endpoints/default/crashy/invocations" in error["knownEndpoints"]


def test_v2_paths_are_rewritten(shared_up: BerthUp) -> None:
    response = shared_up.client.get("/endpoints/default/split/v2/health/ready")
    assert response.status_code == 200
    assert response.headers["x-berth-variant"] in {"a", "b"}


def test_fetch_failure_is_reported_and_requests_get_503(shared_up: BerthUp) -> None:
    def reported() -> bool:
        return "download failed" in (shared_up.endpoint("broken-fetch")["status"].get("failureReason") or "")

    shared_up.wait(reported, 30, "the download failure in the status")
    assert "does-not-exist.onnx" in shared_up.endpoint("broken-fetch")["status"]["failureReason"]
    response = shared_up.invoke("broken-fetch", BODY)
    assert response.status_code == 503
    assert "no ready replica" in response.json()["error"]["message"]


def test_killed_replica_restarts_and_status_shows_it(shared_up: BerthUp) -> None:
    (replica,) = replicas(shared_up, "crashy")
    assert replica["restarts"] == 0 and replica["pid"]
    os.kill(replica["pid"], signal.SIGKILL)

    def back() -> bool:
        (now,) = replicas(shared_up, "crashy")
        return bool(now["restarts"] == 1 and now["ready"] and now["pid"] != replica["pid"])

    shared_up.wait(back, 30, "the replica back after a restart")
    assert shared_up.invoke("crashy", BODY).status_code == 200
    assert shared_up.endpoint("crashy")["status"]["phase"] == "InService"

    # A hung replica (stopped, not dead) fails its liveness check and is replaced too.
    (hung,) = replicas(shared_up, "crashy")
    os.kill(hung["pid"], signal.SIGSTOP)

    def replaced() -> bool:
        (now,) = replicas(shared_up, "crashy")
        return bool(now["restarts"] == 2 and now["ready"] and now["pid"] != hung["pid"])

    shared_up.wait(replaced, 30, "the hung replica replaced")
    assert "no answer on /ping" in replicas(shared_up, "crashy")[0]["lastError"]
    assert shared_up.invoke("crashy", BODY).status_code == 200


def test_invoke_prints_the_answer_and_the_variant(shared_up: BerthUp) -> None:
    import json

    runner = CliRunner()
    result = runner.invoke(
        invoke_command, ["split", "--data", json.dumps(BODY), "--url", shared_up.base, "--variant", "b"]
    )
    assert result.exit_code == 0, result.output
    assert "variant: b" in result.output
    assert "outputs" in result.output or "predictions" in result.output


def test_invoke_exits_1_on_an_error_answer(shared_up: BerthUp) -> None:
    runner = CliRunner()
    result = runner.invoke(invoke_command, ["nope", "--data", "[[1, 2, 3, 4]]", "--url", shared_up.base])
    assert result.exit_code == 1
    assert "404" in result.output and "no endpoint at" in result.output
    bad = runner.invoke(
        invoke_command, ["split", "--data", '{"instances": [[1, 2]]}', "--url", shared_up.base]
    )
    assert bad.exit_code == 1 and "400" in bad.output


def test_expect_continue_is_not_forwarded_as_an_answer(shared_up: BerthUp) -> None:
    # The router holds the whole body; a replica's interim 100 must never become the answer.
    response = shared_up.invoke("split", {"instances": [ROW] * 300}, {"Expect": "100-continue"})
    assert response.status_code == 200, response.text
    assert len(next(iter(response.json().values()))) > 0

"""Warm-up requests (Model.spec.warmupRequests): answered before /ping says ready, not counted as
invocations, and a warm-up the model refuses stops the server with the reason."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest
from berth_serving.config import ServeConfig, WarmupRequest, warmup_requests_from_json

from tests.serving.models import build_identity
from tests.serving.support import ThreadedServer, free_port, request, serve_subprocess, wait_until

GOOD = WarmupRequest(orjson.dumps([[0.5] * 16]).decode())
CSV = WarmupRequest(",".join(["1"] * 16), "text/csv")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_identity(tmp_path_factory.mktemp("warmup") / "identity.onnx")


@pytest.mark.timeout(60)
def test_ready_after_the_warm_ups_which_are_not_counted(model: Path) -> None:
    server = ThreadedServer(ServeConfig(model_uri=str(model), warmup_requests=(GOOD, CSV)))
    server.start()
    try:
        assert server.service.app.warming is False
        metrics = request(server.url + "/metrics").body.decode()
        assert "berth_warmup_seconds{" in metrics
        assert 'code="200"' not in metrics  # warm-ups are not invocations
        answer = request(
            server.url + "/invocations", "POST", GOOD.body.encode(), {"Content-Type": "application/json"}
        )
        assert answer.status == 200
        assert 'berth_invocations_total{code="200",' in request(server.url + "/metrics").body.decode()
        counted = [
            line
            for line in request(server.url + "/metrics").body.decode().splitlines()
            if line.startswith("berth_invocations_total{")
        ]
        assert [line.rsplit(" ", 1)[1] for line in counted] == ["1.0"]
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_a_refused_warm_up_stops_the_server_with_the_reason(model: Path, tmp_path: Path) -> None:
    port = free_port()
    wrong = [{"body": orjson.dumps([[1.0, 2.0]]).decode()}]  # 2 features, the model takes 16
    env = {"BERTH_WARMUP_REQUESTS": orjson.dumps(wrong).decode()}
    process = serve_subprocess(model, port, env=env)
    try:
        code = process.wait(timeout=45)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    stderr = process.stderr.read().decode() if process.stderr else ""
    assert code == 1
    assert "warm-up request 1 of 1 answered 400" in stderr, stderr


@pytest.mark.timeout(30)
def test_ping_stays_503_while_warming(model: Path) -> None:
    server = ThreadedServer(ServeConfig(model_uri=str(model), warmup_requests=(GOOD,)))
    app = server.service.app
    assert app.warming and not app.ready  # before the model and the warm-ups
    server.start()
    try:
        wait_until(lambda: app.ready)
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "not JSON"),
        ('{"body": "x"}', "JSON list"),
        ('[{"contentType": "text/csv"}]', "warm-up request 1 needs a string body"),
        ('[{"body": "x", "contentType": ""}]', "contentType must be a non-empty string"),
    ],
)
def test_bad_warm_up_settings_are_named(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        warmup_requests_from_json(text)


def test_the_env_contract_round_trips() -> None:
    env = ServeConfig(model_uri="m.onnx", warmup_requests=(GOOD, CSV)).to_env()
    assert warmup_requests_from_json(env["BERTH_WARMUP_REQUESTS"]) == (GOOD, CSV)
    assert "BERTH_WARMUP_REQUESTS" not in ServeConfig(model_uri="m.onnx").to_env()


def test_the_cli_refuses_bad_json(model: Path) -> None:
    process = serve_subprocess(model, free_port(), "--warmup-requests", "[1]")
    code = process.wait(timeout=30)
    assert code == 2
    assert b"--warmup-requests" in (process.stderr.read() if process.stderr else b"")

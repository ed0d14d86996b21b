"""Invoke auth in a real `berth serve` (uvicorn + httptools in a thread, raw sockets where a
client library would not send the bytes): API keys, rotation on disk, open paths, smuggled and
huge credentials; KubernetesRBAC with no API server to ask (fail closed). Reviews against a real
API server are in tests/cluster/test_invoke_auth.py."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from berth_serving.auth import AuthConfigError
from berth_serving.auth.apikeys import hashed_entry
from berth_serving.auth.guard import INVOCATIONS_BY_CALLER
from berth_serving.cli import serve
from berth_serving.config import ServeConfig
from berth_serving.server import Service
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from tests.serving.support import Response, ThreadedServer, free_port, request, wait_until
from tests.serving.test_auth_keys import secret_volume
from tests.support.rawhttp import connect, head, read_response

pytestmark = pytest.mark.timeout(60)
ROW = orjson.dumps([[0.1] * 16])
V2_BODY = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.1] * 16}]})
ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-fedcba9876543210"


def post(url: str, body: bytes = ROW, key: str | None = None, bearer: str | None = None) -> Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-Berth-Api-Key"] = key
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    return request(url, "POST", body, headers)


@contextlib.contextmanager
def running(config: ServeConfig) -> Iterator[ThreadedServer]:
    server = ThreadedServer(config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return secret_volume(tmp_path / "keys", {"ci": hashed_entry(ALICE)})


@pytest.fixture
def keyed(onnx_models, keys_dir: Path) -> Iterator[ThreadedServer]:
    config = ServeConfig(
        model_uri=str(onnx_models.logreg_plain),
        auth_mode="APIKey",
        api_keys_dir=str(keys_dir),
        variant="blue",
    )
    with running(config) as server:
        yield server


def error_of(response: Response) -> object:
    return orjson.loads(response.body)["error"]


def test_no_key_is_401_in_each_paths_shape_with_a_challenge(keyed: ThreadedServer) -> None:
    answer = post(keyed.url + "/invocations")
    assert answer.status == 401
    assert answer.headers["www-authenticate"] == 'Bearer realm="berth"'
    assert answer.headers["x-berth-variant"] == "blue"
    error = error_of(answer)
    assert isinstance(error, dict) and error["code"] == 401 and "X-Berth-Api-Key" in error["message"]
    v2 = post(keyed.url + "/v2/models/logreg_plain/infer", V2_BODY)
    assert v2.status == 401 and isinstance(error_of(v2), str) and "API key" in str(error_of(v2))
    wrong = post(keyed.url + "/invocations", key=BOB)
    assert wrong.status == 401 and "not one of this endpoint's keys" in str(error_of(wrong))
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]


def test_a_key_in_either_header_is_served(keyed: ThreadedServer) -> None:
    by_bearer = post(keyed.url + "/invocations", bearer=ALICE)
    assert by_bearer.status == 200 and "label" in orjson.loads(by_bearer.body)["outputs"]
    by_header = post(keyed.url + "/v2/models/logreg_plain/infer", V2_BODY, key=ALICE)
    assert by_header.status == 200
    both = post(keyed.url + "/invocations", bearer=ALICE, key=ALICE)
    assert both.status == 401


def test_probes_metrics_and_metadata_need_no_key(keyed: ThreadedServer) -> None:
    for path in ("/ping", "/metrics", "/v2/health/live", "/v2/health/ready", "/v2/models/logreg_plain"):
        assert request(keyed.url + path).status == 200, path
    assert request(keyed.url + "/invocations").status == 401  # not even a 405 without a key


def test_callers_are_counted_in_metrics(keyed: ThreadedServer) -> None:
    post(keyed.url + "/invocations", bearer=ALICE)
    post(keyed.url + "/invocations", bearer=ALICE)
    post(keyed.url + "/invocations")
    text = request(keyed.url + "/metrics").body.decode()
    samples = {
        (sample.labels["caller"], sample.labels["result"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == INVOCATIONS_BY_CALLER
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert samples == {("apikey:ci", "allowed"): 2.0, ("-", "unauthenticated"): 1.0}
    assert ALICE not in text
    # A refused request is not an invocation of the model.
    invocations = [
        sample
        for family in text_string_to_metric_families(text)
        if family.name == "berth_invocations"
        for sample in family.samples
        if sample.name == "berth_invocations_total"
    ]
    assert {sample.labels["code"]: sample.value for sample in invocations} == {"200": 2.0}


def test_rotation_on_disk_reaches_the_running_server(keyed: ThreadedServer, keys_dir: Path) -> None:
    secret_volume(keys_dir, {"ci": hashed_entry(ALICE), "ci-next": BOB}, generation=2)
    wait_until(lambda: post(keyed.url + "/invocations", key=BOB).status == 200, timeout=15)
    assert post(keyed.url + "/invocations", key=ALICE).status == 200
    secret_volume(keys_dir, {"ci-next": BOB}, generation=3)
    wait_until(lambda: post(keyed.url + "/invocations", key=ALICE).status == 401, timeout=15)
    assert post(keyed.url + "/invocations", key=BOB).status == 200


def test_two_authorization_headers_are_refused_not_the_first_taken(keyed: ThreadedServer) -> None:
    with contextlib.closing(connect(keyed.port)) as sock:
        sock.sendall(
            f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {ALICE}\r\nAuthorization: Bearer nothing\r\n"
            f"Content-Length: {len(ROW)}\r\n\r\n".encode()
            + ROW
        )
        answer = read_response(sock)
    assert answer is not None and answer.status == 401
    assert "more than one Authorization header" in answer.error()


def test_a_refused_request_leaves_the_connection_usable(keyed: ThreadedServer) -> None:
    """The body of a refused request is never read by the app; the next request on the same
    keep-alive connection is still parsed from the right byte."""
    with contextlib.closing(connect(keyed.port)) as sock:
        sock.sendall(head("POST", "/invocations", len(ROW), Content_Type="application/json") + ROW)
        first = read_response(sock)
        sock.sendall(
            head("POST", "/invocations", len(ROW), Content_Type="application/json", X_Berth_Api_Key=ALICE)
            + ROW
        )
        second = read_response(sock)
    assert first is not None and first.status == 401
    assert second is not None and second.status == 200


def test_a_60_kib_bearer_is_401_and_a_head_over_64_kib_is_the_edges_431(keyed: ThreadedServer) -> None:
    with contextlib.closing(connect(keyed.port)) as sock:
        sock.sendall(head("POST", "/invocations", 0, Authorization="Bearer " + "a" * 60 * 1024))
        answer = read_response(sock)
    assert answer is not None and answer.status == 401 and "longer than" in answer.error()
    with contextlib.closing(connect(keyed.port)) as sock:
        sock.sendall(head("POST", "/invocations", 0, Authorization="Bearer " + "a" * 70 * 1024))
        answer = read_response(sock)
    assert answer is not None and answer.status == 431


# --------------------------------------------------------------------------- KubernetesRBAC, no server


@pytest.fixture
def unreachable(onnx_models, tmp_path: Path) -> Iterator[ThreadedServer]:
    """KubernetesRBAC pointed at a loopback port where nothing listens."""
    token_file = tmp_path / "token"
    token_file.write_text("reviewer-token\n")
    config = ServeConfig(
        model_uri=str(onnx_models.logreg_plain),
        auth_mode="KubernetesRBAC",
        auth_endpoint="team/fraud",
        kube_api_url=f"https://127.0.0.1:{free_port()}",
        kube_token_file=str(token_file),
        kube_ca_file="",
    )
    with running(config) as server:
        yield server


def test_api_server_unreachable_fails_closed_with_503(unreachable: ThreadedServer) -> None:
    answer = post(unreachable.url + "/invocations", bearer="some.caller.token")
    assert answer.status == 503 and answer.headers["retry-after"] == "1"
    assert "did not answer the review" in str(error_of(answer))
    assert request(unreachable.url + "/ping").status == 200  # the pod stays ready: it is not its fault


def test_rbac_refusals_that_need_no_review(unreachable: ThreadedServer) -> None:
    """401s decided from the request alone: with no API server to ask, a 503 would mean the
    credential had been sent on."""
    missing = post(unreachable.url + "/invocations")
    assert missing.status == 401 and "endpoints/fraud in namespace team" in str(error_of(missing))
    api_key = post(unreachable.url + "/invocations", key=ALICE)
    assert api_key.status == 401 and "takes no API keys" in str(error_of(api_key))
    with contextlib.closing(connect(unreachable.port)) as sock:
        sock.sendall(head("POST", "/invocations", 0, Authorization="Bearer " + "a" * 60 * 1024))
        huge = read_response(sock)
    assert huge is not None and huge.status == 401


# --------------------------------------------------------------------------- flags


def test_rbac_needs_an_endpoint_and_api_keys_a_directory(onnx_models) -> None:
    model = str(onnx_models.logreg_plain)
    no_endpoint = CliRunner().invoke(
        serve, [model, "--auth-mode", "KubernetesRBAC", "--kube-api-url", "https://x"]
    )
    assert no_endpoint.exit_code == 2 and "needs --auth-endpoint NAMESPACE/NAME" in no_endpoint.output
    bad_endpoint = CliRunner().invoke(
        serve, [model], env={"BERTH_AUTH_MODE": "kubernetesrbac", "BERTH_AUTH_ENDPOINT": "fraud"}
    )
    assert bad_endpoint.exit_code == 2 and "must be NAMESPACE/NAME" in bad_endpoint.output
    no_dir = CliRunner().invoke(serve, [model, "--auth-mode", "APIKey"])
    assert no_dir.exit_code == 2 and "needs --api-keys-dir" in no_dir.output
    unknown = CliRunner().invoke(serve, [model, "--auth-mode", "Basic"])
    assert unknown.exit_code == 2


def test_files_that_cannot_work_are_an_error_at_start(onnx_models, tmp_path: Path) -> None:
    model = str(onnx_models.logreg_plain)
    with pytest.raises(AuthConfigError, match="is not a directory"):
        Service(ServeConfig(model_uri=model, auth_mode="APIKey", api_keys_dir=str(tmp_path / "none")))
    rbac = ServeConfig(
        model_uri=model,
        auth_mode="KubernetesRBAC",
        auth_endpoint="a/b",
        kube_api_url="https://127.0.0.1:1",
        kube_token_file=str(tmp_path / "no-token"),
    )
    with pytest.raises(AuthConfigError, match="cannot be read"):
        Service(rbac)


def test_auth_settings_survive_to_env() -> None:
    config = ServeConfig(
        model_uri="/m.onnx",
        auth_mode="KubernetesRBAC",
        auth_endpoint="ns/ep",
        kube_api_url="https://10.0.0.1:443",
        auth_cache_seconds=2.5,
    )
    env = config.to_env()
    assert env["BERTH_AUTH_MODE"] == "KubernetesRBAC" and env["BERTH_AUTH_ENDPOINT"] == "ns/ep"
    assert env["BERTH_AUTH_CACHE_SECONDS"] == "2.5" and "BERTH_KUBE_TOKEN_FILE" not in env
    assert "BERTH_AUTH_MODE" not in ServeConfig(model_uri="/m.onnx").to_env()


def test_auth_off_says_so_once_at_start(onnx_models, caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.INFO, logger="berth"),
        running(ServeConfig(model_uri=str(onnx_models.logreg_plain))) as server,
    ):
        assert post(server.url + "/invocations").status == 200
    said = [record.getMessage() for record in caplog.records if "invoke auth" in record.getMessage()]
    assert said == ["invoke auth is off (--auth-mode None): every request is served"]

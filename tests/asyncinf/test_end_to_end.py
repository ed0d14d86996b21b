"""The whole async path on real parts: a real `berth serve` on a tiny ONNX model with invoke
auth, its worker calling it over loopback with no credential (`--auth-trust-loopback`), the
front door, redis-server, and `berth invoke --async`."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from berth_serving.auth.apikeys import hashed_entry
from berth_serving.config import ServeConfig

from tests.asyncinf.support import (
    BERTH,
    Child,
    Variant,
    children,
    metric_value,
    post,
    start_child,
    start_frontdoor,
    start_worker,
    wait_done,
    wait_for,
    write_routes,
)
from tests.serving.support import free_port, request
from tests.serving.test_auth_keys import secret_volume

pytestmark = pytest.mark.timeout(120)
KEY = "alice-key-0123456789abcdef"
AUTH = {"X-Berth-Api-Key": KEY}
PAYLOAD_LIMIT = 4096
ROWS = json.dumps({"instances": [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0]]}).encode()


def non_loopback_address() -> str | None:
    """An address of this machine other than loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.123", 9))  # no packet is sent: this only picks a route
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def start_serve(model: Path, keys: Path, log: Path, *extra: str, env: dict[str, str] | None = None) -> Child:
    port = free_port()
    argv = [BERTH, "serve", str(model), "--host", "0.0.0.0", "--port", str(port), "--auth-mode", "APIKey",
            "--api-keys-dir", str(keys), "--variant", "blue", "--max-payload-bytes", str(PAYLOAD_LIMIT), *extra]  # fmt: skip
    child = start_child(argv, log, env, port)
    wait_for(lambda: child.process.poll() is not None or request(child.url + "/ping").status == 200, 60)
    assert child.process.poll() is None, child.log()
    return child


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    return secret_volume(tmp_path / "keys", {"ci": hashed_entry(KEY)})


def test_trust_loopback_lets_this_pods_callers_in_and_no_one_else(
    async_models: SimpleNamespace, keys: Path, tmp_path: Path
) -> None:
    with children() as started:
        trusting = start_serve(async_models.logreg, keys, tmp_path / "trusting.log", "--auth-trust-loopback")
        started.append(trusting)
        assert request(trusting.url + "/invocations", "POST", ROWS).status == 200  # from 127.0.0.1
        # What a proxy on this host forwards comes from loopback too, but for someone elsewhere.
        proxied = request(trusting.url + "/invocations", "POST", ROWS, {"X-Berth-Proxied": "1"})
        assert proxied.status == 401
        text = request(trusting.url + "/metrics").body.decode()
        assert (
            metric_value(text, "berth_invocations_by_caller_total", caller="loopback", result="allowed") == 1
        )
        outside = non_loopback_address()
        if outside is not None:
            from_outside = request(f"http://{outside}:{trusting.port}/invocations", "POST", ROWS)
            assert from_outside.status == 401
            keyed = request(
                f"http://{outside}:{trusting.port}/invocations", "POST", ROWS, {"X-Berth-Api-Key": KEY}
            )
            assert keyed.status == 200
        plain = start_serve(async_models.logreg, keys, tmp_path / "plain.log")
        started.append(plain)
        assert request(plain.url + "/invocations", "POST", ROWS).status == 401  # the flag off: refused
        by_env = start_serve(
            async_models.logreg, keys, tmp_path / "env.log", env={"BERTH_AUTH_TRUST_LOOPBACK": "1"}
        )
        started.append(by_env)
        assert request(by_env.url + "/invocations", "POST", ROWS).status == 200
    if outside is None:
        pytest.skip("no non-loopback address here: only the loopback half was checked")


def test_the_setting_travels_as_the_environment_the_planner_sets() -> None:
    env = ServeConfig(model_uri="m", auth_trust_loopback=True).to_env()
    assert env["BERTH_AUTH_TRUST_LOOPBACK"] == "true"
    assert "BERTH_AUTH_TRUST_LOOPBACK" not in ServeConfig(model_uri="m").to_env()


@pytest.fixture
def stack(
    redis_url: str, async_models: SimpleNamespace, keys: Path, tmp_path: Path
) -> Iterator[SimpleNamespace]:
    variant = Variant("blue", "cfg-1", 1.0, f"file://{tmp_path}/out/", f"file://{tmp_path}/failed/")
    routes = tmp_path / "routes.json"
    write_routes(routes, [variant])
    auth_env = {"BERTH_AUTH_MODE": "APIKey", "BERTH_API_KEYS_DIR": str(keys)}
    with children() as started:
        serve = start_serve(
            async_models.logreg, keys, tmp_path / "serve.log", env={"BERTH_AUTH_TRUST_LOOPBACK": "1"}
        )
        started.append(serve)
        door = start_frontdoor(redis_url, routes, tmp_path / "frontdoor.log", env=auth_env)
        started.append(door)
        worker = start_worker(
            redis_url, variant, f"http://127.0.0.1:{serve.port}/invocations", tmp_path / "w.log"
        )
        started.append(worker)
        yield SimpleNamespace(door=door, serve=serve, worker=worker, root=tmp_path)


def test_an_onnx_model_answers_async_through_the_whole_path(stack: SimpleNamespace) -> None:
    answer = post(stack.door.url, ROWS, {"X-Berth-Api-Key": KEY, "Content-Type": "application/json"})
    assert answer.status == 202, answer.body
    done = wait_done(stack.door.url, answer.json["inferenceId"], timeout=30, headers=AUTH)
    assert done["state"] == "Succeeded", done
    output = json.loads(Path(answer.json["outputLocation"][len("file://") :]).read_text())
    sync = request(stack.serve.url + "/invocations", "POST", ROWS, {"X-Berth-Api-Key": KEY})
    assert output == json.loads(sync.body)  # the same answer as a real-time call


@pytest.mark.parametrize("rows", [1_000, 400_000])  # about 21 KB and 8 MB
def test_an_input_over_the_replicas_payload_limit_fails_with_that_reason(
    stack: SimpleNamespace, rows: int
) -> None:
    big = stack.root / "big.json"
    big.write_bytes(b"[" + b"[0.1, 0.2, 0.3, 0.4]," * rows + b"[0, 0, 0, 0]]")
    headers = {"X-Berth-Api-Key": KEY, "X-Berth-Input-Location": f"file://{big}"}
    answer = post(stack.door.url, None, headers)
    done = wait_done(stack.door.url, answer.json["inferenceId"], timeout=30, headers=AUTH)
    assert done["state"] == "Failed"
    size = big.stat().st_size
    # Past 16 payloads the replica's HTTP edge refuses it first, naming its body budget.
    limit = PAYLOAD_LIMIT if size < 16 * PAYLOAD_LIMIT else 16 * PAYLOAD_LIMIT
    assert done["reason"] == f"model answered 413: payload of {size} bytes is over the limit of {limit} bytes"


def test_a_missing_stored_input_fails_naming_it(stack: SimpleNamespace) -> None:
    missing = stack.root / "nothing-here.csv"
    answer = post(
        stack.door.url, None, {"X-Berth-Api-Key": KEY, "X-Berth-Input-Location": f"file://{missing}"}
    )
    done = wait_done(stack.door.url, answer.json["inferenceId"], timeout=30, headers=AUTH)
    assert (
        done["state"] == "Failed"
        and done["reason"] == f"cannot read file://{missing}: No such file or directory"
    )


def test_berth_invoke_async_waits_for_the_answer(stack: SimpleNamespace) -> None:
    """`berth invoke --async` against the front door (the gateway's path prefix is what
    `--url` adds; here the front door is reached directly through a prefix-less base)."""
    data = stack.root / "rows.json"
    data.write_bytes(ROWS)
    env = {"BERTH_API_KEY": KEY}
    base = stack.door.url
    done = subprocess.run(
        [BERTH, "invoke", "ep", "--async", "--data", f"@{data}", "--endpoint-url", base,
         "--inference-id", "cli-1", "--wait", "--wait-timeout", "30"],
        capture_output=True, env={**__import__("os").environ, **env}, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout) == json.loads(
        request(stack.serve.url + "/invocations", "POST", ROWS, {"X-Berth-Api-Key": KEY}).body
    )
    assert "cli-1" in done.stderr.decode() and "Succeeded" in done.stderr.decode()
    failed = subprocess.run(
        [BERTH, "invoke", "ep", "--async", "--data", "fail", "--endpoint-url", base,
         "--wait", "--wait-timeout", "30"],
        capture_output=True, env={**__import__("os").environ, **env}, timeout=60,
    )  # fmt: skip
    assert failed.returncode == 1
    assert "model answered 400" in failed.stderr.decode()

"""`python -m berth_serving serve` as a real process: configuration from BERTH_* variables,
drain on SIGTERM, and what the serving package imports."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import orjson
import pytest
from berth_serving.config import ServeConfig

from tests.serving.support import REPO, Response, free_port, request, serve_subprocess, wait_until


@pytest.mark.timeout(90)
def test_sigterm_drains_in_flight_requests_and_exits_0(slow_model) -> None:  # type: ignore[no-untyped-def]
    path, seconds = slow_model
    port = free_port()
    # Configured the way pods and local mode do it: BERTH_* variables from ServeConfig.to_env().
    env = ServeConfig(
        model_uri=str(path), variant="green", max_batch_size=1, timeout_seconds=30, access_log=True
    ).to_env()
    env.pop("BERTH_MODEL_URI")
    process = serve_subprocess(path, port, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: request(url + "/ping").status == 200, timeout=30)
        answers: list[Response] = []

        def slow_request() -> None:
            answers.append(
                request(
                    url + "/invocations",
                    "POST",
                    orjson.dumps([[0.1] * 64]),
                    {"Content-Type": "application/json"},
                    timeout=60,
                )
            )

        # max_batch_size=1: three requests run one after another, ~3 x `seconds` in all.
        clients = [threading.Thread(target=slow_request) for _ in range(3)]
        for client in clients:
            client.start()
        time.sleep(min(0.3, seconds / 3))
        process.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        ping = request(url + "/ping")
        assert ping.status == 503
        assert orjson.loads(ping.body)["error"]["message"] == "server is shutting down"
        late = request(
            url + "/invocations", "POST", orjson.dumps([[0.1] * 64]), {"Content-Type": "application/json"}
        )
        assert late.status == 503 and late.headers["retry-after"] == "1"
        for client in clients:
            client.join(60)
        assert [answer.status for answer in answers] == [200, 200, 200]
        assert all(answer.headers["x-berth-variant"] == "green" for answer in answers)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stderr = process.stderr.read().decode() if process.stderr else ""
        if process.stdout:
            process.stdout.close()
        if process.stderr:
            process.stderr.close()
    lines = [orjson.loads(line) for line in stderr.splitlines() if line.strip()]  # every line is JSON
    assert lines, stderr
    assert any(line["message"] == "draining" and line["signal"] == "SIGTERM" for line in lines)
    assert not any("Traceback" in line for line in stderr.splitlines())
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert any("POST /invocations" in line["message"] for line in access), (
        "BERTH_ACCESS_LOG=true logs requests"
    )


@pytest.mark.timeout(60)
def test_serving_does_not_import_the_control_plane() -> None:
    script = (
        "import sys\n"
        "import berth_serving.app, berth_serving.server, berth_serving.fetch\n"
        "from berth_serving.cli import main\n"
        "for args in (['serve', '--help'], ['fetch-model', '--help']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0, exit.code\n"
        "banned = ('kopf', 'kubernetes', 'aiohttp', 'berth_operator', 'kubernetes_asyncio')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in banned))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "--max-batch-delay-ms" in result.stdout and "--sha256" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.timeout(60)
def test_every_option_has_its_environment_variable() -> None:
    from berth_serving.cli import serve
    from berth_serving.config import ENV

    variables = {param.name: param.envvar for param in serve.params}
    for name, variable in ENV.items():
        assert variables[name] == variable, name

"""`berth invoke --async` without --wait, its usage errors, and answers read back from S3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from berth_operator.invoke import invoke_command, read_answer
from click.testing import CliRunner

from tests.asyncinf.support import Variant, start_frontdoor, status_of, write_routes

pytestmark = pytest.mark.timeout(60)


def test_without_wait_it_prints_the_id_and_locations(redis_url: str, tmp_path: Path) -> None:
    variant = Variant("blue", "cfg-1", 1.0, f"file://{tmp_path}/out/", f"file://{tmp_path}/failed/")
    routes = tmp_path / "routes.json"
    write_routes(routes, [variant])
    door = start_frontdoor(redis_url, routes, tmp_path / "frontdoor.log")
    try:
        runner = CliRunner()
        args = ["ep", "--async", "--endpoint-url", door.url, "--input-location", "s3://b/in.csv",
                "--content-type", "text/csv", "--inference-id", "cli-7", "--request-ttl", "120"]  # fmt: skip
        result = runner.invoke(invoke_command, args, env={"KUBECONFIG": str(tmp_path / "none")})
        assert result.exit_code == 0, result.output
        printed = json.loads(result.stdout)
        assert printed == {
            "inferenceId": "cli-7",
            "outputLocation": f"file://{tmp_path}/out/cli-7.out",
            "failureLocation": f"file://{tmp_path}/failed/cli-7-error.out",
        }
        assert status_of(door.url, "cli-7")["state"] == "Queued"
        refused = runner.invoke(invoke_command, ["ep", "--async", "--endpoint-url", door.url, "--data", "x",
                                                 "--inference-id", "bad/id"])  # fmt: skip
        assert refused.exit_code == 1 and "X-Berth-Inference-Id must be" in refused.output
    finally:
        assert door.stop() == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["ep", "--data", "x", "--wait"], "need --async"),
        (["ep", "--input-location", "s3://b/k"], "need --async"),
        (["ep", "--async"], "give --data or --input-location"),
        (["ep", "--async", "--data", "x", "--input-location", "s3://b/k"], "not both"),
        (["ep"], "give --data"),
        (
            ["ep", "--async", "--data", "x", "--invocation-timeout", "3601"],
            "3601 is not in the range 1<=x<=3600",
        ),
    ],
)
def test_usage_errors(args: list[str], expected: str) -> None:
    result = CliRunner().invoke(invoke_command, args)
    assert result.exit_code == 2 and expected in result.output


def test_an_answer_is_read_back_from_s3(s3: Any) -> None:
    s3.client.put_object(Bucket=s3.bucket, Key="out/a.out", Body=b'{"predictions": [1]}')
    assert read_answer(f"s3://{s3.bucket}/out/a.out") == b'{"predictions": [1]}'


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--invoke-url", "https://127.0.0.1:8080/invocations"), ("--success-webhook", "ftp://x/y")],
)
def test_the_worker_refuses_urls_it_cannot_use(flag: str, value: str) -> None:
    from berth_serving.asyncinf.cli import worker_command

    args = {"--redis-url": "redis://127.0.0.1:1/0", "--stream": "s", "--consumer": "c", "--max-concurrency": "1",
            "--variant": "v", "--endpoint-config": "c", "--invoke-url": "http://127.0.0.1:1/invocations"}  # fmt: skip
    args[flag] = value
    result = CliRunner().invoke(worker_command, [item for pair in args.items() for item in pair])
    assert result.exit_code == 2 and flag in result.output and "Traceback" not in result.output

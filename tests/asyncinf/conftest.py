"""Fixtures: a real redis-server per module, moto's S3 in server mode, small ONNX models."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from tests.serving import models
from tests.support.redisserver import RedisServer, running_redis
from tests.support.s3server import S3_ENV, running_moto


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The module's server, emptied for each test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def async_models(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("async-models")
    return SimpleNamespace(logreg=models.build_logreg(root / "logreg.onnx", n_features=4, zipmap=False))


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with running_moto() as endpoint:
        yield endpoint


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Any:
    """A boto3 client on a fresh bucket (named after the test); the environment (inherited by
    child processes) points boto3 at moto."""
    import boto3

    env = {**S3_ENV, "AWS_ENDPOINT_URL": moto_endpoint}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    bucket = "a-" + request.node.name.lower().replace("_", "-")[:50].strip("-")
    client.create_bucket(Bucket=bucket)
    return SimpleNamespace(client=client, bucket=bucket, endpoint=moto_endpoint, env=env)

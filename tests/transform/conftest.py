"""Fixtures: small ONNX models (built once), and moto's S3 in server mode on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from tests.operator.conftest import cluster, start_operator  # noqa: F401 - KMock and kopf fixtures
from tests.serving import models
from tests.support.s3server import S3_ENV, running_moto


@pytest.fixture(scope="session")
def transform_models(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("transform-models")
    return SimpleNamespace(
        logreg=models.build_logreg(root / "logreg.onnx", n_features=4, zipmap=False),
        zipmap=models.build_logreg(root / "zipmap.onnx", n_features=4),
        mlp=models.build_mlp(root / "mlp.onnx", sizes=(8, 16, 3)),
        identity=models.build_identity(root / "identity.onnx", n_features=16),
        two_input=models.build_two_input(root / "two_input.onnx", n_features=2),
        fixed_batch=models.build_fixed_batch(root / "fixed_batch.onnx", n_features=4),
    )


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with running_moto() as endpoint:
        yield endpoint


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Any:
    """A boto3 client on a fresh bucket (named after the test); the environment points boto3 at moto."""
    import boto3

    for name, value in {**S3_ENV, "AWS_ENDPOINT_URL": moto_endpoint}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    bucket = "t-" + request.node.name.lower().replace("_", "-")[:50].strip("-")
    client.create_bucket(Bucket=bucket)
    return SimpleNamespace(client=client, bucket=bucket, endpoint=moto_endpoint)

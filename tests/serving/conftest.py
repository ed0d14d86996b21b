"""Session-wide ONNX models for the serving tests (built once, a few hundred ms)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving import models
from tests.support.s3server import running_moto


class Models:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.logreg = models.build_logreg(root / "logreg.onnx")
        self.logreg_plain = models.build_logreg(root / "logreg_plain.onnx", zipmap=False)
        self.mlp = models.build_mlp(root / "mlp.onnx", sizes=(32, 64, 8))
        self.identity = models.build_identity(root / "identity.onnx")
        self.two_input = models.build_two_input(root / "two_input.onnx")
        self.fixed_batch = models.build_fixed_batch(root / "fixed_batch.onnx")


@pytest.fixture(scope="session")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return Models(tmp_path_factory.mktemp("serving-models"))


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """A Loop model calibrated on this machine to take about a second per call; returns
    (path, measured seconds), so tests rely on a measurement, not on a guess."""
    import time

    import numpy as np
    import onnxruntime as ort

    root = tmp_path_factory.mktemp("slow-model")
    probe = models.build_slow(root / "probe.onnx", iterations=20_000)
    session = ort.InferenceSession(str(probe), providers=["CPUExecutionProvider"])
    feed = {"x": np.full((1, 64), 0.1, dtype=np.float32)}
    session.run(None, feed)
    started = time.perf_counter()
    session.run(None, feed)
    per_iteration = (time.perf_counter() - started) / 20_000
    iterations = max(20_000, int(1.0 / per_iteration))
    path = models.build_slow(root / "slow.onnx", iterations=iterations)
    return path, per_iteration * iterations


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    with running_moto() as endpoint:
        yield endpoint


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    import boto3

    for name, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    client.create_bucket(Bucket="models")
    return client

"""Open Inference Protocol v2 under a multi-variant endpoint, through `berth up`'s router.

Weighted routing once sent /v2/models/VARIANT-MODEL/infer to either variant, and each replica knew
only its own model's name: tritonclient failed 11 of 40 calls. Every replica now answers for the
endpoint's name (weighted), and the route sends a model's name to the variants serving it.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from .conftest import N_FEATURES, ROW
from .support import BerthUp, config, endpoint, model, variant, write_yaml

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def two_models(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BerthUp]:
    tmp = tmp_path_factory.mktemp("v2-up")
    manifests = tmp / "manifests"
    manifests.mkdir()
    other = tmp / "logreg-b.onnx"
    shutil.copyfile(model_dir / "logreg.onnx", other)
    write_yaml(
        manifests / "all.yaml",
        [
            model("model-a", f"file://{model_dir / 'logreg.onnx'}"),
            model("model-b", f"file://{other}"),
            config("two-v1", [variant("a", "model-a", 1), variant("b", "model-b", 1)]),
            endpoint("two", "two-v1"),
        ],
    )
    up = BerthUp(manifests, tmp, "--no-watch")
    try:
        up.wait_in_service("two")
        yield up
    finally:
        up.stop()


def infer(url: str, model_name: str, count: int) -> int:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url)
    try:
        answered = 0
        for _ in range(count):
            tensor = triton.InferInput("x", [1, N_FEATURES], "FP32")
            tensor.set_data_from_numpy(np.asarray([ROW], dtype=np.float32))
            result = client.infer(model_name, [tensor])
            first_output = result.get_response()["outputs"][0]["name"]
            answered += result.as_numpy(first_output) is not None
        return answered
    finally:
        client.close()


def test_tritonclient_under_the_endpoint_prefix_never_misses(two_models: BerthUp) -> None:
    base = f"127.0.0.1:{two_models.port}/endpoints/default/two"
    assert infer(base, "two", 40) == 40  # the endpoint's name: any variant answers it
    assert infer(base, "model-a", 20) == 20  # a variant's model name: that variant answers it
    assert infer(base, "model-b", 20) == 20


def test_a_models_name_reaches_the_variant_that_serves_it(two_models: BerthUp) -> None:
    prefix = f"http://127.0.0.1:{two_models.port}/endpoints/default/two/v2/models"
    body = {"inputs": [{"name": "x", "shape": [1, N_FEATURES], "datatype": "FP32", "data": ROW}]}
    for name, only in (("model-a", "a"), ("model-b", "b")):
        answered = Counter(
            httpx.post(f"{prefix}/{name}/infer", json=body).headers["x-berth-variant"] for _ in range(20)
        )
        assert answered == Counter({only: 20})
        metadata = httpx.get(f"{prefix}/{name}").json()
        assert metadata["name"] == name
    weighted = Counter(
        httpx.post(f"{prefix}/two/infer", json=body).headers["x-berth-variant"] for _ in range(60)
    )
    assert set(weighted) == {"a", "b"}
    answer = httpx.post(f"{prefix}/two/infer", json=body)
    assert answer.json()["model_name"] == "two" and answer.headers["x-berth-endpoint-config"] == "two-v1"

"""Fixtures: small ONNX models, and one shared `berth up` serving several endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving.models import build_logreg, build_slow

from .support import BerthUp, config, endpoint, model, variant, write_yaml

N_FEATURES = 4
ROW = [0.5, -1.0, 0.25, 2.0]
SLOW_ITERATIONS = 60_000  # about 0.1 s per call on these machines


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    build_logreg(directory / "logreg.onnx", n_features=N_FEATURES, zipmap=False)
    build_slow(directory / "slow.onnx", n_features=N_FEATURES, iterations=SLOW_ITERATIONS)
    (directory / "garbage.onnx").write_bytes(b"this is not an onnx model")
    build_failing(directory / "failing.onnx")
    return directory


def build_failing(path: Path) -> Path:
    """Loads fine, fails at run time: reshapes 4 values per row into rows of 3 (a 500 answer)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "failing",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", N_FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array([3, -1], dtype=np.int64), "shape")],
    )
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model_proto.ir_version = 8
    onnx.save(model_proto, str(path))
    return path


@pytest.fixture(scope="module")
def shared_up(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BerthUp]:
    """Endpoints: `split` (a 70 / b 30), `mirrored` (p, and shadow s on a slow model), `crashy`,
    `broken-fetch` (a model file that does not exist)."""
    tmp = tmp_path_factory.mktemp("shared-up")
    manifests = tmp / "manifests"
    manifests.mkdir()
    write_yaml(
        manifests / "models.yaml",
        [
            model("logreg", f"file://{model_dir / 'logreg.onnx'}"),
            model("slow", f"file://{model_dir / 'slow.onnx'}"),
            model("missing", "file://does-not-exist.onnx"),
        ],
    )
    write_yaml(
        manifests / "endpoints.yaml",
        [
            config("split-v1", [variant("a", "logreg", 70), variant("b", "logreg", 30)]),
            endpoint("split", "split-v1"),
            config("mirrored-v1", [variant("p", "logreg")], [variant("s", "slow")]),
            endpoint("mirrored", "mirrored-v1"),
            config("crashy-v1", [variant("only", "logreg")]),
            endpoint("crashy", "crashy-v1"),
            config("fetch-v1", [variant("only", "missing")]),
            endpoint("broken-fetch", "fetch-v1"),
        ],
    )
    up = BerthUp(manifests, tmp, "--no-watch", env={"BERTH_UP_LIVENESS_SECONDS": "3"})
    try:
        up.wait_in_service("split", "mirrored", "crashy")
        yield up
    finally:
        up.stop()

"""Small, deterministic ONNX models for tests and benchmarks (no downloads).

Other test suites import the `build_*` functions: each writes one .onnx file and returns
its path. Same arguments, same bytes: weights come from fixed seeds.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# ONNX Runtime 1.31 reads IR 10 / opset 21 at most; stay well inside that.
_OPSET = 17
_IR_VERSION = 8


def _save(model: onnx.ModelProto, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="berth-tests"
    )


def build_logreg(path: Path | str, n_features: int = 16, zipmap: bool = True) -> Path:
    """scikit-learn LogisticRegression (3 classes) through skl2onnx: input `x` float32[N, n_features].
    Outputs: `output_label` int64[N] and `output_probability` (a ZipMap sequence of maps), or with
    zipmap=False `label` int64[N] and `probabilities` float32[N, 3]."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, n_features)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(np.int64) + (features[:, 1] > 0.5).astype(np.int64)
    classifier = LogisticRegression(max_iter=500).fit(features, labels)
    options = {id(classifier): {"zipmap": zipmap}}
    model = to_onnx(
        classifier,
        initial_types=[("x", FloatTensorType([None, n_features]))],
        options=options,
        target_opset={"": _OPSET, "ai.onnx.ml": 3},
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_mlp(path: Path | str, sizes: Sequence[int] = (256, 1024, 1024, 10)) -> Path:
    """A ReLU MLP with a dynamic batch dimension: `x` float32[N, sizes[0]] -> `y` float32[N, sizes[-1]]."""
    rng = np.random.default_rng(1)
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    current = "x"
    layers = list(itertools.pairwise(sizes))
    for index, (fan_in, fan_out) in enumerate(layers):
        weight = (rng.normal(size=(fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        bias = (rng.normal(size=(fan_out,)) * 0.01).astype(np.float32)
        initializers += [
            numpy_helper.from_array(weight, f"w{index}"),
            numpy_helper.from_array(bias, f"b{index}"),
        ]
        last = index == len(layers) - 1
        gemm_out = "y" if last else f"h{index}"
        nodes.append(helper.make_node("Gemm", [current, f"w{index}", f"b{index}"], [gemm_out]))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"r{index}"]))
            current = f"r{index}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", sizes[-1]])],
        initializer=initializers,
    )
    return _save(_model(graph), path)


def build_identity(path: Path | str, n_features: int = 16) -> Path:
    """No-op model: `x` float32[N, n_features] -> `y` (the same tensor). Measures pure server overhead."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_features])],
    )
    return _save(_model(graph), path)


def build_fixed_batch(path: Path | str, n_features: int = 16) -> Path:
    """A model whose batch dimension is fixed to 1: `x` float32[1, n_features] -> `y` = 2 * x."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "fixed_batch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n_features])],
        initializer=[numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")],
    )
    return _save(_model(graph), path)


def build_two_input(path: Path | str, n_features: int = 4) -> Path:
    """Two inputs, two outputs: `a` float32[N, n_features] and `b` int64[N, 1] ->
    `sum` = a + b (float32[N, n_features]) and `scaled` = a * 10 (float32[N, n_features])."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["b"], ["b_float"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["a", "b_float"], ["sum"]),
            helper.make_node("Mul", ["a", "ten"], ["scaled"]),
        ],
        "two_input",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", n_features]),
            helper.make_tensor_value_info("b", TensorProto.INT64, ["N", 1]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", n_features]),
            helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["N", n_features]),
        ],
        initializer=[numpy_helper.from_array(np.array(10.0, dtype=np.float32), "ten")],
    )
    return _save(_model(graph), path)


def build_slow(path: Path | str, n_features: int = 64, iterations: int = 200_000) -> Path:
    """A genuinely slow model: a Loop applying tanh(x @ W) `iterations` times.
    `x` float32[N, n_features] -> `y` float32[N, n_features]. Time grows linearly with
    `iterations`; tests calibrate it with a raw ONNX Runtime run rather than trusting a constant."""
    rng = np.random.default_rng(2)
    weight = (rng.normal(size=(n_features, n_features)) / np.sqrt(n_features)).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["state_in", "w"], ["product"]),
            helper.make_node("Tanh", ["product"], ["state_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, None),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trip_count", "keep_going", "x"], ["y"], body=body)],
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_features])],
        initializer=[
            numpy_helper.from_array(np.array(iterations, dtype=np.int64), "trip_count"),
            numpy_helper.from_array(np.array(True), "keep_going"),
            numpy_helper.from_array(weight, "w"),
        ],
    )
    return _save(_model(graph), path)


def build_failing(path: Path | str, n_features: int = 4) -> Path:
    """Fails inside ONNX Runtime (a Reshape to [3, -1]) unless the batch holds a multiple of
    3 rows: `x` float32[N, n_features] -> `y`. For testing how runtime errors are answered."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "failing",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, None])],
        initializer=[numpy_helper.from_array(np.array([3, -1], dtype=np.int64), "shape")],
    )
    return _save(_model(graph), path)

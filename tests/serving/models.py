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


def build_reshape_rows(path: Path | str) -> Path:
    """Outputs that are not batch-aligned: `x` float32[N, 4] -> `y` float32[K, 2] (a Reshape to
    [-1, 2], so K = 2N) and `s` float32[N, 4] = x + 1. Merging two requests and splitting `y` by
    rows would hand each client rows of the other's answer."""
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "shape"], ["y"]),
            helper.make_node("Add", ["x", "one"], ["s"]),
        ],
        "reshape_rows",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["K", 2]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 4]),
        ],
        initializer=[
            numpy_helper.from_array(np.array([-1, 2], dtype=np.int64), "shape"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        ],
    )
    return _save(_model(graph), path)


def build_detections(path: Path | str) -> Path:
    """A detections-style model: `x` float32[N, 4] -> `boxes` int64[num_detections, 2], the
    (row, column) of every value above 0.5 (NonZero, transposed). The number of answers has
    nothing to do with the number of rows."""
    graph = helper.make_graph(
        [
            helper.make_node("Greater", ["x", "half"], ["mask"]),
            helper.make_node("NonZero", ["mask"], ["where"]),
            helper.make_node("Transpose", ["where"], ["boxes"], perm=[1, 0]),
        ],
        "detections",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("boxes", TensorProto.INT64, ["num_detections", 2])],
        initializer=[numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half")],
    )
    return _save(_model(graph), path)


def build_batch_mean(path: Path | str) -> Path:
    """A model whose answer depends on the whole batch: `x` float32[N, 4] -> `y` float32[N, 4]
    = x - mean(x over the batch). Its signature looks batch-aligned; such a model must be
    served with max batch size 1 (what the README says)."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x"], ["mean"], axes=[0], keepdims=1),
            helper.make_node("Sub", ["x", "mean"], ["y"]),
        ],
        "batch_mean",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def build_anonymous_rows(path: Path | str) -> Path:
    """Every dimension anonymous, as skl2onnx writes them: `x` float32[?, 4] -> `y` = x * 3 + 1,
    row-wise as its graph shows (nothing in the signature says so)."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "three"], ["tripled"]),
            helper.make_node("Add", ["tripled", "one"], ["y"]),
        ],
        "anonymous_rows",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        initializer=[
            numpy_helper.from_array(np.array(3.0, dtype=np.float32), "three"),
            numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
        ],
    )
    return _save(_model(graph), path)


def build_label_encoder(path: Path | str) -> Path:
    """A string-input model: `text` string[N, 1] -> `code` int64[N, 1] (ai.onnx.ml LabelEncoder:
    "cat" 0, "dog" 1, "bird" 2, anything else -1) and `echo` string[N, 1] (the input)."""
    graph = helper.make_graph(
        [
            helper.make_node(
                "LabelEncoder",
                ["text"],
                ["code"],
                domain="ai.onnx.ml",
                keys_strings=["cat", "dog", "bird"],
                values_int64s=[0, 1, 2],
                default_int64=-1,
            ),
            helper.make_node("Identity", ["text"], ["echo"]),
        ],
        "label_encoder",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["N", 1])],
        [
            helper.make_tensor_value_info("code", TensorProto.INT64, ["N", 1]),
            helper.make_tensor_value_info("echo", TensorProto.STRING, ["N", 1]),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _OPSET), helper.make_opsetid("ai.onnx.ml", 2)],
        producer_name="berth-tests",
    )
    return _save(model, path)


# The element types build_typed takes, by input name.
TYPED_INPUTS = {
    "i8": TensorProto.INT8,
    "u8": TensorProto.UINT8,
    "i64": TensorProto.INT64,
    "u64": TensorProto.UINT64,
    "f16": TensorProto.FLOAT16,
    "f32": TensorProto.FLOAT,
    "flag": TensorProto.BOOL,
}


def build_typed(path: Path | str) -> Path:
    """One input per element type in TYPED_INPUTS, each [N, 1], each answered as is by an
    Identity output `NAME_out`: for checking what each dtype accepts and refuses."""
    graph = helper.make_graph(
        [helper.make_node("Identity", [name], [f"{name}_out"]) for name in TYPED_INPUTS],
        "typed",
        [helper.make_tensor_value_info(name, kind, ["N", 1]) for name, kind in TYPED_INPUTS.items()],
        [helper.make_tensor_value_info(f"{name}_out", kind, ["N", 1]) for name, kind in TYPED_INPUTS.items()],
    )
    return _save(_model(graph), path)


def build_offset(path: Path | str, offset: float, n_features: int = 4, padding_bytes: int = 0) -> Path:
    """`x` float32[N, n_features] -> `y` = x + offset: each of many models answers its own
    numbers (multi-model tests). `padding_bytes` adds an unused weight, to make it that large
    in memory."""
    nodes = [helper.make_node("Add", ["x", "offset"], ["y"])]
    initializers = [numpy_helper.from_array(np.full((1, n_features), offset, np.float32), "offset")]
    if padding_bytes:
        padding = np.arange(padding_bytes // 4, dtype=np.float32)
        initializers.append(numpy_helper.from_array(padding, "padding"))
        nodes.append(helper.make_node("Shape", ["padding"], ["padding_shape"]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_features])]
    graph = helper.make_graph(
        nodes,
        "offset",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_features])],
        outputs,
        initializer=initializers,
    )
    return _save(_model(graph), path)


def build_scaler(path: Path | str, n_features: int = 4) -> Path:
    """scikit-learn StandardScaler through skl2onnx: `x` float32[N, n_features] -> `variable`
    float32[N, n_features] (a pipeline's preprocessing stage)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    scaler = StandardScaler().fit(rng.normal(3.0, 2.0, size=(200, n_features)).astype(np.float32))
    model = to_onnx(scaler, initial_types=[("x", FloatTensorType([None, n_features]))], target_opset=_OPSET)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_postprocess(path: Path | str, n_classes: int = 3) -> Path:
    """`probabilities` float32[N, n_classes] -> `confidence` float32[N, 1] (the largest) and
    `percent` float32[N, n_classes] (times 100): a pipeline's postprocessing stage."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["probabilities"], ["confidence"], axes=[1], keepdims=1),
            helper.make_node("Mul", ["probabilities", "hundred"], ["percent"]),
        ],
        "postprocess",
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_classes])],
        [
            helper.make_tensor_value_info("confidence", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("percent", TensorProto.FLOAT, ["N", n_classes]),
        ],
        initializer=[numpy_helper.from_array(np.array(100.0, dtype=np.float32), "hundred")],
    )
    return _save(_model(graph), path)

"""Build the pipeline example's three stages: no download, same bytes every run.

scaler.onnx       a scikit-learn StandardScaler: x float32[N,4] -> variable float32[N,4]
classifier.onnx   a scikit-learn LogisticRegression (3 classes) on the scaled features:
                  x float32[N,4] -> label int64[N], probabilities float32[N,3]
postprocess.onnx  probabilities float32[N,3] -> confidence float32[N,1] (the largest) and
                  percent float32[N,3] (times 100)

The stages are wired by name, else by position: the scaler's one output feeds the classifier's
one input; the Model keeps only the classifier's `probabilities` (stage `outputs`), which feed
the postprocessing stage by name. Existing files are kept (--force rebuilds).

    python examples/pipeline/build_models.py [--force] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
N_FEATURES = 4
OPSET = 17


def build_scaler(path: Path) -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    scaler = StandardScaler().fit(rng.normal(3.0, 2.0, size=(200, N_FEATURES)).astype(np.float32))
    model = to_onnx(scaler, initial_types=[("x", FloatTensorType([None, N_FEATURES]))], target_opset=OPSET)
    _write(path, model.SerializeToString())


def build_classifier(path: Path) -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, N_FEATURES)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(np.int64) + (features[:, 1] > 0.5).astype(np.int64)
    classifier = LogisticRegression(max_iter=500).fit(features, labels)
    model = to_onnx(
        classifier,
        initial_types=[("x", FloatTensorType([None, N_FEATURES]))],
        options={id(classifier): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 3},
    )
    _write(path, model.SerializeToString())


def build_postprocess(path: Path, n_classes: int = 3) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

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
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="berth")
    model.ir_version = 8
    onnx.checker.check_model(model)
    _write(path, model.SerializeToString())


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


STAGES = {"scaler": build_scaler, "classifier": build_classifier, "postprocess": build_postprocess}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the files exist")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where to write the .onnx files")
    args = parser.parse_args()
    for name, build in STAGES.items():
        path = args.out_dir / f"{name}.onnx"
        if path.exists() and not args.force:
            print(f"{path} exists (--force rebuilds)")
            continue
        build(path)
        print(f"built {path}")


if __name__ == "__main__":
    main()

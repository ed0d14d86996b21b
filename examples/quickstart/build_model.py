"""Build the quickstart's two models: no download, same bytes every run.

champion.onnx and challenger.onnx are scikit-learn logistic regressions on the iris data
set (bundled with scikit-learn), converted with skl2onnx. The challenger is trained on a
resample with stronger regularization, so its probabilities differ from the champion's
and `berth invoke` shows which variant answered. Existing files are kept (--force rebuilds).

    python examples/quickstart/build_model.py [--force] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
N_FEATURES = 4  # sepal length, sepal width, petal length, petal width (cm)
MODELS = {"champion": {"seed": 0, "c": 1.0}, "challenger": {"seed": 1, "c": 0.05}}


def build(path: Path, seed: int, c: float) -> Path:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, labels = load_iris(return_X_y=True)
    if seed:  # a bootstrap resample: same size, different rows
        rows = np.random.default_rng(seed).integers(0, len(labels), len(labels))
        features, labels = features[rows], labels[rows]
    classifier = LogisticRegression(C=c, max_iter=1000).fit(features.astype(np.float32), labels)
    model = to_onnx(
        classifier,
        initial_types=[("x", FloatTensorType([None, N_FEATURES]))],
        options={id(classifier): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the files exist")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where to write the .onnx files")
    args = parser.parse_args()
    for name, params in MODELS.items():
        path = args.out_dir / f"{name}.onnx"
        if path.exists() and not args.force:
            print(f"{path} exists (--force rebuilds)")
            continue
        build(path, params["seed"], params["c"])
        print(f"built {path}")


if __name__ == "__main__":
    main()

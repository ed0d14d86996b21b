"""An inference pipeline in `berth up`, with real processes: a Model with three ONNX stages
(StandardScaler, classifier, postprocessing) served by `berth serve --pipeline` answers what the
three raw ONNX Runtime sessions answer by hand; a pipeline with an image stage is refused with a
message naming the stage (local mode runs no containers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.serving.models import build_logreg, build_postprocess, build_scaler

from .support import BerthUp, config, endpoint, model, variant, write_yaml

pytestmark = pytest.mark.timeout(180)
ROWS = [[1.0, 2.0, 3.0, 4.0], [0.5, 5.0, -1.0, 2.5]]


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline-stages")
    return {
        "scaler": build_scaler(root / "scaler.onnx"),
        "classifier": build_logreg(root / "classifier.onnx", n_features=4, zipmap=False),
        "postprocess": build_postprocess(root / "postprocess.onnx"),
    }


def pipeline_model(stages: dict[str, Path], *extra: dict[str, object]) -> dict[str, object]:
    found = model("risk", "file:///unused.onnx")
    spec = found["spec"]
    assert isinstance(spec, dict)
    del spec["modelUri"]
    spec["pipeline"] = [
        {"name": "scale", "modelUri": f"file://{stages['scaler']}"},
        {"name": "classify", "modelUri": f"file://{stages['classifier']}", "outputs": ["probabilities"]},
        {"name": "post", "modelUri": f"file://{stages['postprocess']}"},
        *extra,
    ]
    return found


@pytest.fixture(scope="module")
def up(stages: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[BerthUp]:
    tmp = tmp_path_factory.mktemp("pipeline-up")
    manifests = tmp / "manifests"
    manifests.mkdir()
    write_yaml(
        manifests / "all.yaml",
        [pipeline_model(stages), config("risk-v1", [variant("main", "risk")]), endpoint("risk", "risk-v1")],
    )
    served = BerthUp(manifests, tmp, "--no-watch")
    try:
        served.wait_in_service("risk", timeout=90)
        yield served
    finally:
        assert served.stop() == 0, served.log()[-3000:]


def test_the_pipeline_answers_what_its_stages_answer_by_hand(up: BerthUp, stages: dict[str, Path]) -> None:
    scaler, classifier, post = (
        ort.InferenceSession(str(stages[k])) for k in ("scaler", "classifier", "postprocess")
    )
    _, probabilities = classifier.run(None, {"x": scaler.run(None, {"x": np.array(ROWS, np.float32)})[0]})
    confidence, percent = post.run(None, {"probabilities": probabilities})
    response = up.invoke("risk", ROWS)
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    np.testing.assert_allclose(outputs["confidence"], confidence, rtol=1e-6)
    np.testing.assert_allclose(outputs["percent"], percent, rtol=1e-6)


def test_an_image_stage_is_refused_naming_it(stages: dict[str, Path], tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    image = {"name": "explain", "image": "registry.example/explain:1", "port": 8081}
    write_yaml(
        manifests / "all.yaml",
        [
            pipeline_model(stages, image),
            config("risk-v1", [variant("main", "risk")]),
            endpoint("risk", "risk-v1"),
        ],
    )
    served = BerthUp(manifests, tmp_path, "--no-watch")
    try:
        # Refused when the manifests are read: berth up exits 1 at once, before serving anything.
        served.process.wait(timeout=60)
    finally:
        code = served.stop()
    assert code == 1, served.log()[-2000:]
    log = served.log()
    assert "pipeline stage explain (image registry.example/explain:1)" in log
    assert "cannot run an image stage" in log

"""examples/pipeline as its README runs it: build_models.py builds the three stages, a real
`berth up` serves the example's manifests (its relative file:// stage URIs), and the answer is
what the three raw ONNX Runtime sessions give chained by hand; the metrics time each stage. A
copy whose last stage cannot take the classifier's output never gets ready, and the replica's
error names both signatures."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from .support import BerthUp

pytestmark = pytest.mark.timeout(240)
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pipeline"
ROWS = [[1.0, 2.0, 3.0, 4.0], [0.5, 5.0, -1.0, 2.5], [3.0, 3.0, 3.0, 3.0]]


def copy_of_example(tmp: Path) -> Path:
    """The example's manifests and the stages its build script makes, in a directory of their own."""
    directory = tmp / "pipeline"
    directory.mkdir()
    for manifest in EXAMPLE.glob("*.yaml"):
        shutil.copy(manifest, directory)
    built = subprocess.run(
        [sys.executable, str(EXAMPLE / "build_models.py"), "--out-dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    return directory


def by_hand(directory: Path, rows: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    scale, classify, post = (
        ort.InferenceSession(str(directory / f"{name}.onnx"))
        for name in ("scaler", "classifier", "postprocess")
    )
    _, probabilities = classify.run(None, {"x": scale.run(None, {"x": np.array(rows, np.float32)})[0]})
    confidence, percent = post.run(None, {"probabilities": probabilities})
    return confidence, percent


def test_the_example_answers_what_its_stages_answer_by_hand(tmp_path: Path) -> None:
    directory = copy_of_example(tmp_path)
    served = BerthUp(directory, tmp_path, "--no-watch")
    try:
        served.wait_in_service("risk", timeout=120)
        confidence, percent = by_hand(directory, ROWS)
        for _ in range(4):  # both replicas, whichever the router picks
            response = served.invoke("risk", ROWS)
            assert response.status_code == 200, response.text
            outputs = response.json()["outputs"]
            np.testing.assert_allclose(outputs["confidence"], confidence, rtol=1e-6)
            np.testing.assert_allclose(outputs["percent"], percent, rtol=1e-6)
        replicas = served.endpoint("risk")["replicas"]
        assert len(replicas) == 2
        counted = 0.0
        for replica in replicas:
            metrics = served.client.get(f"http://127.0.0.1:{replica['port']}/metrics").text
            for stage in ("scale", "classify", "postprocess"):
                line = next(
                    row
                    for row in metrics.splitlines()
                    if row.startswith("berth_stage_latency_seconds_count") and f'stage="{stage}"' in row
                )
                assert 'model="risk-pipeline"' in line
                counted += float(line.rsplit(" ", 1)[1])
        assert counted == 4 * 3  # each request through each of the three stages once
    finally:
        assert served.stop() == 0, served.log()[-3000:]


def test_a_stage_that_cannot_take_the_last_ones_output_is_named_with_both_signatures(tmp_path: Path) -> None:
    directory = copy_of_example(tmp_path)
    # The example's own script (loaded by path: examples/multimodel has a build_models.py too)
    # makes a postprocessing stage for 5 classes.
    spec = importlib.util.spec_from_file_location("pipeline_build_models", EXAMPLE / "build_models.py")
    assert spec is not None and spec.loader is not None
    build_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_models)
    build_models.build_postprocess(directory / "postprocess.onnx", n_classes=5)
    served = BerthUp(directory, tmp_path, "--no-watch")
    try:

        def said() -> bool:
            errors = [r["lastError"] for r in served.endpoint("risk")["replicas"]]
            return any("cannot feed" in error for error in errors)

        served.wait(said, timeout=90, what="a replica saying why the pipeline cannot load")
        error = next(
            r["lastError"] for r in served.endpoint("risk")["replicas"] if "cannot feed" in r["lastError"]
        )
        assert "stage 'classify' cannot feed stage 'postprocess'" in error
        assert "'classify' gives probabilities float32[N,3]" in error
        assert "'postprocess' takes probabilities float32[N,5]" in error
        assert served.endpoint("risk")["status"]["phase"] != "InService"
    finally:
        assert served.stop() == 0, served.log()[-3000:]

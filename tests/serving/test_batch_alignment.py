"""Answers never cross between clients: requests are merged into one ONNX Runtime call only
when every output's first dimension is provably the inputs' batch dimension, and the
answer of each request is raw ONNX Runtime's answer on that request's own rows."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from berth_serving.signature import Signature

from tests.serving import models
from tests.serving.support import post_concurrently, serving
from tests.serving.test_server import metric

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def alignment_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("alignment-models")
    return {
        "reshape": models.build_reshape_rows(root / "reshape.onnx"),
        "detections": models.build_detections(root / "detections.onnx"),
        "anonymous": models.build_anonymous_rows(root / "anonymous.onnx"),
        "batch_mean": models.build_batch_mean(root / "batch_mean.onnx"),
    }


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_batchable_only_when_every_output_follows_the_batch_dimension(
    onnx_models, alignment_models: dict[str, Path]
) -> None:  # type: ignore[no-untyped-def]
    def batchable(path: Path) -> bool:
        return Signature.from_session(session(path), model_path=path).batchable

    # Declared: every output's first dimension is the inputs' own symbolic N.
    assert batchable(onnx_models.mlp)
    assert batchable(onnx_models.two_input)
    # [N,4] -> [K,2] and [num_detections,2]: other symbols, so never merged.
    assert not batchable(alignment_models["reshape"])
    assert not batchable(alignment_models["detections"])
    assert not batchable(onnx_models.fixed_batch)
    # skl2onnx writes anonymous dimensions and a ZipMap sequence: the graph shows them row-wise.
    assert batchable(onnx_models.logreg)
    assert batchable(onnx_models.logreg_plain)
    assert batchable(alignment_models["anonymous"])
    # Without the graph, anonymous dimensions prove nothing.
    assert not Signature.from_session(session(onnx_models.logreg_plain), model_path=None).batchable
    # A signature can only promise that row counts match: a whole-batch model looks batchable
    # (the README says to serve it with maxBatchSize 1).
    assert batchable(alignment_models["batch_mean"])


def request_rows(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        np.round(rng.uniform(0, 1, size=(1 + index % 3, 4)), 3).astype(np.float32) for index in range(count)
    ]


@pytest.mark.parametrize(
    ("model", "aligned"),
    [("reshape", False), ("detections", False), ("mlp", True), ("logreg", True)],
)
def test_every_concurrent_answer_is_raw_ort_on_its_own_rows(
    onnx_models, alignment_models: dict[str, Path], model: str, aligned: bool
) -> None:  # type: ignore[no-untyped-def]
    path = alignment_models.get(model) or getattr(onnx_models, model)
    raw = session(path)
    width = raw.get_inputs()[0].shape[1]
    names = [output.name for output in raw.get_outputs()]
    count = 1000
    inputs = [rows if width == 4 else np.tile(rows, width // 4) for rows in request_rows(count, seed=11)]
    bodies = [orjson.dumps({"inputs": {"x": rows.tolist()}}) for rows in inputs]
    with serving(path, max_batch_size=64) as server:
        started = time.monotonic()
        answers = post_concurrently(server.url, "/invocations", bodies, concurrency=250, timeout=120)
        elapsed = time.monotonic() - started
        batches = metric(server.url, "berth_batch_size_count")
        rows_run = metric(server.url, "berth_batch_size_sum")
    assert elapsed < 120
    for rows, (status, body) in zip(inputs, answers, strict=True):
        assert status == 200, body
        document = orjson.loads(body)
        got = document["outputs"] if "outputs" in document else {names[0]: document["predictions"]}
        expected = dict(zip(names, raw.run(None, {"x": rows}), strict=True))
        for name in names:
            if isinstance(expected[name], list):  # ZipMap: a list of {class: probability}
                assert len(got[name]) == len(expected[name])
                for got_row, expected_row in zip(got[name], expected[name], strict=True):
                    assert set(got_row) == {str(k) for k in expected_row}
                    assert [got_row[str(k)] for k in expected_row] == pytest.approx(
                        list(expected_row.values()), rel=1e-5, abs=1e-6
                    )
            else:
                got_array = np.asarray(got[name])
                if expected[name].size == 0:  # JSON writes an empty [0,2] as []
                    got_array = got_array.reshape(expected[name].shape)
                np.testing.assert_allclose(got_array, expected[name], rtol=1e-5, atol=1e-6)
    assert rows_run == sum(len(rows) for rows in inputs)
    if aligned:
        assert batches < count, "no two requests were ever merged"
    else:
        assert batches == count, "requests were merged on a model whose outputs are not batch-aligned"

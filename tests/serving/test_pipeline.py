"""Inference pipelines on a real server: a StandardScaler stage (skl2onnx), a classifier and a
postprocessing stage answer exactly what the three raw ONNX Runtime sessions answer by hand;
a wiring that cannot work is refused at load naming both signatures; an image stage (a real
`berth serve` process on loopback, as a sidecar honouring the contract) in the middle; a
failing stage named in X-Berth-Failed-Stage with its status passed through."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from berth_serving.config import PipelineStage

from tests.serving import models
from tests.serving.support import free_port, request, serve_subprocess, serving, wait_until

ROWS = [[1.0, 2.0, 3.0, 4.0], [0.5, 5.0, -1.0, 2.5], [3.0, 3.0, 3.0, 3.0]]
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    return {
        "scaler": models.build_scaler(root / "scaler.onnx"),
        "classifier": models.build_logreg(root / "classifier.onnx", n_features=4, zipmap=False),
        "postprocess": models.build_postprocess(root / "postprocess.onnx"),
        "wide": models.build_postprocess(root / "wide.onnx", n_classes=5),
    }


def by_hand(stages: dict[str, Path], rows: list[list[float]]) -> dict[str, np.ndarray]:
    """The three raw sessions, chained by hand."""
    scaler, classifier, post = (
        ort.InferenceSession(str(stages[k])) for k in ("scaler", "classifier", "postprocess")
    )
    scaled = scaler.run(None, {"x": np.array(rows, np.float32)})[0]
    _, probabilities = classifier.run(None, {"x": scaled})
    confidence, percent = post.run(None, {"probabilities": probabilities})
    return {"confidence": confidence, "percent": percent}


def three_stages(stages: dict[str, Path]) -> tuple[PipelineStage, ...]:
    return (
        PipelineStage("scale", model_uri=str(stages["scaler"])),
        PipelineStage("classify", model_uri=str(stages["classifier"]), outputs=("probabilities",)),
        PipelineStage("postprocess", model_uri=str(stages["postprocess"])),
    )


def test_a_pipeline_answers_what_its_stages_answer_by_hand(stages: dict[str, Path]) -> None:
    expected = by_hand(stages, ROWS)
    with serving("", pipeline=three_stages(stages), model_name="risk") as server:
        answer = request(server.url + "/invocations", "POST", json.dumps(ROWS).encode(), JSON)
        assert answer.status == 200, answer.body
        outputs = json.loads(answer.body)["outputs"]
        np.testing.assert_allclose(outputs["confidence"], expected["confidence"], rtol=1e-6)
        np.testing.assert_allclose(outputs["percent"], expected["percent"], rtol=1e-6)
        # v2 answers for the pipeline as one model: the first stage's inputs, the last's outputs.
        metadata = json.loads(request(server.url + "/v2/models/risk").body)
        assert [i["name"] for i in metadata["inputs"]] == ["x"]
        assert [o["name"] for o in metadata["outputs"]] == ["confidence", "percent"]
        metrics = request(server.url + "/metrics").body.decode()
    for stage in ("scale", "classify", "postprocess"):
        assert (
            f'berth_stage_latency_seconds_count{{model="risk",stage="{stage}",variant="default"}} 1.0'
            in metrics
        )


def test_merged_batches_flow_through_every_stage(stages: dict[str, Path]) -> None:
    from tests.serving.support import post_concurrently

    bodies = [json.dumps([row]).encode() for row in ROWS * 30]
    expected = by_hand(stages, ROWS * 30)
    with serving("", pipeline=three_stages(stages)) as server:
        answers = post_concurrently(server.url, "/invocations", bodies, concurrency=16)
        metrics = request(server.url + "/metrics").body.decode()
    for index, (status, body) in enumerate(answers):
        assert status == 200, body
        got = json.loads(body)["outputs"]["confidence"]
        np.testing.assert_allclose(got, expected["confidence"][index : index + 1], rtol=1e-6)
    batch_count = next(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("berth_batch_size_count")
    )
    assert batch_count < len(bodies), "no request was merged with another"


def test_a_wiring_that_cannot_work_is_refused_at_load(stages: dict[str, Path], tmp_path: Path) -> None:
    pipeline = json.dumps(
        [
            {"name": "classify", "modelUri": str(stages["classifier"]), "outputs": ["probabilities"]},
            {"name": "widen", "modelUri": str(stages["wide"])},
        ]
    )
    log = tmp_path / "termination-log"
    process = serve_subprocess(
        "", free_port(), "--pipeline", pipeline, env={"BERTH_TERMINATION_LOG": str(log)}
    )
    process.communicate(timeout=60)
    assert process.returncode == 1
    message = log.read_text()
    # The marker the operator reads to put the refusal on the Model's Ready condition.
    assert message.startswith("pipeline wiring refused: stage 'classify' cannot feed stage 'widen'")
    assert "dimension 1 is 3, not 5" in message
    assert "'classify' gives probabilities float32[N,3]" in message
    assert "'widen' takes probabilities float32[N,5]" in message


@pytest.fixture
def sidecar(stages: dict[str, Path]) -> Iterator[str]:
    """The classifier as a container of the pod would run it: its own server on loopback."""
    port = free_port()
    process = serve_subprocess(stages["classifier"], port, "--log-level", "warning")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: request(url + "/ping").status == 200, timeout=60)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def test_an_image_stage_on_loopback(stages: dict[str, Path], sidecar: str) -> None:
    expected = by_hand(stages, ROWS)
    pipeline = (
        PipelineStage("scale", model_uri=str(stages["scaler"])),
        PipelineStage("classify", url=sidecar, outputs=("label", "probabilities")),
        PipelineStage("postprocess", model_uri=str(stages["postprocess"])),
    )
    with serving("", pipeline=pipeline) as server:
        answer = request(server.url + "/invocations", "POST", json.dumps(ROWS).encode(), JSON)
        assert answer.status == 200, answer.body
        outputs = json.loads(answer.body)["outputs"]
        np.testing.assert_allclose(outputs["percent"], expected["percent"], rtol=1e-6)


def test_a_failing_stage_is_named_with_its_status(stages: dict[str, Path], sidecar: str) -> None:
    pipeline = (
        PipelineStage("scale", model_uri=str(stages["scaler"])),
        PipelineStage("classify", model_uri=str(stages["classifier"]), outputs=("probabilities",)),
        PipelineStage("widen", url=sidecar),  # takes 4 features, gets 3 probabilities: its 400
    )
    with serving("", pipeline=pipeline) as server:
        answer = request(server.url + "/invocations", "POST", json.dumps(ROWS).encode(), JSON)
        assert answer.status == 400, answer.body
        assert answer.headers["x-berth-failed-stage"] == "widen"
        message = json.loads(answer.body)["error"]["message"]
        assert message.startswith("stage 'widen' answered 400: ")
        assert "float32[N,4]" in message  # the sidecar's own words, passed through


def test_an_unreachable_image_stage_is_a_502_naming_it(stages: dict[str, Path]) -> None:
    pipeline = (
        PipelineStage("scale", model_uri=str(stages["scaler"])),
        PipelineStage("gone", url=f"http://127.0.0.1:{free_port()}"),
    )
    with serving("", pipeline=pipeline) as server:
        answer = request(server.url + "/invocations", "POST", json.dumps(ROWS).encode(), JSON)
    assert (answer.status, answer.headers["x-berth-failed-stage"]) == (502, "gone")
    assert "unreachable" in json.loads(answer.body)["error"]["message"]


@pytest.mark.parametrize(
    ("pipeline", "problem"),
    [
        ("[]", "2 to 15 stages"),
        (json.dumps([{"modelUri": "a.onnx"}]), "2 to 15 stages"),
        (
            json.dumps([{"modelUri": "a.onnx"}, {"modelUri": "b.onnx", "url": "http://127.0.0.1:1"}]),
            "exactly one",
        ),
        (
            json.dumps([{"name": "a", "modelUri": "a.onnx"}, {"name": "a", "modelUri": "b.onnx"}]),
            "must differ",
        ),
        ("not json", "not JSON"),
    ],
)
def test_pipelines_that_cannot_be_are_refused_on_the_command_line(pipeline: str, problem: str) -> None:
    process = serve_subprocess("", free_port(), "--pipeline", pipeline)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert problem in err.decode()


def test_an_image_stage_must_be_on_loopback(stages: dict[str, Path], tmp_path: Path) -> None:
    pipeline = json.dumps([{"modelUri": str(stages["scaler"])}, {"url": "http://10.1.2.3:8081"}])
    log = tmp_path / "termination-log"
    process = serve_subprocess(
        "", free_port(), "--pipeline", pipeline, env={"BERTH_TERMINATION_LOG": str(log)}
    )
    process.communicate(timeout=60)
    assert process.returncode == 1
    assert "called over loopback" in log.read_text()

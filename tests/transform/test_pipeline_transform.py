"""Batch transform of an inference pipeline: a StandardScaler stage (skl2onnx), a classifier
and a postprocessing stage run by `berth transform --pipeline` answer what the three raw ONNX
Runtime sessions answer chained by hand; the pipeline in batch transform with input and
output filters (a wider dataset, its id dropped for the model and joined back); --model and
--pipeline are one or the other; a wiring that cannot work fails before any record is read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from berth_serving.config import PipelineStage, pipeline_to_json
from berth_serving.pipeline.wiring import WiringError
from berth_serving.transform.engine import Summary, TransformError, load_model, run_transform
from berth_serving.transform.options import JSON_LINES, TransformOptions

from tests.serving import models
from tests.transform.support import berth_env, csv_bytes, rows, run_berth, write_csv

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline-stages")
    return {
        "scaler": models.build_scaler(root / "scaler.onnx"),
        "classifier": models.build_logreg(root / "classifier.onnx", n_features=4, zipmap=False),
        "postprocess": models.build_postprocess(root / "postprocess.onnx"),
        "wide": models.build_postprocess(root / "wide.onnx", n_classes=5),
    }


def three_stages(stages: dict[str, Path]) -> tuple[PipelineStage, ...]:
    return (
        PipelineStage("scale", model_uri=str(stages["scaler"])),
        PipelineStage("classify", model_uri=str(stages["classifier"]), outputs=("probabilities",)),
        PipelineStage("postprocess", model_uri=str(stages["postprocess"])),
    )


def by_hand(stages: dict[str, Path], array: np.ndarray) -> dict[str, np.ndarray]:
    """The three raw sessions, chained by hand."""
    scaler, classifier, post = (
        ort.InferenceSession(str(stages[k]), providers=["CPUExecutionProvider"])
        for k in ("scaler", "classifier", "postprocess")
    )
    scaled = scaler.run(None, {"x": array})[0]
    _, probabilities = classifier.run(None, {"x": scaled})
    confidence, percent = post.run(None, {"probabilities": probabilities})
    return {"confidence": confidence, "percent": percent}


def run_pipeline(stages: dict[str, Path], tmp_path: Path, **fields: object) -> Summary:
    options = TransformOptions(
        input_uri=str(tmp_path / "in"),
        output_uri=str(tmp_path / "out"),
        **fields,  # type: ignore[arg-type]
    )
    model = load_model("", tmp_path / "scratch", pipeline=three_stages(stages))
    return run_transform(options, model, inference_workers=2)


def test_a_pipeline_transform_equals_its_stages_by_hand(stages: dict[str, Path], tmp_path: Path) -> None:
    parts = {f"part-{i}.csv": rows(700 + i, 4, seed=i) for i in range(2)}
    for name, array in parts.items():
        write_csv(tmp_path / "in" / name, array)
    summary = run_pipeline(stages, tmp_path, accept=JSON_LINES, max_batch_size=64, max_payload_bytes=4000)
    assert summary.done == 2 and summary.records == 1401
    for name, array in parts.items():
        expected = by_hand(stages, array)
        out = [json.loads(line) for line in (tmp_path / "out" / f"{name}.out").read_text().splitlines()]
        assert len(out) == len(array)
        assert all(set(o) == {"confidence", "percent"} for o in out)  # the last stage's outputs
        np.testing.assert_allclose([o["confidence"] for o in out], expected["confidence"], rtol=1e-6)
        np.testing.assert_allclose([o["percent"] for o in out], expected["percent"], rtol=1e-6)


def test_single_record_batches_give_the_same_answers(stages: dict[str, Path], tmp_path: Path) -> None:
    array = rows(30, 4, seed=5)
    write_csv(tmp_path / "in" / "x.csv", array)
    run_pipeline(stages, tmp_path, batch_strategy="SingleRecord")
    written = np.loadtxt(tmp_path / "out" / "x.csv.out", delimiter=",", ndmin=2)
    np.testing.assert_allclose(written, by_hand(stages, array)["confidence"], rtol=1e-6)


def test_a_pipeline_with_input_and_output_filters(stages: dict[str, Path], tmp_path: Path) -> None:
    """CSV: the id column dropped by the input filter, joined back, id and prediction kept."""
    array = rows(500, 4, seed=6)
    (tmp_path / "in").mkdir()
    lines = [f"cust-{i},{line}" for i, line in enumerate(csv_bytes(array).decode().splitlines())]
    (tmp_path / "in" / "x.csv").write_text("\n".join(lines) + "\n")
    run_pipeline(
        stages,
        tmp_path,
        input_filter="$[1:]",
        join_source="Input",
        output_filter="$[0,-1]",
        max_batch_size=50,
    )
    written = [line.split(",") for line in (tmp_path / "out" / "x.csv.out").read_text().splitlines()]
    assert [fields[0] for fields in written] == [f"cust-{i}" for i in range(500)]
    confidence = np.array([float(fields[1]) for fields in written])
    np.testing.assert_allclose(confidence, by_hand(stages, array)["confidence"][:, 0], rtol=1e-6)


def test_a_pipeline_with_filters_on_json_lines(stages: dict[str, Path], tmp_path: Path) -> None:
    array = rows(40, 4, seed=7)
    records = [{"id": i, "features": row, "source": "crm"} for i, row in enumerate(array.tolist())]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    run_pipeline(
        stages,
        tmp_path,
        content_type=JSON_LINES,
        accept=JSON_LINES,
        input_filter="$.features",
        join_source="Input",
        output_filter="$['id','SageMakerOutput']",
    )
    out = [json.loads(line) for line in (tmp_path / "out" / "x.jsonl.out").read_text().splitlines()]
    assert [o["id"] for o in out] == list(range(40))
    expected = by_hand(stages, array)
    np.testing.assert_allclose(
        [o["SageMakerOutput"]["confidence"] for o in out], expected["confidence"], rtol=1e-6
    )
    np.testing.assert_allclose([o["SageMakerOutput"]["percent"] for o in out], expected["percent"], rtol=1e-6)


def test_a_failing_stage_is_named_with_the_records(stages: dict[str, Path], tmp_path: Path) -> None:
    """An image stage nobody answers for: the transform names the object, its records and the stage."""
    from tests.serving.support import free_port

    write_csv(tmp_path / "in" / "x.csv", rows(3, 4))
    pipeline = (
        PipelineStage("scale", model_uri=str(stages["scaler"])),
        PipelineStage("gone", url=f"http://127.0.0.1:{free_port()}"),
    )
    model = load_model("", tmp_path / "scratch", pipeline=pipeline)
    options = TransformOptions(input_uri=str(tmp_path / "in"), output_uri=str(tmp_path / "out"))
    with pytest.raises(TransformError) as caught:
        run_transform(options, model)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path}/in/x.csv: records from line 1: the model failed: stage 'gone' at ")
    assert "unreachable" in message
    assert not (tmp_path / "out" / "x.csv.out").exists()


def test_a_wiring_that_cannot_work_is_refused_at_load(stages: dict[str, Path], tmp_path: Path) -> None:
    pipeline = (
        PipelineStage("classify", model_uri=str(stages["classifier"]), outputs=("probabilities",)),
        PipelineStage("widen", model_uri=str(stages["wide"])),
    )
    with pytest.raises(WiringError, match="stage 'classify' cannot feed stage 'widen'"):
        load_model("", tmp_path / "scratch", pipeline=pipeline)


# --- the CLI ---------------------------------------------------------------------------------


def test_berth_transform_pipeline(stages: dict[str, Path], tmp_path: Path) -> None:
    array = rows(200, 4, seed=8)
    write_csv(tmp_path / "in" / "x.csv", array)
    pipeline = pipeline_to_json(three_stages(stages))
    log = tmp_path / "termination-log"
    args = [
        "transform",
        "--pipeline",
        pipeline,
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
    ]
    result = run_berth(args, berth_env(BERTH_TERMINATION_LOG=str(log)))
    assert result.returncode == 0, result.stderr
    assert json.loads(log.read_text())["records"] == 200
    written = np.loadtxt(tmp_path / "out" / "x.csv.out", delimiter=",", ndmin=2)
    np.testing.assert_allclose(written, by_hand(stages, array)["confidence"], rtol=1e-6)
    # BERTH_PIPELINE, as `berth serve` takes it, works as the flag does.
    env = berth_env(BERTH_PIPELINE=pipeline)
    again = run_berth(
        ["transform", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "again")], env
    )
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "x.csv.out").read_text() == (tmp_path / "out" / "x.csv.out").read_text()


def test_berth_transform_pipeline_with_filters(stages: dict[str, Path], tmp_path: Path) -> None:
    array = rows(60, 4, seed=9)
    (tmp_path / "in").mkdir()
    lines = [f"{i},{line},extra" for i, line in enumerate(csv_bytes(array).decode().splitlines())]
    (tmp_path / "in" / "x.csv").write_text("\n".join(lines) + "\n")
    args = ["transform", "--pipeline", pipeline_to_json(three_stages(stages))]
    args += ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    args += ["--input-filter", "$[1:5]", "--join-source", "Input", "--output-filter", "$[0,-1]"]
    result = run_berth(args)
    assert result.returncode == 0, result.stderr
    written = [line.split(",") for line in (tmp_path / "out" / "x.csv.out").read_text().splitlines()]
    assert [int(fields[0]) for fields in written] == list(range(60))
    np.testing.assert_allclose(
        [float(fields[1]) for fields in written], by_hand(stages, array)["confidence"][:, 0], rtol=1e-6
    )


def test_model_or_pipeline_one_of_them(stages: dict[str, Path], tmp_path: Path) -> None:
    pipeline = pipeline_to_json(three_stages(stages))
    where = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    both = run_berth(["transform", "--model", str(stages["scaler"]), "--pipeline", pipeline, *where])
    assert both.returncode == 2 and "give --model or --pipeline (one of them)" in both.stderr
    neither = run_berth(["transform", *where])
    assert neither.returncode == 2 and "give --model or --pipeline (one of them)" in neither.stderr
    env_and_flag = run_berth(
        ["transform", "--model", str(stages["scaler"]), *where], berth_env(BERTH_PIPELINE=pipeline)
    )
    assert env_and_flag.returncode == 2 and "one of them" in env_and_flag.stderr
    bad = run_berth(["transform", "--pipeline", '[{"modelUri": "a.onnx"}]', *where])
    assert bad.returncode == 2 and "a pipeline is a JSON list of 2 to 15 stages" in bad.stderr
    sha = run_berth(["transform", "--pipeline", pipeline, "--sha256", "0" * 64, *where])
    assert sha.returncode == 2 and "a pipeline stage's sha256 is in its JSON" in sha.stderr


def test_berth_transform_refuses_a_wiring_that_cannot_work(stages: dict[str, Path], tmp_path: Path) -> None:
    write_csv(tmp_path / "in" / "x.csv", rows(3, 4))
    pipeline = json.dumps(
        [
            {"name": "classify", "modelUri": str(stages["classifier"]), "outputs": ["probabilities"]},
            {"name": "widen", "modelUri": str(stages["wide"])},
        ]
    )
    log = tmp_path / "termination-log"
    args = [
        "transform",
        "--pipeline",
        pipeline,
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
    ]
    result = run_berth(args, berth_env(BERTH_TERMINATION_LOG=str(log)))
    assert result.returncode == 1, result.stderr
    message = log.read_text()
    assert message.startswith("the pipeline cannot work: stage 'classify' cannot feed stage 'widen'")
    assert "'widen' takes probabilities float32[N,5]" in message
    assert not (tmp_path / "out").exists()

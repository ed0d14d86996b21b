"""SageMaker's inputFilter / outputFilter in batch transform, on local files with real ONNX
Runtime sessions: a wider dataset whose id column the inputFilter drops, joined back with
joinSource Input, and an outputFilter keeping the id and the prediction (CSV and JSON Lines);
records a filter cannot select from named by file and line; filters that cannot parse or
cannot apply refused as usage errors naming them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
from berth_serving.transform import arrow
from berth_serving.transform.engine import Summary, TransformError, load_model, run_transform
from berth_serving.transform.filters import InputSelection
from berth_serving.transform.jsonpath import FilterError, Miss, parse_filter
from berth_serving.transform.options import CSV, JSON_LINES, TransformOptions
from berth_serving.transform.records import Block

from tests.transform.support import raw_outputs, rows, run_berth

pytestmark = pytest.mark.timeout(120)


def run(model: Path, tmp_path: Path, **fields: object) -> Summary:
    options = TransformOptions(
        input_uri=str(tmp_path / "in"),
        output_uri=str(tmp_path / "out"),
        **fields,  # type: ignore[arg-type]
    )
    return run_transform(options, load_model(str(model), tmp_path / "scratch"))


def wide_csv(path: Path, features: np.ndarray, *, blank_after: int | None = None) -> list[str]:
    """id, the features, then a region column the model never sees; the lines written."""
    lines = [
        f"id-{i},{','.join(f'{v:.4f}' for v in row)},region-{i % 3}"
        for i, row in enumerate(features.tolist())
    ]
    text = "".join(line + "\n" + ("\n" if i == blank_after else "") for i, line in enumerate(lines))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return lines


# --- the selections ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "record", "expected"),
    [
        ("$[1:]", [0, 1, 2, 3], [1, 2, 3]),
        ("$[0,2,3]", [0, 1, 2, 3], [0, 2, 3]),
        ("$[2:4]", [0, 1, 2, 3], [2, 3]),
        ("$[0,-1]", [0, 1, 2, 3], [0, 3]),
        ("$[0,2:]", [0, 1, 2, 3], [0, 2, 3]),
        ("$[:2]", [0, 1, 2, 3], [0, 1]),
        ("$[-1]", [0, 1, 2, 3], 3),
        ("$[*]", [0, 1], [0, 1]),
        ("$.features", {"id": 1, "features": [1.5, 2]}, [1.5, 2]),
        ("$['id','score']", {"id": 1, "score": 0.5, "x": 2}, {"id": 1, "score": 0.5}),
        ('$["id"]', {"id": 7}, 7),
        ("$.data.features[1:]", {"data": {"features": [1, 2, 3]}}, [2, 3]),
        ("$.data.['a','b']", {"data": {"a": 1, "b": 2, "c": 3}}, {"a": 1, "b": 2}),
        ("$[ 0 , -1 ]", [5, 6, 7], [5, 7]),
    ],
)
def test_selections_as_sagemaker_documents_them(text: str, record: object, expected: object) -> None:
    path = parse_filter(text, "--input-filter")
    assert path is not None
    assert path.select(record) == expected


@pytest.mark.parametrize(
    ("text", "record", "why"),
    [
        ("$[4]", [0, 1, 2, 3], "index 4 is outside the record's 4 elements"),
        ("$[-5]", [0, 1, 2, 3], "index -5 is outside the record's 4 elements"),
        ("$[2:9]", [0, 1, 2], "slice bound 9 is outside the record's 3 elements"),
        ("$[3:]", [0, 1, 2], "selects none of the record's 3 elements"),
        ("$.features", {"id": 1}, "the record has no field 'features'"),
        ("$['id','score']", {"id": 1}, "the record has no field 'score'"),
        ("$.features", [1, 2], "field 'features' is selected from an array, not an object"),
        ("$[0]", {"a": 1}, "an index selects from an object, not an array"),
    ],
)
def test_a_record_lacking_the_selection_is_a_miss(text: str, record: object, why: str) -> None:
    path = parse_filter(text, "--input-filter")
    assert path is not None
    with pytest.raises(Miss, match=f"^{re.escape(why)}$"):
        path.select(record)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("$[1:", "a '[' is never closed"),
        ("[1:]", "a filter starts with $"),
        ("$x", "unexpected 'x' at position 1"),
        ("$.", "a field name must follow the '.' at position 1"),
        ("$..id", "recursive descent"),
        ("$[1::2]", "expected ',' or ']' at position 4"),
        ("$['a',1]", "not a mix"),
        ("$['a", "the quote at position 2 is never closed"),
        ("$['']", "an empty field name"),
        ("$[]", "expected an index, a slice or a quoted name at position 2"),
        ("$['a','b'].c", "only the last step may select several"),
    ],
)
def test_filters_that_cannot_parse_are_named(text: str, why: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter(text, "--output-filter")
    assert str(caught.value).startswith(f"--output-filter {text!r} cannot parse: ")
    assert why in str(caught.value)


def test_the_whole_record_is_no_filter() -> None:
    assert parse_filter("", "--input-filter") is None
    assert parse_filter(" $ ", "--input-filter") is None


def test_arrow_cuts_a_block_as_the_line_by_line_cut_does() -> None:
    """The Arrow fast path and the line by line cut agree; a ragged row or a blank line sends
    the block to the line by line cut, which keeps every line where it was."""
    path = parse_filter("$[3,1:3]", "--input-filter")
    assert path is not None
    selection = InputSelection(path, CSV)
    data = b"a,1,2,3\nb,4,5,6\r\nc,7,8,9"
    assert arrow.select_columns(data, 4, [3, 1, 2], 3) == b"3,1,2\n6,4,5\n9,7,8\n"
    assert selection.cut(Block(1, data, 3)).data == b"3,1,2\n6,4,5\n9,7,8\n"
    ragged = b"a,1,2,3\nb,4\n\nc,7,8,9\n"
    assert arrow.select_columns(ragged, 4, [3, 1, 2], 4) is None
    cut = selection.cut(Block(10, ragged, 4))
    assert cut.data == b"3,1,2\n\n\n9,7,8\n" and cut.count == 4
    assert [(bad.line, bad.message) for bad in cut.bad] == [
        (11, "input filter $[3,1:3]: index 3 is outside the record's 2 columns")
    ]


# --- CSV ------------------------------------------------------------------------------------


def test_csv_id_dropped_joined_back_and_kept_with_the_prediction(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    features = rows(3000, 4, seed=3)
    wide_csv(tmp_path / "in" / "x.csv", features, blank_after=1500)  # one block the slow way
    summary = run(
        transform_models.logreg,
        tmp_path,
        input_filter="$[1:5]",
        join_source="Input",
        output_filter="$[0,-1]",
        max_batch_size=64,
        max_payload_bytes=20_000,  # many blocks: lines keep their numbers across them
    )
    assert summary.records == 3000 and summary.failed == 0
    labels, _ = raw_outputs(transform_models.logreg, features)
    written = (tmp_path / "out" / "x.csv.out").read_text().splitlines()
    assert written == [f"id-{i},{label}" for i, label in enumerate(labels.tolist())]


def test_csv_scattered_columns(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    """$[0,2,5]-style selections: the columns in the filter's order, wherever they are."""
    features = rows(50, 4, seed=4)
    (tmp_path / "in").mkdir()
    lines = [f"{a:.4f},id-{i},{b:.4f},x,{c:.4f},{d:.4f}" for i, (a, b, c, d) in enumerate(features.tolist())]
    (tmp_path / "in" / "x.csv").write_text("\n".join(lines) + "\n")
    run(
        transform_models.logreg,
        tmp_path,
        input_filter="$[0,2,4,5]",
        join_source="Input",
        output_filter="$[1,6]",
    )
    labels, _ = raw_outputs(transform_models.logreg, features)
    written = (tmp_path / "out" / "x.csv.out").read_text().splitlines()
    assert written == [f"id-{i},{label}" for i, label in enumerate(labels.tolist())]


def test_csv_output_filter_without_join_selects_from_the_prediction(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    features = rows(20, 8, seed=5)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.csv").write_text(
        "".join(",".join(f"{v:.4f}" for v in r) + "\n" for r in features.tolist())
    )
    run(transform_models.mlp, tmp_path, output_filter="$[2,0]")
    [expected] = raw_outputs(transform_models.mlp, features)
    written = np.loadtxt(tmp_path / "out" / "x.csv.out", delimiter=",", ndmin=2)
    np.testing.assert_allclose(written, expected[:, [2, 0]], rtol=1e-5, atol=1e-6)


def test_csv_record_lacking_a_column_is_its_own_error(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    features = rows(6, 4, seed=6)
    lines = wide_csv(tmp_path / "in" / "x.csv", features)
    lines[3] = "id-3,1.0,2.0"  # two columns short
    (tmp_path / "in" / "x.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(TransformError) as caught:
        run(transform_models.logreg, tmp_path, input_filter="$[1:5]")
    assert str(caught.value) == (
        f"malformed record at {tmp_path}/in/x.csv:4: input filter $[1:5]: "
        "slice bound 5 is outside the record's 3 columns"
    )
    assert not (tmp_path / "out" / "x.csv.out").exists()
    summary = run(
        transform_models.logreg,
        tmp_path,
        input_filter="$[1:5]",
        join_source="Input",
        output_filter="$[0,-1]",
        max_errors=1,
    )
    assert summary.failed == 1 and summary.records == 5
    written = (tmp_path / "out" / "x.csv.out").read_text().splitlines()
    assert [line.split(",")[0] for line in written] == ["id-0", "id-1", "id-2", "id-4", "id-5"]
    errors = [json.loads(line) for line in (tmp_path / "out" / "x.csv.errors").read_text().splitlines()]
    assert errors == [
        {"line": 4, "error": "input filter $[1:5]: slice bound 5 is outside the record's 3 columns"}
    ]


def test_output_filter_outside_the_joined_record_is_each_records_error(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    features = rows(8, 4, seed=7)
    wide_csv(tmp_path / "in" / "x.csv", features)
    args = {"input_filter": "$[1:5]", "join_source": "Input", "output_filter": "$[0,7]"}
    with pytest.raises(
        TransformError,
        match=r"x\.csv:1: output filter \$\[0,7\]: index 7 is outside the "
        r"record's 7 columns",
    ):
        run(transform_models.logreg, tmp_path, **args)
    assert not (tmp_path / "out" / "x.csv.out").exists()
    summary = run(transform_models.logreg, tmp_path, **args, max_errors=8)
    assert summary.failed == 8 and summary.records == 0
    listed = [
        json.loads(line)["line"] for line in (tmp_path / "out" / "x.csv.errors").read_text().splitlines()
    ]
    assert listed == list(range(1, 9))


# --- JSON Lines -------------------------------------------------------------------------------


def test_json_lines_features_selected_and_id_joined_back(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    features = rows(40, 4, seed=8)
    records = [{"id": f"r{i}", "features": row, "note": "x" * i} for i, row in enumerate(features.tolist())]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    run(
        transform_models.logreg,
        tmp_path,
        content_type=JSON_LINES,
        accept=JSON_LINES,
        input_filter="$.features",
        join_source="Input",
        output_filter="$['id','SageMakerOutput']",
        max_batch_size=16,
    )
    labels, probabilities = raw_outputs(transform_models.logreg, features)
    out = [json.loads(line) for line in (tmp_path / "out" / "x.jsonl.out").read_text().splitlines()]
    assert [o["id"] for o in out] == [r["id"] for r in records]
    assert all(set(o) == {"id", "SageMakerOutput"} for o in out)
    assert [o["SageMakerOutput"]["label"] for o in out] == labels.tolist()
    np.testing.assert_allclose([o["SageMakerOutput"]["probabilities"] for o in out], probabilities, rtol=1e-6)


def test_json_lines_fields_for_a_two_input_model(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    records: list[dict[str, Any]] = [
        {"id": i, "a": [float(i), 1.0], "b": [2.0], "skip": True} for i in range(10)
    ]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    run(
        transform_models.two_input,
        tmp_path,
        content_type=JSON_LINES,
        accept=JSON_LINES,
        input_filter="$['a','b']",
        join_source="Input",
        output_filter="$.SageMakerOutput.sum",
    )
    out = [json.loads(line) for line in (tmp_path / "out" / "x.jsonl.out").read_text().splitlines()]
    assert out == [[r["a"][0] + r["b"][0], r["a"][1] + r["b"][0]] for r in records]


def test_json_lines_record_without_the_field(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    features = rows(5, 4, seed=9).tolist()
    lines = [orjson.dumps({"id": i, "features": row}) for i, row in enumerate(features)]
    lines[2] = orjson.dumps({"id": 2, "feature": features[2]})
    lines.insert(4, b"{not json")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    summary = run(
        transform_models.logreg,
        tmp_path,
        content_type=JSON_LINES,
        accept=JSON_LINES,
        input_filter="$.features",
        join_source="Input",
        output_filter="$['id','SageMakerOutput']",
        max_errors=2,
    )
    assert summary.failed == 2
    out = [json.loads(line) for line in (tmp_path / "out" / "x.jsonl.out").read_text().splitlines()]
    assert [o["id"] for o in out] == [0, 1, 3, 4]
    errors = [json.loads(line) for line in (tmp_path / "out" / "x.jsonl.errors").read_text().splitlines()]
    assert errors[0] == {"line": 3, "error": "input filter $.features: the record has no field 'features'"}
    assert errors[1]["line"] == 5 and errors[1]["error"].startswith("not valid JSON")


def test_csv_joined_into_json_lines(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    """A CSV record in SageMaker's joined JSON is the array of its columns (numbers as numbers)."""
    features = rows(4, 4, seed=10)
    wide_csv(tmp_path / "in" / "x.csv", features)
    run(
        transform_models.logreg,
        tmp_path,
        accept=JSON_LINES,
        input_filter="$[1:5]",
        join_source="Input",
        output_filter="$['SageMakerInput','SageMakerOutput']",
    )
    labels, _ = raw_outputs(transform_models.logreg, features)
    out = [json.loads(line) for line in (tmp_path / "out" / "x.csv.out").read_text().splitlines()]
    assert [o["SageMakerInput"][0] for o in out] == [f"id-{i}" for i in range(4)]
    np.testing.assert_allclose([o["SageMakerInput"][1:5] for o in out], features, atol=1e-4)
    assert [o["SageMakerInput"][5] for o in out] == ["region-0", "region-1", "region-2", "region-0"]
    assert [o["SageMakerOutput"]["label"] for o in out] == labels.tolist()


def test_join_without_output_filter_keeps_the_original_record(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    """The input filter feeds the model; joinSource Input still writes the record as it was read."""
    features = rows(5, 4, seed=11)
    lines = wide_csv(tmp_path / "in" / "x.csv", features)
    run(transform_models.logreg, tmp_path, input_filter="$[1:5]", join_source="Input")
    labels, _ = raw_outputs(transform_models.logreg, features)
    written = (tmp_path / "out" / "x.csv.out").read_text().splitlines()
    assert written == [f"{line},{label}" for line, label in zip(lines, labels.tolist(), strict=True)]


# --- refused -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        (
            {"input_filter": "$.features"},
            "--input-filter '$.features': a text/csv record is an array of columns",
        ),
        (
            {"output_filter": "$['id']"},
            "--output-filter \"$['id']\": a text/csv output line is an array of columns",
        ),
        ({"input_filter": "$[1:]", "split_type": "None"}, "--input-filter needs --split-type Line"),
        ({"output_filter": "$[0]", "assemble_with": "None"}, "--output-filter needs --assemble-with Line"),
        (
            {"content_type": JSON_LINES, "join_source": "Input", "output_filter": "$[0]"},
            "needs --accept application/jsonlines",
        ),
        ({"input_filter": "$[1:"}, "--input-filter '$[1:' cannot parse: a '[' is never closed"),
    ],
)
def test_filters_that_cannot_apply_are_refused(
    fields: dict[str, str], why: str, transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    options = TransformOptions(input_uri=str(tmp_path / "in"), output_uri=str(tmp_path / "out"), **fields)  # type: ignore[arg-type]
    with pytest.raises(ValueError) as caught:
        options.check()
    assert why in str(caught.value)


def test_bad_filters_are_usage_errors_of_the_cli(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    base = ["transform", "--model", str(transform_models.logreg), "--input", "in/", "--output", "out/"]
    result = run_berth([*base, "--input-filter", "$[0,"])
    assert result.returncode == 2, result.stderr
    assert "--input-filter '$[0,' cannot parse: a '[' is never closed" in result.stderr
    result = run_berth([*base, "--output-filter", "$.prediction"])
    assert (
        result.returncode == 2 and "--output-filter '$.prediction': a text/csv output line" in result.stderr
    )

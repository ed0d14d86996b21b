"""Arrow's parse and write paths on real ONNX Runtime sessions: many blocks, bad records found
by the line by line path of their block only, gzip through Arrow, and the thread split."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
from berth_serving.transform.cli import thread_split
from berth_serving.transform.engine import TransformError, load_model, run_transform
from berth_serving.transform.options import TransformOptions

from tests.transform.support import BERTH, berth_env, csv_bytes, raw_outputs, rows, run_berth

pytestmark = pytest.mark.timeout(60)
JSONL = "application/jsonlines"


def run(model: Path, tmp_path: Path, **fields: object) -> object:
    options = TransformOptions(
        input_uri=str(fields.pop("input_uri", tmp_path / "in")),
        output_uri=str(fields.pop("output_uri", tmp_path / "out")),
        **fields,  # type: ignore[arg-type]
    )
    model_loaded = load_model(str(model), tmp_path / "scratch")
    return run_transform(options, model_loaded, inference_workers=2, parse_workers=1)


def put(tmp_path: Path, name: str, data: bytes) -> Path:
    (tmp_path / "in").mkdir(exist_ok=True)
    path = tmp_path / "in" / name
    path.write_bytes(data)
    return path


def errors_of(tmp_path: Path, name: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in (tmp_path / "out" / f"{name}.errors").read_text().splitlines()]


def test_bad_records_in_many_blocks_are_named_by_line_and_the_rest_kept(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    """Blocks of about 4 kB (the payload limit caps a read): each bad record sends only its own
    block to the line by line path; the numbering holds across blocks and blank lines."""
    good = rows(3000, 4)
    lines = csv_bytes(good).splitlines(keepends=True)
    inserted = {
        17: b"1.0,2.0,oops,4.0\n",
        900: b"1,2,3,4,5\n",
        901: b"\n",
        1500: b"   \n",
        2999: b'"1",2,3,4\n',
    }
    for line, text in sorted(inserted.items()):
        lines.insert(line - 1, text)
    put(tmp_path, "x.csv", b"".join(lines))
    summary = run(transform_models.logreg, tmp_path, max_payload_bytes=4096, max_errors=3, max_batch_size=64)
    assert (summary.records, summary.failed) == (3000, 3)  # type: ignore[attr-defined]
    assert errors_of(tmp_path, "x.csv") == [
        {"line": 17, "error": "not a row of numbers separated by commas"},
        {"line": 900, "error": "expected 4 values, got 5"},
        {"line": 2999, "error": "not a row of numbers separated by commas"},
    ]
    labels, _ = raw_outputs(transform_models.logreg, good)
    assert (tmp_path / "out" / "x.csv.out").read_text().split() == [str(v) for v in labels.tolist()]


def test_the_first_bad_record_fails_the_run_with_its_line(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    data = csv_bytes(rows(30_000, 4))  # about 1.2 MB: more than one 1 MiB block
    put(tmp_path, "x.csv", data + b"1,2,3\n" + csv_bytes(rows(10, 4)))
    with pytest.raises(TransformError, match=r"x\.csv:30001: expected 4 values, got 3$"):
        run(transform_models.logreg, tmp_path)
    assert not (tmp_path / "out" / "x.csv.out").exists()


def test_outputs_are_the_models_float32_values_exactly(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    """Written in their shortest round-trip spelling: read back as float32, the very values."""
    array = rows(5000, 8, seed=3)
    put(tmp_path, "x.csv", csv_bytes(array))
    run(transform_models.mlp, tmp_path, max_batch_size=300)
    [expected] = raw_outputs(transform_models.mlp, array)
    written = np.loadtxt(tmp_path / "out" / "x.csv.out", delimiter=",", dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(written, expected)


def test_nan_and_infinity_travel_in_csv(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    array = rows(5, 16)
    text = csv_bytes(array).decode().splitlines()
    text[1] = ",".join(["nan", "inf", "-inf", *text[1].split(",")[3:]])
    put(tmp_path, "x.csv", ("\n".join(text) + "\n").encode())
    run(transform_models.identity, tmp_path)
    out = (tmp_path / "out" / "x.csv.out").read_text().splitlines()
    assert out[1].split(",")[:3] == ["nan", "inf", "-inf"]
    np.testing.assert_allclose(np.loadtxt(out, delimiter=",")[[0, 2, 3, 4]], array[[0, 2, 3, 4]], rtol=1e-6)


@pytest.mark.parametrize(
    ("max_payload_bytes", "reason"),
    [
        (5000, "rows: a read holds about 140 records, so the batches carry records across reads"),
        (1500, "bytes: about 45 records fit the payload limit, fewer than 96"),
    ],
)
def test_a_batch_is_as_full_as_max_batch_size_and_max_payload_bytes_allow(
    transform_models: SimpleNamespace, tmp_path: Path, max_payload_bytes: int, reason: str
) -> None:
    """A batch (one ONNX Runtime call, SageMaker's mini-batch) holds max_batch_size records,
    or fewer where the next would take it past maxPayloadBytes; the records keep their order."""
    array = rows(1000, 4)
    data = csv_bytes(array)
    put(tmp_path, "x.csv", data)
    run(
        transform_models.logreg,
        tmp_path,
        accept=JSONL,
        assemble_with="None",
        max_batch_size=96,
        max_payload_bytes=max_payload_bytes,
    )
    answers = [json.loads(line) for line in (tmp_path / "out" / "x.csv.out").read_text().splitlines()]
    sizes = [len(a["outputs"]["label"]) for a in answers]
    lines = data.splitlines(keepends=True)
    first = 0
    for size in sizes[:-1]:
        batch_bytes = sum(len(line) for line in lines[first : first + size])
        assert 1 <= size <= 96 and batch_bytes <= max_payload_bytes + 1, reason
        # full: the next record would not have fit
        assert size == 96 or batch_bytes + len(lines[first + size]) > max_payload_bytes + 1, (sizes, reason)
        first += size
    assert sum(sizes) == 1000
    labels, _ = raw_outputs(transform_models.logreg, array)
    assert [v for a in answers for v in a["outputs"]["label"]] == labels.tolist()
    if max_payload_bytes == 5000:
        assert sizes == [96] * 10 + [40], "batches of max_batch_size across the reads"


def test_join_source_keeps_each_records_own_text_across_blocks(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    array = rows(400, 4)
    source = csv_bytes(array).decode().splitlines()
    text = "\r\n".join(source[:200]) + "\r\n\r\n" + "\n".join(source[200:]) + "\n"
    put(tmp_path, "x.csv", text.encode())
    run(transform_models.logreg, tmp_path, join_source="Input", max_batch_size=64, max_payload_bytes=2000)
    labels, _ = raw_outputs(transform_models.logreg, array)
    written = (tmp_path / "out" / "x.csv.out").read_text().splitlines()
    assert written == [f"{line},{label}" for line, label in zip(source, labels.tolist(), strict=True)]


# --- JSON Lines ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dumps", [orjson.dumps, lambda row: json.dumps(row).encode()], ids=["compact", "spaced"]
)
def test_json_arrays_match_the_model(
    transform_models: SimpleNamespace, tmp_path: Path, dumps: object
) -> None:
    array = rows(3000, 8)
    put(tmp_path, "x.jsonl", b"".join(dumps(row) + b"\n" for row in array.tolist()))  # type: ignore[operator]
    run(transform_models.mlp, tmp_path, content_type=JSONL, accept=JSONL, max_batch_size=128)
    [expected] = raw_outputs(transform_models.mlp, array)
    out = [json.loads(line) for line in (tmp_path / "out" / "x.jsonl.out").read_text().splitlines()]
    np.testing.assert_array_equal(np.asarray(out, dtype=np.float32), expected)


def test_json_records_that_are_not_flat_arrays_of_numbers_are_named(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    good = rows(2000, 4)
    lines = [orjson.dumps(row) for row in good.tolist()]
    bad = {
        10: b"[[1,2],[3,4]]",
        502: b"[1,2,NaN,4]",
        1000: b"[1,2,3]",
        1500: b"[]",
        1501: b"[1,2,3,4]]",
        1999: b"1,2,3,4",
    }
    for line, text in sorted(bad.items()):
        lines.insert(line - 1, text)
    put(tmp_path, "x.jsonl", b"\n".join(lines) + b"\n")
    summary = run(transform_models.logreg, tmp_path, content_type=JSONL, max_errors=len(bad))
    assert (summary.records, summary.failed) == (2000, len(bad))  # type: ignore[attr-defined]
    errors = errors_of(tmp_path, "x.jsonl")
    assert [e["line"] for e in errors] == sorted(bad)
    messages = {e["line"]: e["error"] for e in errors}
    assert messages[502].startswith("not valid JSON") and messages[1501].startswith("not valid JSON")
    assert "expected input 'x' float32[N,4]" in str(messages[1000])
    labels, _ = raw_outputs(transform_models.logreg, good)
    assert (tmp_path / "out" / "x.jsonl.out").read_text().split() == [str(v) for v in labels.tolist()]


def test_json_objects_feed_two_inputs_and_bad_ones_are_named(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    records = [{"a": [i, i + 0.5], "b": [i * 10]} for i in range(300)]
    lines = [orjson.dumps(r) for r in records]
    lines.insert(99, b'{"a": [1, 2]}')  # line 100: no "b"
    lines.insert(199, b'{"a": [1, 2], "b": [3], "c": [4]}')  # line 200: a key the model has not
    put(tmp_path, "x.jsonl", b"\n".join(lines) + b"\n")
    summary = run(transform_models.two_input, tmp_path, content_type=JSONL, accept=JSONL, max_errors=2)
    assert (summary.records, summary.failed) == (300, 2)  # type: ignore[attr-defined]
    assert [e["line"] for e in errors_of(tmp_path, "x.jsonl")] == [100, 200]
    out = [json.loads(line) for line in (tmp_path / "out" / "x.jsonl.out").read_text().splitlines()]
    assert [o["sum"] for o in out] == [[r["a"][0] + r["b"][0], r["a"][1] + r["b"][0]] for r in records]


def test_json_value_out_of_range_for_float32_is_named(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    put(tmp_path, "x.jsonl", b"[1,2,3,4]\n[1,2,3,1e39]\n")
    with pytest.raises(TransformError, match=r"x\.jsonl:2: input 'x': 1e\+39 is out of range for float32"):
        run(transform_models.logreg, tmp_path, content_type=JSONL)


# --- gzip ----------------------------------------------------------------------------------------


def test_gzip_of_several_members_and_many_blocks(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    first, second = rows(20_000, 4, seed=1), rows(15_000, 4, seed=2)
    put(tmp_path, "x.csv.gz", gzip.compress(csv_bytes(first)) + gzip.compress(csv_bytes(second)))
    summary = run(transform_models.logreg, tmp_path, compression="Gzip")
    assert summary.records == 35_000  # type: ignore[attr-defined]
    labels, _ = raw_outputs(transform_models.logreg, np.concatenate([first, second]))
    assert (tmp_path / "out" / "x.csv.gz.out").read_text().split() == [str(v) for v in labels.tolist()]


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda data: b"this was never gzip" * 100, "Not a gzipped file"),
        (lambda data: data[: len(data) // 2], "Compressed file ended before the end-of-stream marker"),
        (lambda data: data[:-8] + bytes(8), "CRC check failed"),
    ],
    ids=["not gzip", "truncated", "bad checksum"],
)
def test_bad_gzip_is_one_clear_line_naming_the_object(
    transform_models: SimpleNamespace, tmp_path: Path, damage: object, says: str
) -> None:
    path = put(tmp_path, "x.csv.gz", damage(gzip.compress(csv_bytes(rows(50_000, 4)))))  # type: ignore[operator]
    with pytest.raises(TransformError, match=rf"^{path}: cannot read: .*{says}"):
        run(transform_models.logreg, tmp_path, compression="Gzip")
    assert not (tmp_path / "out" / "x.csv.gz.out").exists()
    log = tmp_path / "termination-log"
    args = [
        "transform",
        "--model",
        str(transform_models.logreg),
        "--input",
        str(path),
        "--compression",
        "Gzip",
    ]
    result = run_berth([*args, "--output", str(tmp_path / "out")], berth_env(BERTH_TERMINATION_LOG=str(log)))
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"berth transform: {path}: cannot read: ") and says in line
    assert "Traceback" not in result.stderr


def test_the_cli_runs_a_worker_that_parses_ahead(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    array = rows(40_000, 8)
    put(tmp_path, "x.csv", csv_bytes(array))
    args = ["transform", "--model", str(transform_models.mlp), "--input", str(tmp_path / "in")]
    result = run_berth(
        [*args, "--output", str(tmp_path / "out"), "--parse-workers", "1", "--intra-op-threads", "1"]
    )
    assert result.returncode == 0, result.stderr
    [expected] = raw_outputs(transform_models.mlp, array)
    written = np.loadtxt(tmp_path / "out" / "x.csv.out", delimiter=",").astype(np.float32)
    np.testing.assert_array_equal(written, expected)
    assert BERTH  # the same executable the other CLI tests run


def test_thread_split() -> None:
    """(intra-op threads, ONNX Runtime calls side by side, workers parsing ahead) by CPUs."""
    csv = TransformOptions(input_uri="in", output_uri="out")
    assert thread_split(0, None, csv, 2) == (1, 2, 0)
    assert thread_split(0, None, csv, 1) == (1, 1, 0)
    assert thread_split(0, None, csv, 3) == (1, 2, 1)  # the CPU the two calls leave parses ahead
    assert thread_split(0, None, csv, 16) == (8, 2, 0)
    assert thread_split(3, None, csv, 16) == (3, 2, 10)
    assert thread_split(0, 2, csv, 8) == (4, 2, 2)
    one = TransformOptions(input_uri="in", output_uri="out", max_concurrent_transforms=1)
    assert thread_split(0, None, one, 8) == (8, 1, 0)
    assert thread_split(1, None, one, 2) == (1, 1, 1)
    wide = TransformOptions(input_uri="in", output_uri="out", max_concurrent_transforms=64)
    assert thread_split(0, None, wide, 4) == (1, 4, 0)
    npy = TransformOptions(
        input_uri="in", output_uri="out", content_type="application/x-npy", split_type="None"
    )
    assert thread_split(0, None, npy, 8) == (0, 1, 0)  # 0: ONNX Runtime takes the container's CPUs


def test_empty_objects_and_a_last_line_without_newline(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    array = rows(7, 4)
    put(tmp_path, "empty.csv", b"")
    put(tmp_path, "blank.csv", b"\n\r\n\n")
    put(tmp_path, "open.csv", csv_bytes(array).rstrip(b"\n"))
    summary = run(transform_models.logreg, tmp_path)
    assert (summary.done, summary.records, summary.failed) == (3, 7, 0)  # type: ignore[attr-defined]
    assert (tmp_path / "out" / "empty.csv.out").read_bytes() == b""
    assert (tmp_path / "out" / "blank.csv.out").read_bytes() == b""
    labels, _ = raw_outputs(transform_models.logreg, array)
    assert (tmp_path / "out" / "open.csv.out").read_text().split() == [str(v) for v in labels.tolist()]


@pytest.mark.parametrize(("budget", "named"), [(0, 181), (1, 421)])
def test_the_first_failure_in_input_order_is_the_one_reported(
    transform_models: SimpleNamespace, tmp_path: Path, budget: int, named: int
) -> None:
    """Blocks are parsed by several workers at once, in any order; the error budget is still
    spent record by record in input order, so the record named is the same in every run."""
    lines = csv_bytes(rows(2000, 4)).decode().splitlines()
    for line in (181, 421, 1601):
        lines[line - 1] = "1,2,oops,4"
    put(tmp_path, "x.csv", ("\n".join(lines) + "\n").encode())
    with pytest.raises(TransformError) as raised:
        run(transform_models.logreg, tmp_path, max_errors=budget, max_batch_size=40)
    assert f"x.csv:{named}:" in str(raised.value)
    assert not (tmp_path / "out" / "x.csv.out").exists(), "a failed object leaves no output"

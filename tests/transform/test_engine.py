"""The transform engine on local files, with real ONNX Runtime sessions: formats, joins, errors, shards."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
from berth_serving import storage
from berth_serving.transform.engine import LoadedModel, TransformError, load_model, run_transform
from berth_serving.transform.options import TransformOptions
from berth_serving.transform.records import BadRecord, read_blocks

from tests.transform.support import csv_bytes, raw_outputs, read_csv_out, rows, write_csv

pytestmark = pytest.mark.timeout(60)


def model(path: Path, tmp_path: Path) -> LoadedModel:
    return load_model(str(path), tmp_path / "scratch")


def run(path: Path, tmp_path: Path, **fields: object) -> object:
    options = TransformOptions(
        input_uri=str(fields.pop("input_uri", tmp_path / "in")),
        output_uri=str(fields.pop("output_uri", tmp_path / "out")),
        **fields,  # type: ignore[arg-type]
    )
    return run_transform(options, model(path, tmp_path))


def test_csv_prefix_gives_one_out_object_per_input(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    parts = {f"day-{i}.csv": rows(300 + i, 4, seed=i) for i in range(3)}
    for name, array in parts.items():
        write_csv(tmp_path / "in" / name, array)
    write_csv(tmp_path / "in" / "nested" / "late.csv", rows(5, 4, seed=9))
    summary = run(transform_models.logreg, tmp_path, max_batch_size=64)
    assert summary.objects == summary.done == 4 and summary.records == 300 + 301 + 302 + 5
    outputs = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*"))
    assert outputs == ["day-0.csv.out", "day-1.csv.out", "day-2.csv.out", "nested", "nested/late.csv.out"]
    for name, array in parts.items():
        labels, _ = raw_outputs(transform_models.logreg, array)
        written = (tmp_path / "out" / f"{name}.out").read_text().splitlines()
        assert written == [str(label) for label in labels.tolist()]  # the first output, a line per record


def test_csv_floats_match_the_model(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    array = rows(1000, 8)
    write_csv(tmp_path / "in" / "x.csv", array)
    run(transform_models.mlp, tmp_path, max_batch_size=100, max_payload_bytes=2000)
    [expected] = raw_outputs(transform_models.mlp, array)
    np.testing.assert_allclose(read_csv_out(tmp_path / "out" / "x.csv.out"), expected, rtol=1e-5, atol=1e-6)


def test_single_record_gives_the_same_answers(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    array = rows(50, 8)
    write_csv(tmp_path / "in" / "x.csv", array)
    run(transform_models.mlp, tmp_path, output_uri=str(tmp_path / "multi"))
    run(transform_models.mlp, tmp_path, output_uri=str(tmp_path / "single"), batch_strategy="SingleRecord")
    multi = read_csv_out(tmp_path / "multi" / "x.csv.out")
    np.testing.assert_allclose(read_csv_out(tmp_path / "single" / "x.csv.out"), multi, rtol=1e-5, atol=1e-6)


def test_json_lines_in_and_out_with_several_outputs(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    array = rows(20, 4)
    lines = [orjson.dumps(row) for row in array.tolist()]
    lines.insert(5, b"")  # a blank line is no record
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    run(
        transform_models.logreg,
        tmp_path,
        content_type="application/jsonlines",
        accept="application/jsonlines",
        max_batch_size=8,
    )
    labels, probabilities = raw_outputs(transform_models.logreg, array)
    records = [json.loads(line) for line in (tmp_path / "out" / "x.jsonl.out").read_text().splitlines()]
    assert [r["label"] for r in records] == labels.tolist()
    np.testing.assert_allclose([r["probabilities"] for r in records], probabilities, rtol=1e-6)


def test_json_lines_objects_feed_a_two_input_model(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    records = [{"a": [i, i + 0.5], "b": [i * 10]} for i in range(7)]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    run(
        transform_models.two_input,
        tmp_path,
        content_type="application/jsonlines",
        accept="application/jsonlines",
    )
    out = [json.loads(line) for line in (tmp_path / "out" / "x.jsonl.out").read_text().splitlines()]
    assert [o["sum"] for o in out] == [[r["a"][0] + r["b"][0], r["a"][1] + r["b"][0]] for r in records]
    assert [o["scaled"] for o in out] == [[v * 10 for v in r["a"]] for r in records]


def test_gzip_input(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    array = rows(500, 4)
    write_csv(tmp_path / "in" / "x.csv.gz", array, gzipped=True)
    run(transform_models.logreg, tmp_path, compression="Gzip", max_payload_bytes=1000)
    labels, _ = raw_outputs(transform_models.logreg, array)
    assert (tmp_path / "out" / "x.csv.gz.out").read_text().split() == [str(v) for v in labels.tolist()]


def test_join_source_input_csv(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    array = rows(30, 4)
    write_csv(tmp_path / "in" / "x.csv", array)
    run(transform_models.logreg, tmp_path, join_source="Input", max_batch_size=7)
    labels, _ = raw_outputs(transform_models.logreg, array)
    source = csv_bytes(array).decode().splitlines()
    written = (tmp_path / "out" / "x.csv.out").read_text().splitlines()
    assert written == [f"{line},{label}" for line, label in zip(source, labels.tolist(), strict=True)]


def test_join_source_input_json(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    array = rows(10, 4)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in array.tolist()))
    run(
        transform_models.zipmap,
        tmp_path,
        content_type="application/jsonlines",
        accept="application/jsonlines",
        join_source="Input",
    )
    out = [json.loads(line) for line in (tmp_path / "out" / "x.jsonl.out").read_text().splitlines()]
    assert [o["input"] for o in out] == array.tolist()
    labels, _ = raw_outputs(transform_models.zipmap, array)
    assert [o["output"]["output_label"] for o in out] == labels.tolist()
    assert all(set(o["output"]["output_probability"]) == {"0", "1", "2"} for o in out)


def test_assemble_with_none_writes_each_batch_answer(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    array = rows(25, 4)
    write_csv(tmp_path / "in" / "x.csv", array)
    run(
        transform_models.logreg,
        tmp_path,
        accept="application/jsonlines",
        assemble_with="None",
        max_batch_size=10,
    )
    answers = [json.loads(line) for line in (tmp_path / "out" / "x.csv.out").read_text().splitlines()]
    assert [len(a["outputs"]["label"]) for a in answers] == [
        10,
        10,
        5,
    ]  # the serving runtime's JSON, per batch
    labels, _ = raw_outputs(transform_models.logreg, array)
    assert [v for a in answers for v in a["outputs"]["label"]] == labels.tolist()


def test_npy_objects(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    array = rows(40, 8)
    (tmp_path / "in").mkdir()
    buffer = io.BytesIO()
    np.save(buffer, array)
    (tmp_path / "in" / "x.npy").write_bytes(buffer.getvalue())
    run(
        transform_models.mlp, tmp_path, content_type="application/x-npy", split_type="None", max_batch_size=16
    )
    [expected] = raw_outputs(transform_models.mlp, array)
    np.testing.assert_allclose(read_csv_out(tmp_path / "out" / "x.npy.out"), expected, rtol=1e-5, atol=1e-6)


def test_fixed_batch_model_runs_record_by_record(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    array = rows(9, 4)
    write_csv(tmp_path / "in" / "x.csv", array)
    run(transform_models.fixed_batch, tmp_path)
    np.testing.assert_allclose(read_csv_out(tmp_path / "out" / "x.csv.out"), array * 2, rtol=1e-6)


def test_shards_split_the_objects_without_overlap(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    for i in range(5):
        write_csv(tmp_path / "in" / f"p{i}.csv", rows(3, 4, seed=i))
    done = []
    for index in range(3):
        out = tmp_path / f"out{index}"
        summary = run(
            transform_models.logreg, tmp_path, output_uri=str(out), shard_index=index, shard_count=3
        )
        names = sorted(p.name for p in out.iterdir())
        assert summary.done == len(names)
        done += names
    assert sorted(done) == [f"p{i}.csv.out" for i in range(5)]


def test_malformed_row_fails_with_file_and_line(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    data = csv_bytes(rows(10, 4)) + b"1.0,2.0,oops,4.0\n" + csv_bytes(rows(3, 4))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.csv").write_bytes(data)
    with pytest.raises(TransformError, match=r"bad\.csv:11: not a row of numbers"):
        run(transform_models.logreg, tmp_path)
    assert not (tmp_path / "out" / "bad.csv.out").exists()


def test_wrong_column_count_names_the_line(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.csv").write_bytes(csv_bytes(rows(4, 4)) + b"\n1,2,3\n")
    with pytest.raises(TransformError, match=r"bad\.csv:6: expected 4 values, got 3"):
        run(transform_models.logreg, tmp_path)


def test_malformed_json_line(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.jsonl").write_bytes(b"[1,2,3,4]\n[1,2,3\n")
    with pytest.raises(TransformError, match=r"bad\.jsonl:2: not valid JSON"):
        run(transform_models.logreg, tmp_path, content_type="application/jsonlines")
    (tmp_path / "in" / "bad.jsonl").write_bytes(b"[1,2,3,4]\n[1,2]\n")
    with pytest.raises(TransformError, match=r"bad\.jsonl:2: expected input 'x' float32\[N,4\]"):
        run(transform_models.logreg, tmp_path, content_type="application/jsonlines")


def test_error_budget_lists_bad_records_and_finishes(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    good = rows(6, 4)
    lines = csv_bytes(good).splitlines(keepends=True)
    lines.insert(2, b"a,b,c,d\n")  # line 3
    lines.insert(5, b"1,2\n")  # line 6
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.csv").write_bytes(b"".join(lines))
    summary = run(transform_models.logreg, tmp_path, max_errors=2)
    assert (summary.records, summary.failed) == (6, 2)
    labels, _ = raw_outputs(transform_models.logreg, good)
    assert (tmp_path / "out" / "x.csv.out").read_text().split() == [str(v) for v in labels.tolist()]
    errors = [json.loads(line) for line in (tmp_path / "out" / "x.csv.errors").read_text().splitlines()]
    assert errors == [
        {"line": 3, "error": "not a row of numbers separated by commas"},
        {"line": 6, "error": "expected 4 values, got 2"},
    ]


def test_error_budget_exceeded_fails(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.csv").write_bytes(b"1,2,3,4\nx\ny\nz\n")
    with pytest.raises(TransformError, match=r"more than 2 malformed records; the last at .*x\.csv:4"):
        run(transform_models.logreg, tmp_path, max_errors=2)
    assert not (tmp_path / "out" / "x.csv.out").exists()


def test_resume_skips_finished_outputs(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    for i in range(3):
        write_csv(tmp_path / "in" / f"p{i}.csv", rows(5, 4, seed=i))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "p1.csv.out").write_text("from an earlier run\n")
    summary = run(transform_models.logreg, tmp_path)
    assert (summary.done, summary.skipped, summary.records) == (2, 1, 10)
    assert (tmp_path / "out" / "p1.csv.out").read_text() == "from an earlier run\n"
    again = run(transform_models.logreg, tmp_path)
    assert (again.done, again.skipped, again.records) == (0, 3, 0)


def test_output_inside_the_input_is_not_read_back(
    transform_models: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_csv(tmp_path / "in" / "x.csv", rows(3, 4))
    run(transform_models.logreg, tmp_path, output_uri=str(tmp_path / "in" / "scored"))
    summary = run(transform_models.logreg, tmp_path, output_uri=str(tmp_path / "in" / "scored"))
    assert (summary.objects, summary.skipped) == (1, 1)
    monkeypatch.chdir(tmp_path)  # the same directory spelled relative and absolute
    again = run(transform_models.logreg, tmp_path, input_uri=f"file://{tmp_path}/in", output_uri="in/scored")
    assert (again.objects, again.skipped) == (1, 1)


def test_missing_input_and_wrong_model_input(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    with pytest.raises(TransformError, match="input not found"):
        run(transform_models.logreg, tmp_path)
    write_csv(tmp_path / "in" / "x.csv", rows(3, 4))
    with pytest.raises(TransformError, match="text/csv input feeds single-input models only"):
        run(transform_models.two_input, tmp_path)


class EndlessCsv(io.RawIOBase):
    """An input that never ends: reading it whole would never return."""

    line = b"0.1,0.2,0.3,0.4\n"

    def __init__(self) -> None:
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = len(buffer) // len(self.line) * len(self.line)
        buffer[:count] = self.line * (count // len(self.line))
        self.served += count
        return count


def test_blocks_stream_without_reading_ahead() -> None:
    """Memory stays flat: each block holds at most max_rows records, and reading stays a bounded
    distance ahead of the block handed out (the buffered reader's buffer plus one readlines hint)."""
    raw = EndlessCsv()
    stream = io.BufferedReader(raw, buffer_size=64 * 1024)
    blocks = read_blocks(stream, content_type="text/csv", split_type="Line", max_bytes=4096, max_rows=100)
    taken = [next(blocks) for _ in range(50)]
    assert all(len(block.lines) <= 100 for block in taken)
    assert [block.first_line for block in taken[:3]] == [1, 101, 201]
    assert raw.served < 50 * 4096 + 2 * 64 * 1024


def test_gzip_blocks_stream_too() -> None:
    """The stream is inflated as the blocks are taken (ISA-L reads 512 KiB at a time): reading
    stays far from the object's end."""
    from berth_serving.transform.records import open_records

    source = io.BytesIO(gzip.compress(csv_bytes(rows(300_000, 4))))  # about 3.5 MB compressed
    stream = open_records(source, "Gzip")
    blocks = read_blocks(stream, content_type="text/csv", split_type="Line", max_bytes=1000, max_rows=50)
    first = next(blocks)
    assert 0 < len(first.lines) <= 50 and first.lines[0] == csv_bytes(rows(100_000, 4)[:1])
    assert source.tell() <= 512 * 1024 < len(source.getvalue()) / 6


def test_local_writer_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "o" / "x.out"
    writer = storage.open_output(storage.parse_uri(str(target)))
    writer.write(b"half")
    assert not target.exists()
    writer.abort()
    assert not target.exists() and list((tmp_path / "o").iterdir()) == []
    storage.write_object(storage.parse_uri(str(target)), iter([b"a", b"b"]))
    assert target.read_bytes() == b"ab"


class OneHugeLine(io.RawIOBase):
    """`before`, then a line of `size` bytes generated as it is read (never held whole), then `after`."""

    def __init__(self, before: bytes, size: int, after: bytes) -> None:
        self.parts = [before, None, after]
        self.size = size
        self.sent = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while self.parts:
            part = self.parts[0]
            if part is None:
                left = self.size - self.sent
                if left == 0:
                    self.parts[0] = b"\n"
                    continue
                count = min(len(buffer), left)
                buffer[:count] = b"7" * count
                self.sent += count
                return count
            if not part:
                self.parts.pop(0)
                continue
            count = min(len(buffer), len(part))
            buffer[:count] = part[:count]
            self.parts[0] = part[count:]
            return count
        return 0


def test_a_line_over_max_bytes_is_a_bad_record_and_is_not_held() -> None:
    import tracemalloc

    before, after = b"1,2,3,4\n" * 10, b"5,6,7,8\n" * 10
    stream = io.BufferedReader(OneHugeLine(before, 64 * 2**20, after), buffer_size=64 * 1024)
    tracemalloc.start()
    try:
        blocks = list(
            read_blocks(stream, content_type="text/csv", split_type="Line", max_bytes=100_000, max_rows=8)
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20, f"{peak / 2**20:.1f} MiB held while reading a 64 MiB line"
    bad = [record for block in blocks for record in block.bad]
    assert bad == [
        BadRecord(11, f"a record of {64 * 2**20} bytes, over the payload limit (maxPayloadBytes) of 100000")
    ]
    lines = [(block.first_line + i, line) for block in blocks for i, line in enumerate(block.lines)]
    assert [n for n, line in lines if line.strip()] == [*range(1, 11), *range(12, 22)]  # numbering holds
    assert all(len(block.lines) <= 8 for block in blocks)


@pytest.mark.parametrize("content_type", ["text/csv", "application/jsonlines"])
def test_records_at_the_limit_pass_and_one_byte_more_does_not(
    transform_models: SimpleNamespace, tmp_path: Path, content_type: str
) -> None:
    record = b"[" + b",".join([b"1.0"] * 3) + b",2." + b"0" * 40 + b"]"
    if content_type == "text/csv":
        record = record[1:-1]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x").write_bytes(record + b"\n" + record + b"9\n" + record + b"\n")
    summary = run(
        transform_models.logreg,
        tmp_path,
        content_type=content_type,
        max_payload_bytes=len(record),
        max_errors=1,
    )
    assert (summary.records, summary.failed) == (2, 1)  # type: ignore[attr-defined]
    errors = [json.loads(line) for line in (tmp_path / "out" / "x.errors").read_text().splitlines()]
    assert errors == [
        {
            "line": 2,
            "error": f"a record of {len(record) + 1} bytes, over the payload limit (maxPayloadBytes) of {len(record)}",
        }
    ]


def test_a_whole_object_payload_over_the_limit_is_a_bad_record(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "big.csv").write_bytes(csv_bytes(rows(2000, 4)))
    (tmp_path / "in" / "small.csv").write_bytes(csv_bytes(rows(3, 4)))
    with pytest.raises(TransformError, match=r"big\.csv:1: a record of \d+ bytes, over the payload limit"):
        run(transform_models.logreg, tmp_path, split_type="None", max_payload_bytes=10_000)
    summary = run(
        transform_models.logreg, tmp_path, split_type="None", max_payload_bytes=10_000, max_errors=1
    )
    assert (summary.records, summary.failed) == (3, 1)  # type: ignore[attr-defined]


def test_outputs_among_the_inputs_or_in_a_file_are_refused(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    from berth_serving.transform.engine import BadOptions

    write_csv(tmp_path / "in" / "x.csv", rows(3, 4))
    (tmp_path / "file").write_text("x")
    cases = [
        (str(tmp_path / "in" / "x.csv"), str(tmp_path / "in"), "holds the input"),
        (str(tmp_path / "in"), str(tmp_path), "holds the input"),
        (f"file://{tmp_path}/in/x.csv", f"{tmp_path}/in/", "holds the input"),
        (str(tmp_path / "in"), str(tmp_path / "file"), "is an existing file"),
        (str(tmp_path / "in"), "ftp://host/out", "unsupported URI scheme"),
    ]
    for input_uri, output_uri, says in cases:
        with pytest.raises(BadOptions, match=says):
            run(transform_models.logreg, tmp_path, input_uri=input_uri, output_uri=output_uri)
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["x.csv"]


def test_an_output_that_cannot_be_written_names_it(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    from berth_serving.transform.engine import StorageFailure

    write_csv(tmp_path / "in" / "sub" / "x.csv", rows(3, 4))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").write_text("a file where the outputs of in/sub/ go")
    with pytest.raises(StorageFailure, match=rf"^cannot write {tmp_path}/out/sub/x\.csv\.out: File exists$"):
        run(transform_models.logreg, tmp_path)

"""s3:// input, output and model through moto's S3 in server mode (the real wire protocol)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from berth_serving.storage import PART_BYTES
from berth_serving.transform.engine import TransformError, load_model, run_transform
from berth_serving.transform.options import TransformOptions

from tests.transform.support import csv_bytes, raw_outputs, rows

pytestmark = pytest.mark.timeout(90)


def put(s3: SimpleNamespace, key: str, data: bytes) -> None:
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=data)


def get(s3: SimpleNamespace, key: str) -> bytes:
    return s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]


def keys(s3: SimpleNamespace, prefix: str = "") -> list[str]:
    listing = s3.client.list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def transform(s3: SimpleNamespace, model_uri: str, tmp_path: Path, **fields: object) -> object:
    options = TransformOptions(
        input_uri=f"s3://{s3.bucket}/{fields.pop('input', 'in/')}",
        output_uri=f"s3://{s3.bucket}/{fields.pop('output', 'out/')}",
        **fields,  # type: ignore[arg-type]
    )
    return run_transform(options, load_model(model_uri, tmp_path / "scratch"))


def test_prefix_in_s3_model_from_s3(
    transform_models: SimpleNamespace, s3: SimpleNamespace, tmp_path: Path
) -> None:
    s3.client.upload_file(str(transform_models.logreg), s3.bucket, "models/logreg.onnx")
    data = {f"in/2026/part-{i}.csv": rows(100 + i, 4, seed=i) for i in range(3)}
    for key, array in data.items():
        put(s3, key, csv_bytes(array))
    summary = transform(s3, f"s3://{s3.bucket}/models/logreg.onnx", tmp_path)
    assert (summary.done, summary.records) == (3, 303)
    assert keys(s3, "out/") == [f"out/2026/part-{i}.csv.out" for i in range(3)]
    for key, array in data.items():
        labels, _ = raw_outputs(transform_models.logreg, array)
        assert get(s3, key.replace("in/", "out/") + ".out").decode().split() == [
            str(v) for v in labels.tolist()
        ]


def test_single_object_gzip_json_lines_join(
    transform_models: SimpleNamespace, s3: SimpleNamespace, tmp_path: Path
) -> None:
    array = rows(50, 4)
    body = b"".join(json.dumps(row).encode() + b"\n" for row in array.tolist())
    put(s3, "in/records.jsonl.gz", gzip.compress(body))
    transform(
        s3,
        str(transform_models.logreg),
        tmp_path,
        input="in/records.jsonl.gz",
        content_type="application/jsonlines",
        compression="Gzip",
        accept="application/jsonlines",
        join_source="Input",
    )
    assert keys(s3, "out/") == ["out/records.jsonl.gz.out"]
    out = [json.loads(line) for line in get(s3, "out/records.jsonl.gz.out").decode().splitlines()]
    labels, _ = raw_outputs(transform_models.logreg, array)
    assert [o["input"] for o in out] == array.tolist()
    assert [o["output"]["label"] for o in out] == labels.tolist()


def test_large_output_is_a_multipart_upload(
    transform_models: SimpleNamespace, s3: SimpleNamespace, tmp_path: Path
) -> None:
    array = rows(80_000, 16)  # about 11 MB of CSV out: more than one part
    put(s3, "in/big.csv", csv_bytes(array))
    transform(s3, str(transform_models.identity), tmp_path, max_batch_size=4096)
    written = get(s3, "out/big.csv.out")
    assert len(written) > PART_BYTES
    np.testing.assert_allclose(np.loadtxt(written.decode().splitlines(), delimiter=","), array, rtol=1e-6)


def test_failure_leaves_no_output_and_no_open_upload(
    transform_models: SimpleNamespace, s3: SimpleNamespace, tmp_path: Path
) -> None:
    good = csv_bytes(rows(80_000, 16))
    put(s3, "in/big.csv", good + b"1,2,3\n")  # the bad line comes after more than a part was uploaded
    with pytest.raises(TransformError, match=r"s3://.*/in/big\.csv:80001: expected 16 values, got 3"):
        transform(s3, str(transform_models.identity), tmp_path, max_batch_size=4096)
    assert keys(s3, "out/") == []
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []


def test_resume_in_s3_and_errors_object(
    transform_models: SimpleNamespace, s3: SimpleNamespace, tmp_path: Path
) -> None:
    put(s3, "in/a.csv", csv_bytes(rows(5, 4)))
    put(s3, "in/b.csv", csv_bytes(rows(5, 4)) + b"bad,row\n")
    put(s3, "out/a.csv.out", b"done before\n")
    summary = transform(s3, str(transform_models.logreg), tmp_path, max_errors=1)
    assert (summary.done, summary.skipped, summary.records, summary.failed) == (1, 1, 5, 1)
    assert get(s3, "out/a.csv.out") == b"done before\n"
    assert keys(s3, "out/") == ["out/a.csv.out", "out/b.csv.errors", "out/b.csv.out"]
    assert json.loads(get(s3, "out/b.csv.errors")) == {
        "line": 6,
        "error": "not a row of numbers separated by commas",
    }


def test_missing_bucket_is_a_clear_error(
    transform_models: SimpleNamespace, s3: SimpleNamespace, tmp_path: Path
) -> None:
    options = TransformOptions(input_uri="s3://no-such-bucket/in/", output_uri=f"s3://{s3.bucket}/out/")
    with pytest.raises(TransformError, match="cannot list s3://no-such-bucket/in/: NoSuchBucket"):
        run_transform(options, load_model(str(transform_models.logreg), tmp_path))

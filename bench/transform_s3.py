"""Batch transform from S3 (not a test): the input read through boto3 (what `berth transform`
uses) against Apache Arrow's S3 filesystem, and `berth transform` on an S3 object against the
same object on local disk, in one run.

    .venv/bin/python bench/transform_s3.py [--rows 100000] [--rounds 3]

S3 is moto in server mode on loopback, in this process: a Python server on the same two
CPUs, so the figures bound what the read path costs here, not what AWS S3 serves. Each round
reads the object through both clients and runs the transform from both places (MLP of
bench/transform.py, CSV of 256 features, outputs to local disk); medians of the rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from transform import run_berth, write_csv  # noqa: E402 - bench/transform.py

from tests.serving.models import build_mlp  # noqa: E402 - after the path fix above
from tests.support.s3server import S3_ENV, running_moto  # noqa: E402

BUCKET = "bench"
KEY = "in/rows.csv"
READ = 1 << 20  # what the transform's buffered reader asks for at a time
ARROW_BUFFER = 16 << 20  # Arrow reads ahead this much per ranged GET; its default is far slower


def read_all(open_stream: Callable[[], object]) -> float:
    """MB/s of reading the object to its end in READ-sized pieces."""
    started = time.perf_counter()
    stream = open_stream()
    total = 0
    while chunk := stream.read(READ):  # type: ignore[attr-defined]
        total += len(chunk)
    stream.close()  # type: ignore[attr-defined]
    return total / (time.perf_counter() - started) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="A multiple of 10,000.")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import boto3
    import pyarrow.fs
    from berth_serving import storage

    work = Path(tempfile.mkdtemp(prefix="berth-bench-s3-"))
    model = build_mlp(work / "mlp.onnx", sizes=(256, 1024, 1024, 10))
    local = work / "in" / "rows.csv"
    local.parent.mkdir()
    write_csv(local, args.rows)
    megabytes = local.stat().st_size / 1e6
    os.environ.update(S3_ENV)
    with running_moto() as endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint  # the transform subprocesses inherit it
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        client.upload_file(str(local), BUCKET, KEY)
        arrow = pyarrow.fs.S3FileSystem(
            endpoint_override=endpoint,
            scheme="http",
            access_key=S3_ENV["AWS_ACCESS_KEY_ID"],
            secret_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
            region=S3_ENV["AWS_DEFAULT_REGION"],
        )
        where = storage.parse_uri(f"s3://{BUCKET}/{KEY}")
        print(
            f"object: {args.rows:,} CSV rows of 256 features, {megabytes:,.0f} MB; S3 = moto server on loopback"
        )
        boto_mb, arrow_mb, from_s3, from_disk, cpu_s3, cpu_disk = [], [], [], [], [], []
        for index in range(args.rounds):
            boto_mb.append(read_all(lambda: storage.open_input(where)))
            arrow_mb.append(
                read_all(lambda: arrow.open_input_stream(f"{BUCKET}/{KEY}", buffer_size=ARROW_BUFFER))
            )
            disk, _ = run_berth(model, local, work / "out", args.rows)
            s3, _ = run_berth(model, f"s3://{BUCKET}/in/", work / "out", args.rows)  # type: ignore[arg-type]
            from_disk.append(disk.per_second)
            from_s3.append(s3.per_second)
            cpu_disk.append(disk.per_cpu_second)
            cpu_s3.append(s3.per_cpu_second)
            print(
                f"  round {index + 1}: read boto3 {boto_mb[-1]:,.0f} MB/s, Arrow {arrow_mb[-1]:,.0f} MB/s; "
                f"transform from S3 {s3.per_second:,.0f} rows/s, from disk {disk.per_second:,.0f} rows/s"
            )
    boto, arrow_rate = statistics.median(boto_mb), statistics.median(arrow_mb)
    s3_rows, disk_rows = statistics.median(from_s3), statistics.median(from_disk)
    print(
        f"\nmedians: read boto3 {boto:,.0f} MB/s, Arrow's S3 filesystem {arrow_rate:,.0f} MB/s ({arrow_rate / boto:.2f} of boto3)"
    )
    print(
        f"  the transform reads {disk_rows * megabytes * 1e6 / args.rows / 1e6:,.0f} MB/s from disk at its pace; "
        f"from S3 {s3_rows:,.0f} rows/s = {s3_rows / disk_rows:.2f} of from disk"
    )
    s3_cpu, disk_cpu = statistics.median(cpu_s3), statistics.median(cpu_disk)
    print(
        f"  rows per CPU-second of the transform process (moto's CPU not counted): from S3 {s3_cpu:,.0f}, "
        f"from disk {disk_cpu:,.0f} ({s3_cpu / disk_cpu:.2f})"
    )


if __name__ == "__main__":
    main()

"""Batch transform benchmark (not a test): `berth transform` against raw ONNX Runtime, one run.

    .venv/bin/python bench/transform.py [--rows 1000000] [--keep]

Model: the MLP 256-1024-1024-10 of tests/serving/models.py. Input: a CSV of ROWS rows of 256
features written with 4 decimals (about 1.9 kB a row, so 1,000,000 rows is a 1.9 GB file in a
temporary directory; blocks of 10,000 distinct rows are repeated to write it quickly).

Printed, all from this run (the machine is shared and drifts: compare only within one run):
- raw ONNX Runtime: session.run on ready float32 arrays at batch sizes 64..4096, the best one
  (measured before and after `berth transform`; the mean is the baseline);
- `berth transform` (a subprocess, wall time including start-up and model load) on the CSV, and
  its rows/s as a share of the baseline (target at least 0.8);
- the CSV parse alone (numpy.loadtxt over the same blocks, no model): the ceiling text input
  puts on any CSV transform here;
- `berth transform` on 100,000 of the same rows as .npy (no text parsing): the engine's overhead;
- peak RSS of `berth transform` at 10,000 rows and at ROWS rows (target: within 50 MB).
"""

from __future__ import annotations

import sys

# bench/ holds other scripts (bench/operator.py) that would shadow standard modules.
if sys.path and sys.path[0].rstrip("/").endswith("bench"):
    del sys.path[0]

import argparse
import io
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.serving.models import build_mlp  # noqa: E402 - after the path fix above

FEATURES = 256
BLOCK_ROWS = 10_000
BATCH_SIZES = (64, 256, 1024, 4096)
BERTH = str(Path(sys.executable).with_name("berth"))


def write_csv(path: Path, rows: int, seed: int = 0) -> None:
    """ROWS rows in repeated blocks of BLOCK_ROWS distinct rows (formatting is the slow part)."""
    block = np.random.default_rng(seed).normal(size=(min(rows, BLOCK_ROWS), FEATURES))
    buffer = io.StringIO()
    np.savetxt(buffer, block, fmt="%.4f", delimiter=",")
    text = buffer.getvalue().encode()
    with path.open("wb") as out:
        for _ in range(rows // len(block)):
            out.write(text)
        rest = rows % len(block)
        if rest:
            out.write(b"".join(text.splitlines(keepends=True)[:rest]))


def raw_ort(model: Path, seconds: float = 2.0) -> tuple[int, float]:
    """(best batch size, rows/s) of plain session.run on ready arrays, default session options."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    data = np.random.default_rng(1).normal(size=(max(BATCH_SIZES), FEATURES)).astype(np.float32)
    results = {}
    for batch in BATCH_SIZES:
        feed = {"x": data[:batch]}
        session.run(None, feed)  # warm-up
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            session.run(None, feed)
            done += batch
        results[batch] = done / (time.perf_counter() - started)
    best = max(results, key=lambda size: results[size])
    print("  raw ORT rows/s by batch size: " + ", ".join(f"{b}: {r:,.0f}" for b, r in results.items()))
    return best, results[best]


def parse_only(path: Path, max_bytes: int = 6 * 1024 * 1024, rows_per_block: int = 512) -> float:
    """Rows/s of reading and parsing the CSV as the engine does (block readlines + loadtxt), no model."""
    started, count = time.perf_counter(), 0
    with path.open("rb", buffering=1024 * 1024) as stream:
        while lines := stream.readlines(max_bytes):
            for start in range(0, len(lines), rows_per_block):
                chunk = [raw.decode() for raw in lines[start : start + rows_per_block]]
                count += np.loadtxt(chunk, delimiter=",", dtype=np.float32, ndmin=2).shape[0]
    return count / (time.perf_counter() - started)


def run_berth(model: Path, source: Path, out: Path, *extra: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one `berth transform` process."""
    command = [BERTH, "transform", "--model", str(model), "--input", str(source), "--output", str(out)]
    started = time.perf_counter()
    process = subprocess.Popen([*command, "--no-progress", *extra], stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode() if process.stderr else ""
    if process.returncode != 0:
        raise SystemExit(f"berth transform failed ({process.returncode}): {stderr}")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is in kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="Keep the temporary directory.")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="berth-bench-transform-"))
    try:
        model = build_mlp(root / "mlp.onnx", sizes=(FEATURES, 1024, 1024, 10))
        small, big = root / "small" / "rows.csv", root / "big" / "rows.csv"
        for path, rows in ((small, 10_000), (big, args.rows)):
            path.parent.mkdir()
            write_csv(path, rows)
        npy = root / "npy" / "rows.npy"
        npy.parent.mkdir()
        np.save(npy, np.loadtxt(small, delimiter=",", dtype=np.float32).repeat(10, axis=0))
        print(
            f"MLP {FEATURES}-1024-1024-10; CSV {args.rows:,} rows ({big.stat().st_size / 1e9:.2f} GB); cores: {os.cpu_count()}"
        )

        print("raw ONNX Runtime (before):")
        batch_before, raw_before = raw_ort(model)
        small_seconds, small_rss = run_berth(model, small, root / "out-small")
        big_seconds, big_rss = run_berth(model, big, root / "out-big")
        npy_seconds, _ = run_berth(
            model, npy, root / "out-npy", "--content-type", "application/x-npy", "--split-type", "None"
        )
        print("raw ONNX Runtime (after):")
        batch_after, raw_after = raw_ort(model)
        parse_rate = parse_only(small)

        baseline = (raw_before + raw_after) / 2
        transform_rate = args.rows / big_seconds
        npy_rate = 100_000 / npy_seconds
        print()
        print(
            f"raw ONNX Runtime, best batch   {baseline:12,.0f} rows/s  (before {raw_before:,.0f} at {batch_before}, after {raw_after:,.0f} at {batch_after})"
        )
        print(
            f"berth transform, CSV           {transform_rate:12,.0f} rows/s  = {transform_rate / baseline:.2f} of raw ORT (target >= 0.80); {big_seconds:.1f} s for {args.rows:,} rows"
        )
        print(f"CSV parse alone (no model)     {parse_rate:12,.0f} rows/s  (the text-input ceiling here)")
        print(
            f"berth transform, .npy 100k     {npy_rate:12,.0f} rows/s  = {npy_rate / baseline:.2f} of raw ORT (no text parsing)"
        )
        print(
            f"peak RSS: {small_rss:.0f} MB at 10,000 rows, {big_rss:.0f} MB at {args.rows:,} rows: +{big_rss - small_rss:.0f} MB (target <= 50)"
        )
        print(f"small run: {small_seconds:.1f} s")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

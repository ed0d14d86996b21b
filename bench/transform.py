"""Batch transform benchmark (not a test): `berth transform` against raw ONNX Runtime, one run.

    .venv/bin/python bench/transform.py [--rows 1000000] [--rounds 6] [--keep]

Model: the MLP 256-1024-1024-10 of tests/serving/models.py. Input: CSV of 256 features per row
written with 4 decimals (about 1.9 kB a row: 1,000,000 rows is a 1.9 GB file in a temporary
directory; blocks of 10,000 distinct rows are repeated to write it quickly).

The machine is shared and its speed drifts by 2x within minutes, so every `berth transform` run
(a subprocess; wall time includes start-up and model load) is compared with raw ONNX Runtime
measured just before and just after it: session.run on a ready float32 array at the best batch
size of a sweep (64..4096), intra-op spinning off so that its CPU time counts work only. Ratios
are given in rows/s (the target: at least 0.8) and in rows per CPU-second (less sensitive to
other processes' load). Also printed: the CSV parse alone (the ceiling that text input puts on
any CSV transform here), `berth transform` on .npy input (no text parsing: the engine's own
overhead), and the peak RSS at 10,000 rows and at ROWS rows (target: within 50 MB).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.serving.models import build_mlp  # noqa: E402 - after the path fix above

FEATURES = 256
BLOCK_ROWS = 10_000
BATCH_SIZES = (64, 256, 1024, 4096)
BERTH = str(Path(sys.executable).with_name("berth"))
T = TypeVar("T")
NPY_ARGS = ("--content-type", "application/x-npy", "--split-type", "None")


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


@dataclass(frozen=True)
class Rate:
    rows: int
    wall: float  # seconds
    cpu: float  # CPU seconds, every thread

    @property
    def per_second(self) -> float:
        return self.rows / self.wall

    @property
    def per_cpu_second(self) -> float:
        return self.rows / self.cpu


def raw_session(model: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # Spinning threads burn CPU while waiting; off, the CPU time counts work only.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])


def raw_at(session: ort.InferenceSession, batch: int, seconds: float = 2.0) -> Rate:
    """Plain session.run on a ready float32 array of `batch` rows, for about `seconds`."""
    feed = {"x": np.random.default_rng(1).normal(size=(batch, FEATURES)).astype(np.float32)}
    session.run(None, feed)  # warm-up
    done, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        session.run(None, feed)
        done += batch
    return Rate(done, time.perf_counter() - started, time.process_time() - cpu)


def best_batch(session: ort.InferenceSession) -> int:
    rates = {batch: raw_at(session, batch).per_second for batch in BATCH_SIZES}
    print("  raw ORT rows/s by batch size: " + ", ".join(f"{b}: {r:,.0f}" for b, r in rates.items()))
    return max(rates, key=lambda batch: rates[batch])


def parse_only(path: Path, max_bytes: int = 6 * 1024 * 1024, rows_per_block: int = 512) -> Rate:
    """Reading and parsing the CSV as the engine does (block readlines + loadtxt), no model."""
    started, cpu, count = time.perf_counter(), time.process_time(), 0
    with path.open("rb", buffering=1024 * 1024) as stream:
        while lines := stream.readlines(max_bytes):
            for start in range(0, len(lines), rows_per_block):
                chunk = [raw.decode() for raw in lines[start : start + rows_per_block]]
                count += np.loadtxt(chunk, delimiter=",", dtype=np.float32, ndmin=2).shape[0]
    return Rate(count, time.perf_counter() - started, time.process_time() - cpu)


def run_berth(model: Path, source: Path, out: Path, rows: int, *extra: str) -> tuple[Rate, float]:
    """The Rate (wall and CPU from the process's rusage) and peak RSS in MB of one `berth transform`."""
    command = [BERTH, "transform", "--model", str(model), "--input", str(source), "--output", str(out)]
    started = time.perf_counter()
    process = subprocess.Popen([*command, "--no-progress", *extra], stderr=subprocess.PIPE)
    assert process.stderr is not None
    stderr = process.stderr.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"berth transform failed ({process.returncode}): {stderr}")
    return Rate(rows, seconds, usage.ru_utime + usage.ru_stime), usage.ru_maxrss / 1024  # kB on Linux


def around(session: ort.InferenceSession, batch: int, measure: Callable[[], T]) -> tuple[Rate, T]:
    """Raw ORT measured just before and just after `measure` (merged), and what measure returned."""
    before = raw_at(session, batch)
    result = measure()
    after = raw_at(session, batch)
    return Rate(before.rows + after.rows, before.wall + after.wall, before.cpu + after.cpu), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=6, help="Interleaved raw/berth rounds for the ratio.")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary directory.")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="berth-bench-transform-"))
    try:
        model = build_mlp(root / "mlp.onnx", sizes=(FEATURES, 1024, 1024, 10))
        small, big, part = root / "small" / "rows.csv", root / "big" / "rows.csv", root / "part" / "rows.csv"
        part_rows = args.rows // args.rounds
        for path, rows in ((small, 10_000), (big, args.rows), (part, part_rows)):
            path.parent.mkdir()
            write_csv(path, rows)
        npy = root / "npy" / "rows.npy"
        npy.parent.mkdir()
        np.save(npy, np.loadtxt(small, delimiter=",", dtype=np.float32).repeat(10, axis=0))
        size = big.stat().st_size / 1e9
        print(f"MLP {FEATURES}-1024-1024-10; CSV {args.rows:,} rows ({size:.2f} GB); cores: {os.cpu_count()}")
        session = raw_session(model)
        print("raw ONNX Runtime, batch size sweep:")
        batch = best_batch(session)

        # The machine is shared and drifts by 2x within minutes: each berth run is compared with
        # raw ORT measured just before and after it, in wall time and in CPU time.
        print(f"rounds: raw ORT at batch {batch} | berth transform on {part_rows:,} CSV rows | raw ORT")
        wall_ratios, cpu_ratios = [], []
        for index in range(args.rounds):
            raw, (rate, _) = around(
                session, batch, lambda i=index: run_berth(model, part, root / f"p{i}", part_rows)
            )
            wall_ratios.append(rate.per_second / raw.per_second)
            cpu_ratios.append(rate.per_cpu_second / raw.per_cpu_second)
            print(
                f"  round {index + 1}: raw {raw.per_second:,.0f} rows/s, berth {rate.per_second:,.0f} rows/s"
                f" -> {wall_ratios[-1]:.2f}; per CPU-second raw {raw.per_cpu_second:,.0f},"
                f" berth {rate.per_cpu_second:,.0f} -> {cpu_ratios[-1]:.2f}"
            )
        raw_npy, (npy_rate, _) = around(
            session, batch, lambda: run_berth(model, npy, root / "out-npy", 100_000, *NPY_ARGS)
        )
        raw_parse, parse_rate = around(session, batch, lambda: parse_only(part))
        small_rate, small_rss = run_berth(model, small, root / "out-small", 10_000)
        raw_big, (big_rate, big_rss) = around(
            session, batch, lambda: run_berth(model, big, root / "out-big", args.rows)
        )

        print()
        print(
            f"CSV, berth transform / raw ORT at batch {batch}, median of {args.rounds} rounds:"
            f" {statistics.median(wall_ratios):.2f} in rows/s (target >= 0.80),"
            f" {statistics.median(cpu_ratios):.2f} in rows per CPU-second"
        )
        print(
            f"CSV, one run over {args.rows:,} rows: {big_rate.wall:.1f} s, {big_rate.per_second:,.0f} rows/s"
            f" = {big_rate.per_second / raw_big.per_second:.2f} of raw ORT around it"
            f" ({raw_big.per_second:,.0f}); per CPU-second {big_rate.per_cpu_second / raw_big.per_cpu_second:.2f}"
        )
        print(
            f"CSV parse alone (no model): {parse_rate.per_second:,.0f} rows/s"
            f" = {parse_rate.per_second / raw_parse.per_second:.2f} of raw ORT around it: the text-input ceiling"
        )
        print(
            f".npy input (no text parsing), 100,000 rows: {npy_rate.per_second / raw_npy.per_second:.2f} of raw ORT"
            f" in rows/s, {npy_rate.per_cpu_second / raw_npy.per_cpu_second:.2f} per CPU-second"
        )
        print(
            f"peak RSS of berth transform: {small_rss:.0f} MB at 10,000 rows ({small_rate.wall:.1f} s),"
            f" {big_rss:.0f} MB at {args.rows:,} rows: {big_rss - small_rss:+.0f} MB (target: within 50)"
        )
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

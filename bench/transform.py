"""Batch transform benchmark (not a test): `berth transform` against raw ONNX Runtime, one run.

    .venv/bin/python bench/transform.py [--rows 1000000] [--rounds 3] [--keep]

Model: the MLP 256-1024-1024-10 of tests/serving/models.py. Inputs, ROWS rows each, written
in a temporary directory from blocks of 10,000 distinct rows repeated (formatting is the slow
part): CSV of 256 features with 4 decimals (about 1.9 kB a row: 1,000,000 rows is 1.9 GB),
the same rows as JSON Lines of bare arrays (`[0.1234,-1.5,...]`), and the CSV gzipped (the
block compressed once and repeated: a gzip stream of many members, which gzip reads whole).

The machine is shared and its speed drifts by 2x within minutes, so the rounds interleave:
every `berth transform` run (a subprocess; its wall time includes start-up and model load) is
compared with raw ONNX Runtime measured just before and just after it. Raw ONNX Runtime is
session.run on a ready float32 array, intra-op spinning off so that its CPU time counts work
only, at its best: the batch size and thread count (1 or every CPU) that a sweep found
fastest, both thread counts measured around each run and the faster taken. Ratios are given
in rows/s (the targets: CSV at least 0.8, JSON Lines at least 0.7) and in rows per
CPU-second (less sensitive to other processes' load); medians of the rounds. Also printed:
Berth's parse stage alone over the CSV (no model), `berth transform` on .npy input (no text
parsing: the engine's own overhead), and the peak RSS of the CSV run against a 10,000-row
run (target: within 50 MB).
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnxruntime as ort
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.serving.models import build_mlp  # noqa: E402 - after the path fix above

FEATURES = 256
BLOCK_ROWS = 10_000
BATCH_SIZES = (64, 256, 512, 1024, 4096)
BERTH = str(Path(sys.executable).with_name("berth"))
T = TypeVar("T")
NPY_ARGS = ("--content-type", "application/x-npy", "--split-type", "None")
JSON_ARGS = ("--content-type", "application/jsonlines", "--accept", "application/jsonlines")
GZIP_ARGS = ("--compression", "Gzip")


def _block(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(min(rows, BLOCK_ROWS), FEATURES)).round(4)


def _repeat(path: Path, text: bytes, rows: int, per_block: int) -> None:
    with path.open("wb") as out:
        for _ in range(rows // per_block):
            out.write(text)
        rest = rows % per_block
        if rest:
            out.write(b"".join(text.splitlines(keepends=True)[:rest]))


def write_csv(path: Path, rows: int, seed: int = 0) -> None:
    """ROWS rows in repeated blocks of BLOCK_ROWS distinct rows."""
    block = _block(rows, seed)
    buffer = io.StringIO()
    np.savetxt(buffer, block, fmt="%.4f", delimiter=",")
    _repeat(path, buffer.getvalue().encode(), rows, len(block))


def write_json_lines(path: Path, rows: int, seed: int = 0) -> None:
    block = _block(rows, seed)
    _repeat(path, b"".join(orjson.dumps(row) + b"\n" for row in block.tolist()), rows, len(block))


def write_csv_gzip(path: Path, rows: int, seed: int = 0) -> None:
    """Whole blocks only (rows a multiple of BLOCK_ROWS): one gzip member per block."""
    block = _block(rows, seed)
    buffer = io.StringIO()
    np.savetxt(buffer, block, fmt="%.4f", delimiter=",")
    member = gzip.compress(buffer.getvalue().encode(), compresslevel=6)
    with path.open("wb") as out:
        for _ in range(rows // len(block)):
            out.write(member)


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

    def __add__(self, other: Rate) -> Rate:
        return Rate(self.rows + other.rows, self.wall + other.wall, self.cpu + other.cpu)


def raw_session(model: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Spinning threads burn CPU while waiting; off, the CPU time counts work only.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])


def raw_at(session: ort.InferenceSession, batch: int, seconds: float = 2.0, callers: int = 1) -> Rate:
    """Plain session.run on a ready float32 array of `batch` rows, for about `seconds`, from
    `callers` threads at once (session.run releases the GIL)."""
    feed = {"x": np.random.default_rng(1).normal(size=(batch, FEATURES)).astype(np.float32)}
    session.run(None, feed)  # warm-up
    done = [0] * callers
    started, cpu = time.perf_counter(), time.process_time()

    def loop(index: int) -> None:
        while time.perf_counter() - started < seconds:
            session.run(None, feed)
            done[index] += batch

    threads = [threading.Thread(target=loop, args=(index,)) for index in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Rate(sum(done), time.perf_counter() - started, time.process_time() - cpu)


class Raw:
    """Raw ONNX Runtime at its best. Three ways to use the CPUs, each at the batch size a
    sweep found fastest for it: one call at a time with 1 intra-op thread, one call at a time
    with a thread per CPU, and one single-threaded call per CPU side by side (as Berth runs
    ONNX Runtime beside its parser). Around each run all three are measured; the fastest is
    the baseline."""

    def __init__(self, model: Path) -> None:
        cpus = len(os.sched_getaffinity(0))
        self.best: dict[str, tuple[ort.InferenceSession, int, int]] = {}
        for threads, callers in dict.fromkeys(((1, 1), (cpus, 1), (1, cpus))):
            name = f"{callers} calls x 1 thread" if callers > 1 else f"{threads} thread(s)"
            session = raw_session(model, threads)
            rates = {batch: raw_at(session, batch, 1.5, callers).per_second for batch in BATCH_SIZES}
            print(
                f"  raw ORT, {name}, rows/s by batch size: "
                + ", ".join(f"{b}: {r:,.0f}" for b, r in rates.items())
            )
            self.best[name] = (session, max(rates, key=lambda batch: rates[batch]), callers)

    def measure(self) -> dict[str, Rate]:
        return {
            name: raw_at(session, batch, 1.5, callers)
            for name, (session, batch, callers) in self.best.items()
        }

    def around(self, measure: Callable[[], T]) -> tuple[Rate, str, T]:
        """Raw ORT just before and just after `measure`: the fastest way's merged Rate."""
        before = self.measure()
        result = measure()
        after = self.measure()
        merged = {name: before[name] + after[name] for name in before}
        name = max(merged, key=lambda way: merged[way].per_second)
        return merged[name], f"{name}, batch {self.best[name][1]}", result


def parse_only(path: Path) -> Rate:
    """Berth's parse stage alone (blocks read and parsed as the engine does: its C parser, Arrow
    where that refuses), no model."""
    from berth_serving.signature import Signature
    from berth_serving.transform.records import Parser, read_blocks

    class Spec:
        def __init__(self) -> None:
            self.name, self.type, self.shape = "x", "tensor(float)", ["N", FEATURES]

    class Session:
        def get_inputs(self) -> list[Spec]:
            return [Spec()]

        def get_outputs(self) -> list[Spec]:
            return []

    parser = Parser(Signature.from_session(Session(), None), "text/csv", keep_lines=False)
    started, cpu, count = time.perf_counter(), time.process_time(), 0
    with path.open("rb", buffering=1024 * 1024) as stream:
        blocks = read_blocks(
            stream, content_type="text/csv", split_type="Line", max_bytes=6 * 2**20, max_rows=1 << 16
        )
        for block in blocks:
            count += parser.parse(block).rows
    return Rate(count, time.perf_counter() - started, time.process_time() - cpu)


# Runs the command and prints its rusage. A child's ru_maxrss includes the image it was forked
# from (the bench process, hundreds of MB), so the peak RSS is taken by this small launcher.
LAUNCHER = """
import os, sys
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ)
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime, usage.ru_maxrss)
"""


def run_berth(model: Path, source: Path, out: Path, rows: int, *extra: str) -> tuple[Rate, float]:
    """The Rate (wall, and CPU from the process's rusage) and peak RSS in MB of one `berth transform`."""
    shutil.rmtree(out, ignore_errors=True)
    command = [BERTH, "transform", "--model", str(model), "--input", str(source), "--output", str(out)]
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *command, "--no-progress", *extra], capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    code, cpu, maxrss = result.stdout.split()
    if int(code) != 0:
        raise SystemExit(f"berth transform failed ({code}): {result.stderr}")
    if f" {rows} records, 0 malformed" not in result.stderr:
        raise SystemExit(f"berth transform did not transform {rows} records: {result.stderr}")
    shutil.rmtree(out, ignore_errors=True)  # 1,000,000 rows of output is 100 MB
    return Rate(rows, seconds, float(cpu)), int(maxrss) / 1024  # kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="A multiple of 10,000.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved raw/berth rounds.")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary directory.")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="berth-bench-transform-"))
    try:
        model = build_mlp(root / "mlp.onnx", sizes=(FEATURES, 1024, 1024, 10))
        inputs = {
            "CSV": (root / "csv" / "rows.csv", write_csv, ()),
            "JSON Lines": (root / "jsonl" / "rows.jsonl", write_json_lines, JSON_ARGS),
            "CSV gzip": (root / "gzip" / "rows.csv.gz", write_csv_gzip, GZIP_ARGS),
        }
        for path, write, _ in inputs.values():
            path.parent.mkdir()
            write(path, args.rows)
        small = root / "small" / "rows.csv"
        small.parent.mkdir()
        write_csv(small, 10_000)
        npy = root / "npy" / "rows.npy"
        npy.parent.mkdir()
        np.save(npy, np.loadtxt(small, delimiter=",", dtype=np.float32).repeat(10, axis=0))
        sizes = ", ".join(
            f"{name} {path.stat().st_size / 1e9:.2f} GB" for name, (path, _, _) in inputs.items()
        )
        print(f"MLP {FEATURES}-1024-1024-10; {args.rows:,} rows: {sizes}; CPUs: {os.cpu_count()}")
        print("raw ONNX Runtime sweep:")
        raw = Raw(model)

        print(f"rounds: raw ORT | berth transform on {args.rows:,} rows | raw ORT, for each input")
        wall: dict[str, list[float]] = {name: [] for name in inputs}
        cpu: dict[str, list[float]] = {name: [] for name in inputs}
        rss: list[float] = []
        for index in range(args.rounds):
            for name, (path, _, extra) in inputs.items():
                base, how, (rate, peak) = raw.around(
                    lambda p=path, e=extra: run_berth(model, p, root / "out", args.rows, *e)
                )
                wall[name].append(rate.per_second / base.per_second)
                cpu[name].append(rate.per_cpu_second / base.per_cpu_second)
                if name == "CSV":
                    rss.append(peak)
                print(
                    f"  round {index + 1} {name}: raw ({how}) {base.per_second:,.0f} rows/s,"
                    f" berth {rate.per_second:,.0f} rows/s ({rate.wall:.1f} s) -> {wall[name][-1]:.2f};"
                    f" per CPU-second raw {base.per_cpu_second:,.0f}, berth {rate.per_cpu_second:,.0f}"
                    f" -> {cpu[name][-1]:.2f}",
                    flush=True,
                )
        raw_parse, _, parse_rate = raw.around(lambda: parse_only(inputs["CSV"][0]))
        raw_npy, _, (npy_rate, _) = raw.around(
            lambda: run_berth(model, npy, root / "out", 100_000, *NPY_ARGS)
        )
        small_rate, small_rss = run_berth(model, small, root / "out", 10_000)

        print()
        targets = {"CSV": 0.8, "JSON Lines": 0.7, "CSV gzip": None}
        for name in inputs:
            target = targets[name]
            print(
                f"{name}, berth transform / raw ORT at its best, median of {args.rounds} rounds:"
                f" {statistics.median(wall[name]):.2f} in rows/s"
                + (f" (target >= {target:.2f})" if target else "")
                + f", {statistics.median(cpu[name]):.2f} in rows per CPU-second"
            )
        print(
            f"CSV parse stage alone (no model): {parse_rate.per_second:,.0f} rows/s"
            f" = {parse_rate.per_second / raw_parse.per_second:.2f} of raw ORT around it"
        )
        print(
            f".npy input (no text parsing), 100,000 rows: {npy_rate.per_second / raw_npy.per_second:.2f} of raw ORT"
            f" in rows/s, {npy_rate.per_cpu_second / raw_npy.per_cpu_second:.2f} per CPU-second"
        )
        peak = max(rss)
        print(
            f"peak RSS of berth transform: {small_rss:.0f} MB at 10,000 rows ({small_rate.wall:.1f} s),"
            f" {peak:.0f} MB at {args.rows:,} CSV rows: {peak - small_rss:+.0f} MB (target: within 50)"
        )
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""A control for bench/serving.py: the MLP server's ONNX Runtime work without its HTTP.

    python bench/compute_beside.py MODEL.onnx WIDTH

Loads the model with the server's session options, prints `ready`, then for each line
`ROWS_PER_SECOND BATCH SECONDS` on stdin runs batches of BATCH rows at that rate for that long
and prints `done ACHIEVED_ROWS_PER_SECOND`. While the no-op server is loaded beside it, the
no-op's throughput is what a server that added nothing to the model's own compute could reach
on this machine: the two cores are shared by the load generator, the event loop and ONNX
Runtime, so the model's arithmetic slows the event loop even with no coupling between them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "serving"))
from berth_serving.cgroup import available_cpus  # noqa: E402
from berth_serving.session import session_options  # noqa: E402


def run_at_rate(
    session: ort.InferenceSession, rows: np.ndarray, rows_per_second: float, seconds: float
) -> float:
    """Batches at a fixed pace (no catching up in bursts); the row rate achieved."""
    period = len(rows) / rows_per_second
    feed = {session.get_inputs()[0].name: rows}
    started = time.perf_counter()
    calls = 0
    while time.perf_counter() - started < seconds:
        session.run(None, feed)
        calls += 1
        behind = started + calls * period - time.perf_counter()
        if behind > 0:
            time.sleep(behind)
    return calls * len(rows) / (time.perf_counter() - started)


def main() -> None:
    model, width = sys.argv[1], int(sys.argv[2])
    # The batches the server runs at concurrency 64 take longer than batcher.ONE_THREAD_BELOW_SECONDS,
    # so it runs them on its main session: the same options here.
    session = ort.InferenceSession(
        model, sess_options=session_options(available_cpus(), "all"), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    print("ready", flush=True)
    for line in sys.stdin:
        rows_per_second, batch, seconds = line.split()
        rows = rng.normal(size=(max(1, round(float(batch))), width)).astype(np.float32)
        achieved = run_at_rate(session, rows, float(rows_per_second), float(seconds))
        print(f"done {achieved:.1f}", flush=True)


if __name__ == "__main__":
    main()

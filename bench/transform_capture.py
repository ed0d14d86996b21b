"""Batch transform with data capture (not a test): `berth transform` rows/s with capture off
against capture of every record (samplingPercentage 100, file://), in the same run.

    .venv/bin/python bench/transform_capture.py [--rows 100000] [--rounds 3] [--percentage 100]

The CSV and the MLP 256-1024-1024-10 of bench/transform.py. The rounds interleave off and on
(the machine's speed drifts); printed: each run's rows/s, the events captured and dropped
(from the termination message), and the median ratio on/off.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transform import FEATURES, build_mlp, run_berth, write_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--percentage", type=float, default=100.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="berth-bench-capture-"))
    try:
        model = build_mlp(root / "mlp.onnx", sizes=(FEATURES, 1024, 1024, 10))
        source = root / "in"
        source.mkdir()
        write_csv(source / "data.csv", args.rows)
        log = root / "termination-log"
        os.environ["BERTH_TERMINATION_LOG"] = str(log)
        ratios = []
        for round_ in range(args.rounds):
            off, _ = run_berth(model, source, root / "out", args.rows)
            capture = root / "capture"
            shutil.rmtree(capture, ignore_errors=True)
            settings = {
                "destinationUri": f"file://{capture}/",
                "endpoint": "bench",
                "variant": "transform",
                "samplingPercentage": args.percentage,
                "source": "transform",
            }
            on, _ = run_berth(model, source, root / "out", args.rows, "--capture", json.dumps(settings))
            counts = json.loads(log.read_text())
            size = sum(p.stat().st_size for p in capture.rglob("*.jsonl"))
            shutil.rmtree(capture, ignore_errors=True)
            ratio = on.per_second / off.per_second
            ratios.append(ratio)
            print(
                f"round {round_ + 1}: off {off.per_second:,.0f} rows/s, capture {args.percentage:g}% "
                f"{on.per_second:,.0f} rows/s (ratio {ratio:.2f}); captured {counts['captured']:,}, "
                f"dropped {counts['captureDropped']:,}, {size / 1e6:.0f} MB of capture files",
                flush=True,
            )
        print(f"median ratio capture on / off: {statistics.median(ratios):.2f} over {args.rounds} rounds")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

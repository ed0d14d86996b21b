"""Model monitoring benchmark (not a test): `berth monitor run` over captured events, one run.

    .venv/bin/python bench/monitor.py [--records 1000000 250000] [--events-per-file 125000] [--keep]

Captures: RECORDS events (a CSV row of 10 features each: 9 normal with 4 decimals, one integer),
stamped over one hour, in .jsonl files of 125,000 events (62 MB, as a capture writer rolling files
by size would) in DEST/fraud/blue/yyyy/mm/dd/hh/ on local disk (1,000,000 events is 496 MB). The baseline is 20,000 rows of the same
distribution. For each size: `berth monitor run` (a subprocess; wall time includes start-up),
and, as the same-run reference, a subprocess that only has DuckDB read the same files with the
same column selection (count(*)). Printed: records/s of both, their ratio, and the peak RSS of
each child (ru_maxrss from wait4 in a small launcher, so the bench's own memory is not in it).
Targets: over 100,000 records/s, and a peak RSS that does not grow with the record count.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

BERTH = str(Path(sys.executable).with_name("berth"))
FEATURES = 10
HOUR = "2026-12-01T10"

LAUNCHER = """
import os, sys
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ)
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""

COUNT = """
import sys, duckdb
from berth_serving.monitor.captures import EVENT_COLUMNS, _sql_list
files = sys.argv[1:]
db = duckdb.connect()
db.execute("SET memory_limit = '512MB'")
print(db.execute(f"SELECT count(captureData.endpointInput.data) FROM read_json({_sql_list(files)}, "
                 f"format='newline_delimited', columns={EVENT_COLUMNS})").fetchone()[0])
"""

EVENT = (
    '{{"captureData": {{"endpointInput": {{"observedContentType": "text/csv", "mode": "INPUT", "data": "{data}", '
    '"encoding": "CSV"}}, "endpointOutput": {{"observedContentType": "application/json", "mode": "OUTPUT", '
    '"data": "{{\\"predictions\\":[0]}}", "encoding": "JSON"}}}}, "eventMetadata": {{"eventId": "{uid}", '
    '"inferenceId": "{index}", "inferenceTime": "{HOUR}:{minute:02d}:{second:02d}Z", "variant": "blue", '
    '"source": "realtime"}}, "eventVersion": "0"}}\n'
)


def rows(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    numbers = rng.normal(0.0, 1.0, size=(count, FEATURES - 1))
    ints = rng.integers(0, 10, size=count)
    text = np.char.mod("%.4f", numbers)
    return [",".join(row) + f",{n}" for row, n in zip(text.tolist(), ints.tolist(), strict=True)]


def write_captures(root: Path, records: int, files: int) -> list[Path]:
    folder = root / "fraud" / "blue" / "2026" / "12" / "01" / "10"
    folder.mkdir(parents=True)
    block = rows(50_000, seed=2)
    uid = str(uuid.uuid4())
    paths = [folder / f"{i:04d}.jsonl" for i in range(files)]
    streams = [open(path, "w", buffering=1 << 20) for path in paths]  # noqa: SIM115 - closed below
    for index in range(records):
        second = index * 3600 // records
        line = EVENT.format(
            data=block[index % len(block)],
            uid=uid,
            index=index,
            HOUR=HOUR,
            minute=second // 60,
            second=second % 60,
        )
        streams[index % files].write(line)
    for stream in streams:
        stream.close()
    return paths


def launch(command: list[str]) -> tuple[float, float, str]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", LAUNCHER, *command], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    *_, last = result.stdout.strip().splitlines()
    code, maxrss = last.split()
    if int(code) != 0:
        raise SystemExit(f"{command[1]} failed ({code}): {result.stderr}")
    return seconds, int(maxrss) / 1024, result.stdout + result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, nargs="+", default=[1_000_000, 250_000])
    parser.add_argument("--events-per-file", type=int, default=125_000, help="Capture files of equal size.")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-monitor-"))
    try:
        base = scratch / "train.csv"
        base.write_text("\n".join(rows(20_000, seed=1)) + "\n")
        subprocess.run(
            [BERTH, "monitor", "baseline", "--dataset", str(base), "--output", str(scratch / "bl")],
            check=True,
        )
        print(
            f"{'records':>10} {'berth s':>8} {'berth rec/s':>12} {'rss MB':>7} {'count s':>8} {'count rec/s':>12} "
            f"{'rss MB':>7} {'ratio':>6}"
        )
        for records in args.records:
            captures = scratch / f"cap-{records}"
            started = time.perf_counter()
            paths = write_captures(captures, records, max(1, records // args.events_per_file))
            size = sum(path.stat().st_size for path in paths) / 2**20
            print(
                f"# {records} events, {size:.0f} MB in {len(paths)} files, written in "
                f"{time.perf_counter() - started:.1f} s",
                flush=True,
            )
            count_s, count_rss, out = launch([sys.executable, "-c", COUNT, *map(str, paths)])
            if str(records) not in out:
                raise SystemExit(f"count(*) read {out!r}, not {records}")
            env_out = scratch / f"out-{records}"
            berth_s, berth_rss, out = launch(
                [
                    BERTH,
                    "monitor",
                    "run",
                    "--captures",
                    str(captures / "fraud"),
                    "--statistics",
                    str(scratch / "bl" / "statistics.json"),
                    "--constraints",
                    str(scratch / "bl" / "constraints.json"),
                    "--output",
                    str(env_out),
                    "--since",
                    f"{HOUR}:00:00Z",
                    "--until",
                    "2026-12-01T11:00:00Z",
                ]
            )
            if f"{records} records, " not in out:
                raise SystemExit(f"berth monitor run: {out}")
            print(
                f"{records:>10} {berth_s:>8.2f} {records / berth_s:>12,.0f} {berth_rss:>7.0f} {count_s:>8.2f} "
                f"{records / count_s:>12,.0f} {count_rss:>7.0f} {berth_s / count_s:>6.2f}",
                flush=True,
            )
            report = next(env_out.glob("*/constraint_violations.json"))
            print(f"# violations: {json.loads(report.read_text())['violations']}")
            shutil.rmtree(captures)
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

"""Serving memory under large concurrent requests (not a test): `berth serve` RSS before,
after and at its peak while CONCURRENCY clients each post one JSON body just under the
6 MiB payload limit.

    .venv/bin/python bench/serving_memory.py [--model identity|mlp] [--concurrency 32]
        [--short-numbers] [--pythonpath DIR]

`--short-numbers` writes 0.5 for every value (the most Python objects per body byte, the
worst case for decoding); `--pythonpath` serves another checkout's berth_serving (a before
and after comparison in one run).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.serving.models import build_identity, build_mlp  # noqa: E402
from tests.serving.support import serve_command  # noqa: E402

LIMIT = 6 * 1024 * 1024


def status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["identity", "mlp"], default="mlp")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--short-numbers", action="store_true")
    parser.add_argument("--pythonpath", default="")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="berth-memory-"))
    if args.model == "identity":
        model, width = build_identity(root / "identity.onnx", n_features=16), 16
    else:
        model, width = build_mlp(root / "mlp.onnx", sizes=(256, 1024, 1024, 10)), 256
    row_values = (
        [0.5] * width
        if args.short_numbers
        else np.round(np.random.default_rng(0).normal(size=width), 4).tolist()
    )
    row = json.dumps(row_values).encode()
    body = b'{"instances": [' + b",".join([row] * ((LIMIT - 20) // (len(row) + 1))) + b"]}"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, **({"PYTHONPATH": args.pythonpath} if args.pythonpath else {})}
    process = subprocess.Popen(
        serve_command(model, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=root,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/ping")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        before = status_mb(process.pid, "VmRSS:")
        codes: list[int] = []

        def one() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
            answer = connection.getresponse()
            answer.read()
            codes.append(answer.status)

        started = time.monotonic()
        clients = [threading.Thread(target=one) for _ in range(args.concurrency)]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        print(
            f"{args.model}, {args.concurrency} x {len(body) / 2**20:.2f} MiB JSON"
            f"{' (short numbers)' if args.short_numbers else ''}: RSS before {before:.0f} MB, "
            f"after {status_mb(process.pid, 'VmRSS:'):.0f} MB, peak {status_mb(process.pid, 'VmHWM:'):.0f} MB; "
            f"{codes.count(200)}/{len(codes)} answered 200 in {time.monotonic() - started:.1f} s"
        )
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()

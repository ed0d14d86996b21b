"""Data capture benchmark (not a test): what capturing every request costs an answer.

    .venv/bin/python bench/capture.py [--requests 2000] [--rounds 3] [--concurrency 8]

Two `berth serve` processes on the same no-op model (identity, 16 features), one with capture
off, one capturing 100% to file:// (a temporary directory). They run side by side for the whole
run and are measured in interleaved rounds (off, on, on, off, ...), so the machine's other
tenants fall on both alike: compare figures only within one run. Each request is timed by the
client, sequentially on one keep-alive connection and with --concurrency connections at once.
Target: capture on within 0.1 ms of capture off at p50.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from berth_serving.capture import capture_to_json  # noqa: E402
from berth_serving.capture.settings import CaptureConfig  # noqa: E402

from tests.serving.models import build_identity  # noqa: E402
from tests.serving.support import free_port, request, serve_command, wait_until  # noqa: E402

BODY = ",".join(["0.5"] * 16).encode()
HEADERS = {"Content-Type": "text/csv"}
P50_TARGET_MS = 0.1


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def sequential(port: int, count: int) -> list[float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            connection.request("POST", "/invocations", BODY, HEADERS)
            answer = connection.getresponse()
            answer.read()
            latencies.append((time.perf_counter() - started) * 1000)
            assert answer.status == 200, answer.status
    finally:
        connection.close()
    return latencies


async def _concurrent(port: int, count: int, concurrency: int) -> list[float]:
    raw = (
        b"POST /invocations HTTP/1.1\r\nHost: bench\r\nContent-Type: text/csv\r\n"
        + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
        + BODY
    )
    latencies: list[float] = []
    left = [count]

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while left[0] > 0:
                left[0] -= 1
                started = time.perf_counter()
                writer.write(raw)
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), head[:40]
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                latencies.append((time.perf_counter() - started) * 1000)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies


def concurrent(port: int, count: int, concurrency: int) -> list[float]:
    return asyncio.run(_concurrent(port, count, concurrency))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per server, mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="berth-bench-capture-"))
    model = build_identity(workdir / "identity.onnx")
    destination = workdir / "captures"
    capture = CaptureConfig(f"file://{destination}/", "bench", "blue", 100.0)
    ports = {"off": free_port(), "on": free_port()}
    extra = {"off": [], "on": ["--capture", capture_to_json(capture)]}
    processes = {
        name: subprocess.Popen(
            [*serve_command(model, port, "--variant", "blue", "--max-batch-size", "1"), *extra[name]],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
        )
        for name, port in ports.items()
    }
    results: dict[tuple[str, str], list[float]] = {}
    try:
        for port in ports.values():
            wait_until(lambda port=port: request(f"http://127.0.0.1:{port}/ping").status == 200, timeout=60)
        for port in ports.values():  # warm both
            sequential(port, 200)
        for round_ in range(args.rounds):
            order = ("off", "on") if round_ % 2 == 0 else ("on", "off")
            for name in order:
                results.setdefault((name, "sequential"), []).extend(sequential(ports[name], args.requests))
            for name in reversed(order):
                results.setdefault((name, "concurrent"), []).extend(
                    concurrent(ports[name], args.requests, args.concurrency)
                )
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(30)
    written = sum(len(path.read_bytes().splitlines()) for path in destination.rglob("*.jsonl"))
    sent = args.rounds * args.requests * 2 + 200
    print(f"identity model, CSV row of 16, {args.rounds} rounds x {args.requests} requests per mode")
    print(f"capture on wrote {written} events for {sent} requests (after SIGTERM)")
    print(f"{'mode':<24}{'off p50':>9}{'on p50':>9}{'off p99':>9}{'on p99':>9}{'p50 x':>8}{'p50 +ms':>9}")
    ok = True
    for mode in ("sequential", f"concurrent ({args.concurrency})"):
        key = mode.split()[0]
        off, on = results[("off", key)], results[("on", key)]
        off50, on50 = statistics.median(off), statistics.median(on)
        off99, on99 = percentile(off, 0.99), percentile(on, 0.99)
        diff = on50 - off50
        ok = ok and (key != "sequential" or diff <= P50_TARGET_MS)
        print(
            f"{mode:<24}{off50:>9.3f}{on50:>9.3f}{off99:>9.3f}{on99:>9.3f}{on50 / off50:>8.2f}{diff:>+9.3f}"
        )
    print(f"target (sequential p50 within {P50_TARGET_MS} ms): {'met' if ok else 'NOT met'}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Send requests to an endpoint without pause until a stop file appears; report every failure.

Standard library only (runs on a bare CI runner). Writes a JSON summary and exits 1 when any
request failed (non-200 answer, connection error or timeout), or when none was sent.

    constant_load.py --url URL --stop-file /tmp/stop --summary /tmp/load.json [--workers 4]
                     [--min-requests 1]

It stops once the stop file exists and at least --min-requests requests were made (answered or
failed), so a slow start never ends a run with nothing measured.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

BODY = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}).encode()


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: Counter[str] = Counter()
        self.variants: Counter[str] = Counter()
        self.failures: list[str] = []

    def total(self) -> int:
        with self.lock:
            return sum(self.statuses.values())

    def record(self, status: str, variant: str | None, failure: str | None) -> None:
        with self.lock:
            self.statuses[status] += 1
            if variant:
                self.variants[variant] += 1
            if failure and len(self.failures) < 50:
                self.failures.append(failure)


def worker(url: str, stop_file: Path, tally: Tally, timeout: float, min_requests: int, token: str) -> None:
    headers = {"Content-Type": "application/json"}
    if token:  # the Endpoint is closed by default: a caller's bearer token
        headers["Authorization"] = f"Bearer {token}"
    while not stop_file.exists() or tally.total() < min_requests:
        request = urllib.request.Request(url, data=BODY, headers=headers)
        started = time.strftime("%H:%M:%S")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                answer.read()
                tally.record(str(answer.status), answer.headers.get("X-Berth-Variant"), None)
        except urllib.error.HTTPError as exc:
            body = exc.read()[:300].decode("utf-8", "replace")
            tally.record(
                str(exc.code), exc.headers.get("X-Berth-Variant"), f"{started} HTTP {exc.code}: {body}"
            )
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            tally.record("error", None, f"{started} {type(exc).__name__}: {exc}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--stop-file", type=Path, required=True)
    parser.add_argument("--summary", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--min-requests", type=int, default=1)
    parser.add_argument("--token-file", type=Path, help="a bearer token to send (read once)")
    args = parser.parse_args()
    token = args.token_file.read_text().strip() if args.token_file else ""

    tally = Tally()
    work = (args.url, args.stop_file, tally, args.timeout, args.min_requests, token)
    threads = [threading.Thread(target=worker, args=work, daemon=True) for _ in range(args.workers)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = sum(tally.statuses.values())
    failed = total - tally.statuses["200"]
    summary = {
        "requests": total,
        "failed": failed,
        "seconds": round(time.monotonic() - started, 1),
        "statuses": dict(tally.statuses),
        "variants": dict(tally.variants),
        "first_failures": tally.failures,
    }
    args.summary.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0 if total > 0 and failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Serverless benchmark (not a test): cold starts from zero in local mode, by phase, and the warm
latency of a serverless variant against an always-on one, in one run.

    .venv/bin/python bench/serverless.py [--rounds 3] [--latency-samples 2000]

Parts, all real and on loopback: one `berth up` serving four Endpoints of two models, the
quickstart's champion (examples/quickstart/build_model.py, built in a scratch directory) and an
MLP of about 100 MB the bench builds (4-5000-5000-3, float32):
- `qs-cold` and `big-cold`: serverless, idleSeconds 10 (the least the API takes); each round
  waits for both to be at zero replicas, then POSTs one request to each in turn and takes the
  time to its answer (the client's clock), the X-Berth-Cold-Start header, and the phases the
  local interceptor reports (scheduled, model fetched, model loaded, first answer).
  Target: under 2 s for the quickstart model, phases adding up to the total.
- `qs-lean` (serverless, idleSeconds 600, warm after its first request) and `qs-warm`
  (instanceType, always on): one request at a time, alternating, p50 of each.
  Target: serverless within 0.2 ms of always-on.

Baselines measured in the same run: for a cold start, `berth serve` of the same model started
by hand (process start to its first answer, no router, no interceptor); the cold start is
printed against it, as a difference and a ratio. For warm latency, the always-on variant.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import REPO, free_port
from tests.serving.models import build_mlp
from tests.serving.support import serve_command

BIG_SIZES = (4, 5000, 5000, 3)  # 25 M float32 weights: about 100 MB
ROW = [5.1, 3.5, 1.4, 0.2]
BODY = json.dumps({"instances": [ROW]}).encode()
PHASES = ("scheduled", "modelFetched", "modelLoaded", "firstAnswer")


def berth(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("berth")), *args]


def build_quickstart(out: Path) -> Path:
    subprocess.run(
        [sys.executable, str(REPO / "examples" / "quickstart" / "build_model.py"), "--out-dir", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return out / "champion.onnx"


def manifests(quickstart: Path, big: Path) -> list[dict[str, Any]]:
    def serverless(name: str, model: str, idle: int) -> list[dict[str, Any]]:
        return [
            {"apiVersion": "berth.dev/v1alpha1", "kind": "EndpointConfig", "metadata": {"name": f"{name}-v1"},
             "spec": {"productionVariants": [{
                 "variantName": "main", "modelName": model,
                 "serverlessConfig": {"memorySizeInMB": 2048, "maxConcurrency": 8, "idleSeconds": idle,
                                      "coldStartTimeoutSeconds": 120}}]}},
            {"apiVersion": "berth.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": name},
             "spec": {"endpointConfigName": f"{name}-v1", "auth": {"mode": "None"}}},
        ]  # fmt: skip

    return [
        {"apiVersion": "berth.dev/v1alpha1", "kind": "Model", "metadata": {"name": "champion"},
         "spec": {"modelUri": f"file://{quickstart}"}},
        {"apiVersion": "berth.dev/v1alpha1", "kind": "Model", "metadata": {"name": "big"},
         "spec": {"modelUri": f"file://{big}"}},
        *serverless("qs-cold", "champion", 10),
        *serverless("big-cold", "big", 10),
        *serverless("qs-lean", "champion", 600),
        {"apiVersion": "berth.dev/v1alpha1", "kind": "EndpointConfig", "metadata": {"name": "qs-warm-v1"},
         "spec": {"productionVariants": [{"variantName": "main", "modelName": "champion",
                                          "instanceType": "cpu-small", "initialInstanceCount": 1}]}},
        {"apiVersion": "berth.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": "qs-warm"},
         "spec": {"endpointConfigName": "qs-warm-v1", "auth": {"mode": "None"}}},
    ]  # fmt: skip


class Up:
    def __init__(self, work: Path, documents: list[dict[str, Any]]) -> None:
        (work / "manifests").mkdir()
        path = work / "manifests" / "serverless.yaml"
        path.write_text("---\n".join(json.dumps(d) + "\n" for d in documents))
        self.port = free_port()
        self.log = (work / "up.log").open("ab")
        self.process = subprocess.Popen(
            berth(
                "up", "-f", str(path), "--port", str(self.port), "--run-dir", str(work / "run"), "--no-watch"
            ),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_berth/status", timeout=5) as answer:
            found: dict[str, Any] = json.loads(answer.read())
            return found

    def endpoint(self, name: str) -> dict[str, Any]:
        return next(e for e in self.status()["endpoints"] if e["name"] == name)

    def wait(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if predicate():
                    return
            except (OSError, KeyError, StopIteration):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(what)
            time.sleep(0.1)

    def idle(self, name: str) -> bool:
        ep = self.endpoint(name)
        return (
            ep["status"].get("phase") == "InService"
            and not ep["replicas"]
            and ep["serverless"][0]["replicas"] == 0
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def post(connection: http.client.HTTPConnection, name: str) -> http.client.HTTPResponse:
    connection.request(
        "POST", f"/endpoints/default/{name}/invocations", BODY, {"Content-Type": "application/json"}
    )
    answer = connection.getresponse()
    answer.read()
    if answer.status != 200:
        raise RuntimeError(f"{name} answered {answer.status}")
    return answer


def cold_start(up: Up, name: str) -> dict[str, float]:
    """One request at zero: client seconds, the header's ms, and the interceptor's phases."""
    before = up.endpoint(name)["serverless"][0]["coldStarts"]
    connection = http.client.HTTPConnection("127.0.0.1", up.port, timeout=180)
    started = time.perf_counter()
    answer = post(connection, name)
    client = time.perf_counter() - started
    connection.close()
    header = float(answer.getheader("x-berth-cold-start") or "nan") / 1000
    up.wait(lambda: up.endpoint(name)["serverless"][0]["coldStarts"] > before, 10, f"{name}'s cold start")
    last = up.endpoint(name)["serverless"][0]["lastColdStart"]
    return {"client": client, "held": header, "total": last["totalSeconds"], **last["phases"]}


def bare_start(model: Path) -> float:
    """`berth serve` by hand: seconds from the process start to its first answer."""
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(
        serve_command(model, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/ping")
                ping = connection.getresponse()
                ping.read()
                if ping.status == 200:
                    break
            except OSError:
                pass
            if time.perf_counter() - started > 120:
                raise TimeoutError("berth serve did not start")
            time.sleep(0.005)
        connection.request("POST", "/invocations", BODY, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 200, answer.status
        return time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(30)


def warm_p50_ms(port: int, samples: int) -> tuple[float, float]:
    """(serverless p50, always-on p50), one request at a time, alternating."""
    lean = http.client.HTTPConnection("127.0.0.1", port)
    warm = http.client.HTTPConnection("127.0.0.1", port)
    times: dict[str, list[float]] = {"qs-lean": [], "qs-warm": []}
    for _ in range(samples):
        for name, connection in (("qs-lean", lean), ("qs-warm", warm)):
            started = time.perf_counter()
            post(connection, name)
            times[name].append(time.perf_counter() - started)
    return statistics.median(times["qs-lean"]) * 1000, statistics.median(times["qs-warm"]) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-samples", type=int, default=2000)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="berth-bench-serverless-"))
    try:
        quickstart = build_quickstart(work / "quickstart")
        big = build_mlp(work / "big.onnx", sizes=BIG_SIZES)
        print(
            f"models: quickstart champion {quickstart.stat().st_size / 1e3:.1f} kB, "
            f"MLP {BIG_SIZES} {big.stat().st_size / 1e6:.0f} MB",
            flush=True,
        )
        up = Up(work, manifests(quickstart, big))
        try:
            up.wait(lambda: all(up.endpoint(n)["status"].get("phase") == "InService"
                                for n in ("qs-cold", "big-cold", "qs-lean", "qs-warm")), 180, "InService")  # fmt: skip
            results: dict[str, list[dict[str, float]]] = {"qs-cold": [], "big-cold": []}
            bare: dict[str, list[float]] = {"qs-cold": [], "big-cold": []}
            for round_number in range(1, options.rounds + 1):
                for name, model in (("qs-cold", quickstart), ("big-cold", big)):
                    up.wait(lambda n=name: up.idle(n), 120, f"{name} at zero")
                    time.sleep(1)  # nothing of the scale-down left running beside the cold start
                    results[name].append(cold_start(up, name))
                    bare[name].append(bare_start(model))
                    r = results[name][-1]
                    print(
                        f"  round {round_number} {name}: answered {r['client']:.3f} s (held {r['held']:.3f} s); "
                        + ", ".join(f"{p} {r[p]:.3f}" for p in PHASES)
                        + f"; bare berth serve to first answer {bare[name][-1]:.3f} s",
                        flush=True,
                    )
            # Warm: the lean serverless variant after its first (cold) request, against always-on.
            post(http.client.HTTPConnection("127.0.0.1", up.port, timeout=180), "qs-lean")
            warm_p50_ms(up.port, 200)  # connections and caches warm
            lean_ms, warm_ms = warm_p50_ms(up.port, options.latency_samples)
        finally:
            up.stop()
        print(f"cold start from zero, median of {options.rounds} rounds (seconds):")
        for name, label, target in (("qs-cold", "quickstart", 2.0), ("big-cold", "MLP 100 MB", None)):
            rows = results[name]
            med = {
                key: statistics.median(r[key] for r in rows) for key in ("client", "held", "total", *PHASES)
            }
            base = statistics.median(bare[name])
            phase_sum = sum(med[p] for p in PHASES)
            goal = (
                f" (target < {target:.0f} s: {'met' if med['client'] < target else 'MISSED'})"
                if target
                else ""
            )
            print(
                f"  {label}: answered {med['client']:.3f}{goal}; interceptor total {med['total']:.3f} = "
                + " + ".join(f"{p} {med[p]:.3f}" for p in PHASES)
                + f" (sum of medians {phase_sum:.3f}); baseline bare berth serve {base:.3f}: "
                f"{med['client'] - base:+.3f} s, x{med['client'] / base:.2f}"
            )
        print(
            f"warm latency p50, one at a time ({options.latency_samples} each, alternating): serverless "
            f"{lean_ms:.3f} ms, always-on {warm_ms:.3f} ms, difference {lean_ms - warm_ms:+.3f} ms "
            f"(x{lean_ms / warm_ms:.3f}; target within 0.2 ms: {'met' if abs(lean_ms - warm_ms) <= 0.2 else 'MISSED'})"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Local mode speed, in one run: `python bench/local.py [--requests 10000] [--latency-requests 3000]`

1. The router's added p50 latency: the same request sent straight to a replica and through
   `berth up`'s router, interleaved, one keep-alive connection each (target: within 1 ms),
   and how many connections the router opened to the replica for them (target: a few).
2. The share of each variant over N requests through the router (target: within 2 points).
3. Failed requests while the Endpoint moves to a new EndpointConfig under constant load
   (target: 0).

Everything runs on loopback with the quickstart's models (built on the spot) in a temporary
directory; `berth up` is a real subprocess. The machine is shared: compare only within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import yaml

REPO = Path(__file__).resolve().parents[1]
BERTH = str(Path(sys.executable).parent / "berth")
ROW = [5.9, 3.0, 4.2, 1.5]
BODY = json.dumps({"instances": [ROW]}).encode()
WEIGHTS = {"champion": 80, "challenger": 20}
ROLLOUT = {
    "blueGreen": {
        "trafficRouting": {
            "type": "Canary",
            "canarySize": {"type": "Percent", "value": 20},
            "waitIntervalSeconds": 1,
        },
        "terminationWaitSeconds": 0,
    }
}


def manifests(directory: Path, models: Path) -> Path:
    def model(name: str, file: str) -> dict[str, Any]:
        return {
            "apiVersion": "berth.dev/v1alpha1",
            "kind": "Model",
            "metadata": {"name": name},
            "spec": {"modelUri": f"file://{models / file}"},
        }

    def variant(name: str, model_name: str, weight: int) -> dict[str, Any]:
        return {
            "variantName": name,
            "modelName": model_name,
            "instanceType": "cpu-small",
            "initialVariantWeight": weight,
        }

    def config(name: str, variants: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "apiVersion": "berth.dev/v1alpha1",
            "kind": "EndpointConfig",
            "metadata": {"name": name},
            "spec": {"productionVariants": variants},
        }

    docs = [
        model("champion", "champion.onnx"),
        model("challenger", "challenger.onnx"),
        config("split", [variant(name, name, weight) for name, weight in WEIGHTS.items()]),
        config("roll-v1", [variant("blue", "champion", 1)]),
        config("roll-v2", [variant("green", "challenger", 1)]),
        {
            "apiVersion": "berth.dev/v1alpha1",
            "kind": "Endpoint",
            "metadata": {"name": "split"},
            "spec": {"endpointConfigName": "split"},
        },
    ]
    (directory / "base.yaml").write_text(yaml.safe_dump_all(docs))
    write_endpoint(directory, "roll-v1")
    return directory


def write_endpoint(directory: Path, config_name: str) -> None:
    doc = {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": "roll"},
        "spec": {"endpointConfigName": config_name, "deploymentConfig": ROLLOUT},
    }
    tmp = directory / ".roll.yaml.tmp"
    tmp.write_text(yaml.safe_dump(doc))
    tmp.replace(directory / "roll.yaml")


def status(port: int) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", "/_berth/status")
    result: dict[str, Any] = json.loads(connection.getresponse().read())
    connection.close()
    return result


def endpoint_status(port: int, name: str) -> dict[str, Any]:
    return next(ep for ep in status(port)["endpoints"] if ep["name"] == name)


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, StopIteration, KeyError, ValueError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def p50_ms(host: str, port: int, path: str, count: int) -> list[float]:
    connection = http.client.HTTPConnection(host, port)
    headers = {"Content-Type": "application/json"}
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        connection.request("POST", path, body=BODY, headers=headers)
        response = connection.getresponse()
        response.read()
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status == 200, response.status
    connection.close()
    return samples


def sockets_to(port: int) -> set[int]:
    """Local ports of the IPv4 TCP sockets on this host connected to `port`, TIME-WAIT included."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote = line.split()[1:3]
        if int(remote.rsplit(":", 1)[1], 16) == port:
            found.add(int(local.rsplit(":", 1)[1], 16))
    return found


def added_latency(port: int, replica_port: int, count: int) -> tuple[float, float, int]:
    """p50 direct and through the router, and the connections the router opened to the replica."""
    direct: list[float] = []
    routed: list[float] = []
    opened: set[int] = set()
    p50_ms("127.0.0.1", replica_port, "/invocations", 200)  # warm up both paths
    p50_ms("127.0.0.1", port, "/endpoints/default/split/invocations", 200)
    for _ in range(10):  # interleaved rounds: the machine's drift hits both alike
        direct += p50_ms("127.0.0.1", replica_port, "/invocations", count // 10)
        before = sockets_to(replica_port)
        routed += p50_ms("127.0.0.1", port, "/endpoints/default/split/invocations", count // 10)
        opened |= sockets_to(replica_port) - before
    return statistics.median(direct), statistics.median(routed), len(opened)


async def load(
    url: str, requests: int | None, stop: asyncio.Event | None, concurrency: int
) -> tuple[Counter[str], list[str]]:
    variants: Counter[str] = Counter()
    failures: list[str] = []
    sent = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        while (requests is None or sent < requests) and not (stop and stop.is_set()):
            sent += 1
            try:
                async with session.post(
                    url, data=BODY, headers={"Content-Type": "application/json"}
                ) as response:
                    await response.read()
                    if response.status == 200:
                        variants[response.headers.get("X-Berth-Variant", "?")] += 1
                    else:
                        failures.append(f"{response.status}")
            except aiohttp.ClientError as exc:
                failures.append(type(exc).__name__)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return variants, failures


async def rollout_under_load(port: int, directory: Path) -> tuple[int, list[str], Counter[str], float]:
    stop = asyncio.Event()
    task = asyncio.ensure_future(
        load(f"http://127.0.0.1:{port}/endpoints/default/roll/invocations", None, stop, 8)
    )
    await asyncio.sleep(1)
    started = time.monotonic()
    write_endpoint(directory, "roll-v2")

    def done() -> bool:
        ep = endpoint_status(port, "roll")
        return bool(
            ep["status"].get("endpointConfigName") == "roll-v2"
            and not ep["status"].get("pendingEndpointConfigName")
            and {r["config"] for r in ep["replicas"]} == {"roll-v2"}
        )

    await asyncio.to_thread(wait_for, done, 90, "the rollout to roll-v2")
    elapsed = time.monotonic() - started
    await asyncio.sleep(1)
    stop.set()
    variants, failures = await task
    return sum(variants.values()) + len(failures), failures, variants, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10_000, help="requests for the weight share")
    parser.add_argument("--latency-requests", type=int, default=3_000, help="requests per path for p50")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="berth-bench-local-") as tmp_name:
        tmp = Path(tmp_name)
        subprocess.run(
            [
                sys.executable,
                str(REPO / "examples/quickstart/build_model.py"),
                "--out-dir",
                str(tmp / "models"),
            ],
            check=True,
            capture_output=True,
        )
        (tmp / "manifests").mkdir()
        directory = manifests(tmp / "manifests", tmp / "models")
        port = int(os.environ.get("BENCH_PORT", "18090"))
        log = open(tmp / "berth-up.log", "w")  # noqa: SIM115 - lives as long as the process
        env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "cache")}
        up = subprocess.Popen(
            [BERTH, "up", "-f", str(directory), "--port", str(port), "--run-dir", str(tmp / "run")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            wait_for(
                lambda: all(ep["status"].get("phase") == "InService" for ep in status(port)["endpoints"]),
                60,
                "the endpoints InService",
            )
            print(
                f"berth up on 127.0.0.1:{port}; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs (shared machine)"
            )

            replica = next(
                r for r in endpoint_status(port, "split")["replicas"] if r["variant"] == "champion"
            )
            direct, routed, opened = added_latency(port, replica["port"], args.latency_requests)
            added = routed - direct
            verdict = "ok" if added <= 1.0 else "MISSED"
            print("\n1. Router overhead (one keep-alive connection, sequential, p50):")
            print(f"   direct to a replica   {direct:.3f} ms  (baseline)")
            print(f"   through the router    {routed:.3f} ms")
            print(f"   added                 {added:.3f} ms  (target <= 1 ms: {verdict})")
            print(
                f"   connections the router opened to the replica for {args.latency_requests:,} requests: {opened}"
            )

            started = time.perf_counter()
            variants, failures = asyncio.run(
                load(f"http://127.0.0.1:{port}/endpoints/default/split/invocations", args.requests, None, 16)
            )
            seconds = time.perf_counter() - started
            total = sum(variants.values())
            weight_total = sum(WEIGHTS.values())
            print(
                f"\n2. Variant shares over {total:,} requests ({total / seconds:,.0f} req/s at concurrency 16, {len(failures)} failed):"
            )
            for name, weight in WEIGHTS.items():
                share = 100.0 * variants[name] / total if total else 0.0
                expected = 100.0 * weight / weight_total
                ok = "ok" if abs(share - expected) <= 2 else "MISSED"
                print(f"   {name:<11} {share:5.1f}%  (weight {expected:.0f}%, target within 2 points: {ok})")

            sent, failed, by_variant, elapsed = asyncio.run(rollout_under_load(port, directory))
            verdict = "ok" if not failed else "MISSED"
            print("\n3. Config update under constant load (concurrency 8, Canary 20% then all, bake 1 s):")
            print(
                f"   requests {sent:,}, failed {len(failed)} (target 0: {verdict}); answered by {dict(by_variant)}"
            )
            print(f"   rollout took {elapsed:.1f} s from the edit to the old fleet stopped")
            if failed:
                print(f"   first failures: {failed[:5]}")
        finally:
            up.send_signal(signal.SIGTERM)
            code = up.wait(timeout=60)
            log.close()
            print(f"\nberth up stopped with exit code {code}")


if __name__ == "__main__":
    main()

"""Operator speed against KMock: Endpoint creation -> all children, 200 Endpoints, operator RSS.

The operator runs as a real `berth operator` process (kubeconfig login) so its RSS is its own;
KMock runs in this process. Baseline of the same run: KMock's own create+get round trip, the
floor under any reconcile.

    .venv/bin/python bench/reconcile.py [--single 50] [--bulk 200]

Targets: p50 within 0.5 s, 200 Endpoints within 30 s, RSS within 200 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import kmock  # noqa: E402

from tests.operator.builders import NS, config, endpoint, model, variant  # noqa: E402
from tests.operator.test_operator_cli import BERTH, kubeconfig  # noqa: E402
from tests.support.kmockk8s import RESOURCE_PATHS, KMockCluster, wait_for  # noqa: E402

CHILD_KINDS = ("Deployment", "Service", "HTTPRoute")


def children_present(cluster: KMockCluster, names: list[str]) -> set[str]:
    """Which of these Endpoints have all their children (and a status), read inside KMock's loop."""

    async def check() -> set[str]:
        objects = cluster.handler.objects._objects
        resources = {kind: kmock.resource(RESOURCE_PATHS[kind]) for kind in (*CHILD_KINDS, "Endpoint")}
        have: dict[str, set[str]] = {kind: set() for kind in CHILD_KINDS}
        for (resource, namespace, _name), obj in list(objects.items()):
            if namespace != NS or obj.deleted:
                continue
            for kind in CHILD_KINDS:
                if resource == resources[kind]:
                    label = (obj.raw["metadata"].get("labels") or {}).get("berth.dev/endpoint")
                    if label:
                        have[kind].add(label)
        done = set()
        for name in names:
            key = (resources["Endpoint"], NS, name)
            ep = objects.get(key)
            has_status = ep is not None and not ep.deleted and (ep.raw.get("status") or {}).get("phase")
            if has_status and all(name in have[kind] for kind in CHILD_KINDS):
                done.add(name)
        return done

    return cluster._loop.run(check())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--single", type=int, default=50)
    parser.add_argument("--bulk", type=int, default=200)
    args = parser.parse_args()

    cluster = KMockCluster()
    tmp = Path(tempfile.mkdtemp())
    env = {**os.environ, "KUBECONFIG": str(kubeconfig(tmp, cluster.url))}
    command = [*BERTH, "operator", "--standalone", "--liveness-port", "0"]
    log = (tmp / "operator.log").open("w")
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    results: dict[str, Any] = {}
    try:
        cluster.create(model("m1"))
        cluster.create(config("cfg", variant("blue", "m1")))
        wait_for(
            lambda: (cluster.get("EndpointConfig", NS, "cfg") or {}).get("status"),
            timeout=30,
            message="operator up",
        )

        # Baseline: KMock's create + get round trip.
        rtts = []
        for i in range(args.single):
            start = time.perf_counter()
            cluster.create(model(f"baseline-{i}"))
            cluster.get("Model", NS, f"baseline-{i}")
            rtts.append(time.perf_counter() - start)
        results["baseline_kmock_create_get_p50_ms"] = round(statistics.median(rtts) * 1000, 2)

        latencies = []
        for i in range(args.single):
            name = f"single-{i}"
            start = time.perf_counter()
            cluster.create(endpoint(name, "cfg"))
            while name not in children_present(cluster, [name]):
                time.sleep(0.002)
            latencies.append(time.perf_counter() - start)
        latencies.sort()
        results["single_endpoint_to_children_p50_s"] = round(statistics.median(latencies), 3)
        results["single_endpoint_to_children_p90_s"] = round(latencies[int(len(latencies) * 0.9) - 1], 3)

        names = [f"bulk-{i}" for i in range(args.bulk)]
        start = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: cluster.create(endpoint(n, "cfg")), names))
        created = time.perf_counter() - start
        while len(children_present(cluster, names)) < len(names):
            time.sleep(0.05)
            if time.perf_counter() - start > 300:
                break
        results["bulk_endpoints"] = args.bulk
        results["bulk_created_s"] = round(created, 2)
        results["bulk_all_reconciled_s"] = round(time.perf_counter() - start, 2)
        results["bulk_reconciled_count"] = len(children_present(cluster, names))
        time.sleep(1.0)
        results["operator_rss_mb"] = round(rss_mb(process.pid), 1)
        results["operator_cpu_s"] = round(cpu_seconds(process.pid), 1)
        results["kmock_and_bench_cpu_s"] = round(cpu_seconds(os.getpid()), 1)
        results["api_requests_total"] = cluster.request_count()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        cluster.close()
    results["targets"] = {"p50_s": 0.5, "bulk_s": 30, "rss_mb": 200}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""The operator at scale against a real kube-apiserver (etcd, kube-controller-manager, and the test
tier's kubelet and Gateway stand-ins), running as the chart's ServiceAccount.

N two-variant Endpoints are created at once and brought to InService; then all are pointed at a
new EndpointConfig at once and rolled out (Canary 20 %, 5 s bakes, 5 s termination wait). It
reports per-Endpoint time to InService (p50/p90), the time until every rollout is done, the
operator's API requests per Endpoint in each phase (reads and writes, from the API server's
audit log), and the operator's peak RSS and CPU time. Baseline of the same run: the API server's
own create+get round trip. Needs the envtest binaries (docs/testing.md).

    .venv/bin/python bench/reconcile_cluster.py [--endpoints 200] [--timeout 900]

Targets (issue 10): the rollout of all N completes; API requests per Endpoint at most a third of
the 13 writes and 80 reads measured before while creating; operator RSS within 200 MB.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster.support import Operator, install_chart  # noqa: E402
from tests.support.crdcheck import httproute_crd  # noqa: E402
from tests.support.envtest import (  # noqa: E402
    CRD_DIR,
    BinariesNotFound,
    ControlPlane,
    Kube,
    Watcher,
    crd_documents,
    find_binaries,
)
from tests.support.gateway import GatewayController  # noqa: E402
from tests.support.kubelet import Kubelet, register_node  # noqa: E402

NS = "bench"
print = functools.partial(print, flush=True)  # each phase's figures as soon as they are known
# Every request of the operator's ServiceAccount (reads too), nothing else.
AUDIT_EVERYTHING = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""
ROLLOUT = {
    "blueGreen": {
        "trafficRouting": {"type": "Canary", "waitIntervalSeconds": 5, "canarySize": {"value": 20}},
        "terminationWaitSeconds": 5,
    }
}


def model(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"modelUri": f"s3://models/{name}/model.onnx"},
    }


def config(name: str, model_name: str) -> dict[str, Any]:
    variants = [
        {"variantName": v, "modelName": model_name, "instanceType": "cpu-small", "initialVariantWeight": w}
        for v, w in (("blue", 3), ("green", 1))
    ]
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "EndpointConfig",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"productionVariants": variants},
    }


def endpoint(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"endpointConfigName": "cfg1", "deploymentConfig": ROLLOUT},
    }


class Progress:
    """When each Endpoint first served a config (from a watch, so polling adds no load)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.served: dict[tuple[str, str], float] = {}  # (endpoint, config) -> time

    def on_event(self, kind: str, obj: dict[str, Any]) -> None:
        status = obj.get("status") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])
        )
        if status.get("phase") == "InService" and ready and not status.get("rollout"):
            key = (obj["metadata"]["name"], str(status.get("endpointConfigName")))
            with self.lock:
                self.served.setdefault(key, time.monotonic())

    def count(self, config: str) -> int:
        with self.lock:
            return sum(1 for (_, c) in self.served if c == config)

    def times(self, config: str, since: float) -> list[float]:
        with self.lock:
            return sorted(t - since for (_, c), t in self.served.items() if c == config)


def audit_counts(path: Path, user: str, since_line: int) -> tuple[dict[str, int], dict[str, int], int]:
    """Requests of `user` in the audit log after line `since_line`, by verb and by verb and
    resource; and the lines read."""
    verbs: dict[str, int] = {}
    by_resource: dict[str, int] = {}
    lines = path.read_text().splitlines() if path.exists() else []
    for line in lines[since_line:]:
        entry = json.loads(line)
        if (entry.get("user") or {}).get("username") == user:
            verbs[entry["verb"]] = verbs.get(entry["verb"], 0) + 1
            ref = entry.get("objectRef") or {}
            what = f"{entry['verb']} {ref.get('resource', '?')}" + (
                f"/{ref['subresource']}" if ref.get("subresource") else ""
            )
            by_resource[what] = by_resource.get(what, 0) + 1
    return verbs, by_resource, len(lines)


def split(verbs: dict[str, int]) -> tuple[int, int]:
    writes = sum(
        n for v, n in verbs.items() if v in ("create", "update", "patch", "delete", "deletecollection")
    )
    reads = sum(n for v, n in verbs.items() if v in ("get", "list"))  # watches are streams, not requests
    return reads, writes


def process_usage(pid: int) -> tuple[float, float]:
    """(peak RSS in MB, CPU seconds) of a live process."""
    peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return peak, ticks / 100.0


def round_trip(kube: Kube, count: int = 30) -> float:
    """p50 of creating and reading back a ConfigMap: the floor under any reconcile."""
    seconds = []
    for i in range(count):
        started = time.perf_counter()
        kube.create(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"rt-{i}", "namespace": NS}}
        )
        kube.get("ConfigMap", NS, f"rt-{i}")
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--endpoints", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    try:
        binaries = find_binaries()
    except BinariesNotFound as error:
        print(f"skipped, no real API server here: {error}")
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="berth-bench-"))
    plane = ControlPlane(binaries, audit_policy=AUDIT_EVERYTHING)
    crds = [*crd_documents(sorted(CRD_DIR.glob("*.yaml"))), httproute_crd()]
    plane.start(crds)
    kube = plane.admin()
    stoppable: list[Any] = []
    try:
        register_node(kube)
        install = install_chart(plane, kube, workdir)
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        baseline = round_trip(kube)
        kubelet = Kubelet(kube, NS).start()
        gateway = GatewayController(kube, NS, install.gateway_namespace, install.gateway_name).start()
        progress = Progress()
        watcher = Watcher(kube, "Endpoint", NS, progress.on_event).start()
        stoppable += [watcher, gateway, kubelet]
        operator = Operator(install, workdir)
        stoppable.insert(0, operator)
        for obj in (model("m1"), model("m2"), config("cfg1", "m1"), config("cfg2", "m2")):
            kube.create(obj)
        _, _, mark = audit_counts(plane.audit_log, install.user, 0)
        names = [f"ep-{i:03d}" for i in range(args.endpoints)]
        created = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: kube.create(endpoint(n)), names))
        deadline = created + args.timeout
        while progress.count("cfg1") < len(names) and time.monotonic() < deadline:
            time.sleep(0.5)
        in_service = progress.times("cfg1", created)
        creating_seconds = time.monotonic() - created
        verbs_create, detail_create, mark = audit_counts(plane.audit_log, install.user, mark)
        n = len(names)
        reads_c, writes_c = split(verbs_create)
        print(f"real kube-apiserver from {binaries.source}: {n} two-variant Endpoints, 2 cores shared by all")
        print(f"baseline: API create+get round trip p50 {baseline * 1000:.1f} ms")
        print(
            f"creating: {len(in_service)}/{n} InService in {creating_seconds:.1f} s; per Endpoint p50 "
            f"{percentile(in_service, 0.5):.1f} s, p90 {percentile(in_service, 0.9):.1f} s "
            f"({percentile(in_service, 0.5) / baseline:.0f}x the round trip)"
        )
        print(
            f"  operator API requests per Endpoint: {reads_c / n:.1f} reads + {writes_c / n:.1f} writes "
            f"= {(reads_c + writes_c) / n:.1f} (before: ~80 reads + ~13 writes)"
        )
        print("  per Endpoint: " + ", ".join(f"{k} {v / n:.1f}" for k, v in sorted(detail_create.items())))
        rss, cpu = process_usage(operator.process.pid)
        print(f"  operator so far: peak RSS {rss:.0f} MB, CPU {cpu:.1f} s")

        rolled = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda n: kube.patch("Endpoint", NS, n, {"spec": {"endpointConfigName": "cfg2"}}), names
                )
            )
        deadline = rolled + args.timeout
        while progress.count("cfg2") < len(names) and time.monotonic() < deadline:
            time.sleep(0.5)
        rolled_out = progress.times("cfg2", rolled)
        rollout_seconds = time.monotonic() - rolled
        verbs_rollout, detail_rollout, _ = audit_counts(plane.audit_log, install.user, mark)
        rss, cpu = process_usage(operator.process.pid)
    finally:
        for item in stoppable:
            item.stop()
        kube.close()
        plane.stop()

    reads_r, writes_r = split(verbs_rollout)
    print(
        f"rollout: {len(rolled_out)}/{n} rolled out, all done in {rollout_seconds:.1f} s; per Endpoint p50 "
        f"{percentile(rolled_out, 0.5):.1f} s, p90 {percentile(rolled_out, 0.9):.1f} s"
    )
    print(f"  operator API requests per Endpoint: {reads_r / n:.1f} reads + {writes_r / n:.1f} writes")
    print("  per Endpoint: " + ", ".join(f"{k} {v / n:.1f}" for k, v in sorted(detail_rollout.items())))
    print(f"operator: peak RSS {rss:.0f} MB, CPU {cpu:.1f} s")
    return 0 if len(in_service) == n and len(rolled_out) == n else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""`berth recommend --cluster` on a real API server: a candidate's Deployment and Service, one load
Job per level whose pod's termination message carries the figures, and nothing left behind, also
after Ctrl-C. The stand-in kubelet plays the pods (it runs no containers): the figures here are the
ones it is told to report, so this tests the plumbing and the clean-up, not the measuring, which
tests/recommend measures for real on this machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.support import Cluster
from tests.support import kubelet as pods
from tests.support.foreground import foreground

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("needs_controller_manager")]

BERTH = str(Path(sys.executable).with_name("berth"))
RUN_KINDS = ("Deployment", "Service", "ConfigMap", "Job")
FIGURES = {
    "concurrency": 1,
    "requests": 5000,
    "failures": 0,
    "seconds": 5.0,
    "p50_ms": 1.5,
    "p95_ms": 2.5,
    "p99_ms": 3.5,
    "generator_busy": 0.4,
}


def command(cluster: Cluster, *extra: str) -> tuple[list[str], dict[str, str]]:
    args = [
        BERTH, "recommend", "--cluster", "-n", cluster.namespace, "--model", "s3://models/iris/model.onnx",
        "--payload", '{"instances": [[5.1, 3.5, 1.4, 0.2]]}', "--p99-ms", "50", "--rps", "2500",
        "--instance-types", "cpu-small", "--batch-sizes", "32", "--step-seconds", "1", *extra,
    ]  # fmt: skip
    env = {**os.environ, "KUBECONFIG": str(cluster.plane.admin_kubeconfig)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return args, env


def left_over(cluster: Cluster) -> list[str]:
    found = []
    for kind in RUN_KINDS:
        for obj in cluster.list(kind, {"app.kubernetes.io/component": "recommend"}):
            if not obj["metadata"].get("deletionTimestamp"):
                found.append(f"{kind}/{obj['metadata']['name']}")
    return found


def test_each_level_is_a_job_and_the_run_cleans_up(cluster: Cluster, tmp_path: Path) -> None:
    cluster.kubelet.behave(pods.succeeded(json.dumps(FIGURES)), {"berth.dev/recommend-role": "load"})
    seen: list[str] = []
    cluster.watch("Job", lambda _type, job: seen.append(job["metadata"]["name"]))
    args, env = command(cluster, "--max-minutes", "0.2", "-o", str(tmp_path / "out.yaml"))
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr
    assert "cpu-small threads=1 batch=32 (on the cluster)" in done.stderr
    assert "1,000 rps" in done.stderr  # 5,000 requests in 5 s, as the Job's pod reported
    assert len(set(seen)) >= 2, seen  # a Job per level
    written = (tmp_path / "out.yaml").read_text()
    assert "modelUri: s3://models/iris/model.onnx" in written and "initialInstanceCount: 3" in written
    cluster.wait(lambda: not left_over(cluster), "everything of the run deleted")


def test_ctrl_c_while_waiting_for_a_replica_leaves_nothing(cluster: Cluster) -> None:
    cluster.kubelet.behave(pods.unschedulable(), {"berth.dev/recommend-role": "server"})
    args, env = command(cluster)
    process = subprocess.Popen(
        foreground(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        cluster.wait(
            lambda: bool(cluster.list("Deployment", {"app.kubernetes.io/component": "recommend"})), "created"
        )
        time.sleep(1)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    cluster.wait(lambda: not left_over(cluster), "everything of the run deleted after Ctrl-C")

"""`berth operator` as a process: kubeconfig login, liveness endpoint, namespaces, clean stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.operator.builders import model
from tests.support.kmockk8s import KMockCluster, wait_for

REPO = Path(__file__).resolve().parents[2]
BERTH = [sys.executable, "-c", "from berth_operator.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kubeconfig(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "kmock",
                "clusters": [
                    {"name": "kmock", "cluster": {"server": server, "insecure-skip-tls-verify": True}}
                ],
                "users": [{"name": "tester", "user": {"token": "t0ken"}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "tester"}}],
            }
        )
    )
    return path


def ready_model(cluster: KMockCluster, namespace: str, name: str) -> bool:
    obj = cluster.get("Model", namespace, name) or {}
    return any(c["status"] == "True" for c in (obj.get("status") or {}).get("conditions", []))


def test_help_lists_the_chart_flags():
    result = subprocess.run(
        [*BERTH, "operator", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    for flag in ("--settings", "--namespace", "--peering", "--standalone", "--liveness-port", "--verbose"):
        assert flag in result.stdout


@pytest.mark.timeout(60)
def test_process_logs_in_with_kubeconfig_serves_liveness_and_watches_one_namespace(cluster, tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"routing": {"mode": "none"}}))
    port = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig(tmp_path, cluster.url)),
        "BERTH_SETTINGS": str(settings),
    }
    # No --standalone: without kopf's peering CRDs in the cluster the operator runs alone.
    command = [*BERTH, "operator", "--liveness-port", str(port), "--namespace", "ml"]
    process = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        cluster.create(model("watched", namespace="ml"))
        cluster.create(model("ignored", namespace="other"))
        wait_for(lambda: ready_model(cluster, "ml", "watched"), timeout=20, message="Model Ready in ml")

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, message="liveness endpoint")
        assert not ready_model(cluster, "other", "ignored")
        tokens = {
            r.headers.get("Authorization")
            for r in cluster.requests_since(0)
            if r.headers.get("Authorization")
        }
        assert tokens == {"Bearer t0ken"}
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output

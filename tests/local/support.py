"""Helpers for local-mode tests: manifests on disk, and `berth up` as a real subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

BERTH = str(Path(sys.executable).parent / "berth")
FAST_ROLLOUT: dict[str, Any] = {
    "blueGreen": {
        "trafficRouting": {
            "type": "Linear",
            "linearStepSize": {"type": "Percent", "value": 50},
            "waitIntervalSeconds": 1,
        },
        "terminationWaitSeconds": 0,
    }
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def model(name: str, uri: str) -> dict[str, Any]:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name},
        "spec": {"modelUri": uri},
    }


def variant(name: str, model_name: str, weight: float = 1, count: int = 1) -> dict[str, Any]:
    return {
        "variantName": name,
        "modelName": model_name,
        "instanceType": "cpu-small",
        "initialInstanceCount": count,
        "initialVariantWeight": weight,
    }


def config(
    name: str, variants: list[dict[str, Any]], shadows: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"productionVariants": variants}
    if shadows:
        spec["shadowProductionVariants"] = shadows
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "EndpointConfig",
        "metadata": {"name": name},
        "spec": spec,
    }


def endpoint(name: str, config_name: str, deployment: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"endpointConfigName": config_name, "deploymentConfig": deployment or FAST_ROLLOUT}
    return {"apiVersion": "berth.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": name}, "spec": spec}


def write_yaml(path: Path, docs: list[dict[str, Any]]) -> Path:
    """Written to a temporary name and renamed, so a watcher never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    tmp.replace(path)
    return path


def descendants(pid: int) -> set[int]:
    """Every live process below pid (children found through /proc), in any session."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current and child not in found:
                found.add(child)
                frontier.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rfind(")") + 2] != "Z"


class BerthUp:
    """`berth up` on a free port, its cache and run dir under tmp; stopped with SIGTERM."""

    def __init__(
        self, manifests: Path | list[Path], tmp: Path, *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"berth-up-{self.port}.log"
        env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "cache"), **(env or {})}
        paths = manifests if isinstance(manifests, list) else [manifests]
        files = [arg for path in paths for arg in ("-f", str(path))]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [BERTH, "up", *files, "--port", str(self.port), "--run-dir", str(tmp / "run"), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.client = httpx.Client(base_url=self.base, timeout=30)
        self.returncode: int | None = None

    def log(self) -> str:
        return self.log_path.read_text()

    def status(self) -> dict[str, Any]:
        response = self.client.get("/_berth/status")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def endpoint(self, name: str) -> dict[str, Any]:
        for ep in self.status()["endpoints"]:
            if ep["name"] == name:
                return ep
        raise KeyError(name)

    def wait(self, predicate: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"berth up exited with {self.process.returncode}:\n{self.log()}")
            try:
                if predicate():
                    return
            except (httpx.HTTPError, KeyError) as exc:
                last_error = exc
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what} ({last_error}):\n{self.log()[-4000:]}")

    def wait_in_service(self, *names: str, timeout: float = 40) -> None:
        def ready() -> bool:
            return all(self.endpoint(n)["status"].get("phase") == "InService" for n in names)

        self.wait(ready, timeout, f"{', '.join(names)} InService")

    def invoke(self, name: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.client.post(f"/endpoints/default/{name}/invocations", json=body, headers=headers or {})

    def children(self) -> set[int]:
        return descendants(self.process.pid)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, wait; returns the exit code (the process is killed if it hangs)."""
        if self.returncode is None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                self.returncode = self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.returncode = self.process.wait()
            self.client.close()
            self._log.close()
        return self.returncode

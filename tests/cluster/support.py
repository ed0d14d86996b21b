"""The Berth chart installed into a real API server, the operator as a real process, and helpers.

The operator runs exactly as the chart's Deployment runs it (its command line, its settings.yaml),
with local changes: the settings file path, `--liveness-port 0` and a free `--metrics-port` per
operator. It logs in with a
kubeconfig carrying a token of the chart's ServiceAccount from the TokenRequest API (what
`kubectl create token` does), so the chart's RBAC is enforced on every request it makes.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import helm_python as helm
import yaml

from tests.delivery.delivery_support import CHART_DIR, objects, operator_args, render, rendered_settings
from tests.support.envtest import (
    ControlPlane,
    Kube,
    KubeError,
    ManagedProcess,
    Manifest,
    Watcher,
    free_port,
    wait_for,
    write_kubeconfig,
)
from tests.support.gateway import GatewayController
from tests.support.kubelet import Kubelet

T = TypeVar("T")
RELEASE_NAMESPACE = "berth-system"
# Peering off: one replica runs --standalone, as the chart renders it for that case.
CHART_VALUES: Manifest = {"peering": {"enabled": False}}
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
BERTH_KINDS = ("MonitoringSchedule", "Endpoint", "TransformJob", "EndpointConfig", "Model")
CHILD_KINDS = ("Deployment", "Service", "HTTPRoute", "HorizontalPodAutoscaler", "PodDisruptionBudget")
ENDPOINT_LABEL = "berth.dev/endpoint"
FINALIZER = "berth.dev/finalizer"


@dataclass(frozen=True)
class ChartInstall:
    objects: list[Manifest]
    service_account: str
    user: str  # system:serviceaccount:NAMESPACE:NAME
    settings_path: Path
    command: list[str]
    kubeconfig: Path
    gateway_namespace: str
    gateway_name: str


def install_chart(plane: ControlPlane, kube: Kube, workdir: Path) -> ChartInstall:
    """Render the chart, apply its ServiceAccount and RBAC, and make the operator's kubeconfig."""
    with helm.Chart.load(CHART_DIR) as chart:
        rendered = objects(render(chart, CHART_VALUES))
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RELEASE_NAMESPACE}})
    for obj in rendered:
        if obj["kind"] in RBAC_KINDS:
            kube.apply(obj)
    [account] = [obj for obj in rendered if obj["kind"] == "ServiceAccount"]
    name, namespace = account["metadata"]["name"], account["metadata"]["namespace"]
    settings_text = rendered_settings(rendered)
    settings_path = workdir / "settings.yaml"
    settings_path.write_text(settings_text)
    settings = yaml.safe_load(settings_text)
    gateway = settings["routing"]["gateway"]
    command = _local_command(operator_args(rendered), settings_path)
    token = kube.service_account_token(namespace, name)
    user = f"system:serviceaccount:{namespace}:{name}"
    kubeconfig = write_kubeconfig(workdir / "operator.kubeconfig", plane.server, plane.ca_file, token, name)
    return ChartInstall(
        rendered,
        name,
        user,
        settings_path,
        command,
        kubeconfig,
        gateway.get("namespace") or namespace,
        gateway["name"],
    )


def _local_command(args: list[str], settings_path: Path) -> list[str]:
    """The chart's command line for this machine: our venv's berth, our settings file, no liveness
    port (Operator gives each run its own metrics port)."""
    berth = Path(sys.executable).with_name("berth")
    out = [str(berth) if args[0] == "berth" else args[0]]
    rest = iter(args[1:])
    for arg in rest:
        if arg == "--settings":
            out += [arg, str(settings_path)]
            next(rest)
        elif arg == "--liveness-port":
            out += [arg, "0"]
            next(rest)
        else:
            out.append(arg)
    return out


def _with_metrics_port(command: list[str], port: int) -> list[str]:
    assert "--metrics-port" in command, "the chart runs the operator with --metrics-port"
    at = command.index("--metrics-port") + 1
    return [*command[:at], str(port), *command[at + 1 :], "--metrics-host", "127.0.0.1"]


def _merged(base: Any, changes: Any) -> Any:
    if not isinstance(base, dict) or not isinstance(changes, dict):
        return changes
    return {**base, **{key: _merged(base.get(key), value) for key, value in changes.items()}}


class Operator:
    """`berth operator` as a process, as the chart's ServiceAccount; its output kept in a file."""

    _ids = itertools.count(1)

    def __init__(self, install: ChartInstall, workdir: Path, settings: Manifest | None = None) -> None:
        self.install = install
        number = next(self._ids)
        self.log_path = workdir / f"operator-{number}.log"
        self.metrics_port = free_port()
        command = _with_metrics_port(install.command, self.metrics_port)
        if settings is not None:  # the chart's settings with these changes, in a file of its own
            merged = _merged(yaml.safe_load(install.settings_path.read_text()), settings)
            path = workdir / f"settings-{number}.yaml"
            path.write_text(yaml.safe_dump(merged))
            command = [str(path) if arg == str(install.settings_path) else arg for arg in command]
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update({"KUBECONFIG": str(install.kubeconfig), "PYTHONUNBUFFERED": "1", "NO_PROXY": "*"})
        env.pop("KUBERNETES_SERVICE_HOST", None)
        self.process = ManagedProcess("berth-operator", command, self.log_path, env=env, cwd=workdir)

    def alive(self) -> bool:
        return self.process.alive()

    def metrics(self) -> str:
        """The operator's /metrics text."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as answer:
            return answer.read().decode()

    def log(self) -> str:
        return self.process.log()

    def stop(self) -> int | None:
        return self.process.stop(timeout=15)

    def forbidden(self) -> list[str]:
        """Log lines of requests RBAC refused (a grant the chart lacks). Not other 403s, such as
        "unable to create new content in namespace X because it is being terminated"."""
        denied = re.compile(r'forbidden: User "[^"]+" cannot ')
        return [line for line in self.log().splitlines() if denied.search(line)]

    def errors(self) -> list[str]:
        return [line for line in self.log().splitlines() if "Traceback" in line or " ERROR " in line]


# --------------------------------------------------------------------------- one test's cluster


@dataclass
class Cluster:
    """What a test works with: the admin client, its namespace, the stand-ins and the operator."""

    plane: ControlPlane
    kube: Kube
    namespace: str
    install: ChartInstall
    workdir: Path
    kubelet: Kubelet
    gateway: GatewayController
    operators: list[Operator] = field(default_factory=list)
    watchers: list[Watcher] = field(default_factory=list)

    @property
    def has_controller_manager(self) -> bool:
        return self.plane.has_controller_manager

    def start_operator(self, settings: Manifest | None = None) -> Operator:
        """The operator as the chart runs it; settings, when given, change the chart's settings."""
        operator = Operator(self.install, self.workdir, settings)
        self.operators.append(operator)
        return operator

    @property
    def operator(self) -> Operator:
        return self.operators[-1]

    def watch(self, kind: str, on_event: Callable[[str, Manifest], None] | None = None) -> Watcher:
        watcher = Watcher(self.kube, kind, self.namespace, on_event).start()
        self.watchers.append(watcher)
        return watcher

    # ------------------------------------------------------------------ objects

    def create(self, obj: Manifest) -> Manifest:
        obj = {**obj, "metadata": {**obj["metadata"], "namespace": self.namespace}}
        return self.kube.create(obj)

    def get(self, kind: str, name: str) -> Manifest | None:
        return self.kube.get(kind, self.namespace, name)

    def list(self, kind: str, labels: dict[str, str] | None = None) -> list[Manifest]:
        return self.kube.list(kind, self.namespace, labels)

    def patch(self, kind: str, name: str, body: Any, sub: str | None = None) -> Manifest:
        return self.kube.patch(kind, self.namespace, name, body, sub=sub)

    def delete(self, kind: str, name: str) -> bool:
        return self.kube.delete(kind, self.namespace, name)

    def children(self, kind: str, endpoint: str = "ep") -> list[Manifest]:
        return self.list(kind, {ENDPOINT_LABEL: endpoint})

    def status(self, kind: str = "Endpoint", name: str = "ep") -> Manifest:
        return (self.get(kind, name) or {}).get("status") or {}

    def condition(self, type_: str, name: str = "ep") -> Manifest:
        return next((c for c in self.status(name=name).get("conditions", []) if c["type"] == type_), {})

    def serving(self, name: str = "ep") -> bool:
        return (
            self.status(name=name).get("phase") == "InService"
            and self.condition("Ready", name).get("status") == "True"
        )

    def wait(
        self, predicate: Callable[[], T | None], message: str, timeout: float = 60.0, name: str = "ep"
    ) -> T:
        """wait_for, and on a timeout say where Endpoint `name`, its Deployments and pods are."""
        try:
            return wait_for(predicate, timeout=timeout, message=message)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.explain(name)}") from None

    def wait_in_service(self, name: str = "ep", timeout: float = 60.0) -> Manifest:
        self.wait(lambda: self.serving(name), f"Endpoint {name} InService", timeout, name)
        return self.status(name=name)

    def explain(self, name: str = "ep") -> str:
        """What a person looks at when an Endpoint does not get where it should."""
        lines = [f"Endpoint status: {self.status(name=name)}"]
        for deployment in self.children("Deployment", name):
            lines.append(f"Deployment {deployment['metadata']['name']}: {deployment.get('status')}")
        for pod in self.list("Pod"):
            meta = pod["metadata"]
            keep = ("deletionTimestamp", "finalizers", "ownerReferences")
            lines.append(
                f"Pod {meta['name']}: { ({k: meta[k] for k in keep if k in meta}) } {pod.get('status')}"
            )
        lines += [f"stand-in error: {e}" for e in self.standin_errors()]
        return "\n".join(lines)

    def standin_errors(self) -> list[str]:
        return self.kubelet.all_errors + self.gateway.all_errors

    # ------------------------------------------------------------------ cleaning up

    def delete_berth_objects(self, timeout: float = 30.0) -> list[str]:
        """Delete every Berth object in the namespace and wait until they are gone; what stayed."""
        for kind in BERTH_KINDS:
            for obj in self.list(kind):
                self.kube.delete(kind, self.namespace, obj["metadata"]["name"])

        def left() -> list[str]:
            return [f"{kind}/{o['metadata']['name']}" for kind in BERTH_KINDS for o in self.list(kind)]

        try:
            wait_for(lambda: not left(), timeout=timeout, message="Berth objects deleted")
        except AssertionError:
            return left()
        return []

    def strip_finalizers(self) -> None:
        for kind in BERTH_KINDS:
            for obj in self.list(kind):
                if obj["metadata"].get("finalizers"):
                    try:
                        self.patch(kind, obj["metadata"]["name"], {"metadata": {"finalizers": None}})
                    except KubeError as error:
                        if error.status != 404:
                            raise


def stop_all(items: Iterable[Any]) -> None:
    """Stop things in parallel (each join waits for a watch to end)."""
    threads = [threading.Thread(target=item.stop, daemon=True) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

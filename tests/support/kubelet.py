"""A kubelet (and scheduler) stand-in for a real API server without nodes.

`Kubelet` watches the Pods of one namespace. It binds each Pending pod to a fake Node through the
`pods/binding` subresource (as the scheduler does) and then writes the pod status through the
status subresource (as the kubelet does), the way the test asked for pods with those labels:
Ready, a model download that failed in the init container, CrashLoopBackOff, ImagePullBackOff,
Unschedulable (left unbound, with the scheduler's condition), stuck in ContainerCreating, or
Succeeded with a termination message (Job pods). Terminating pods are deleted with grace 0, as
the kubelet does once the containers stopped. The Deployment, ReplicaSet and Job controllers of
kube-controller-manager read these statuses like those of a real node.

Pod IPs are loopback addresses (127.0.0.0/8) and nothing else: the operator connects to pod IPs
to scrape /metrics during a bake, and no other address may be a target here. Each pod gets its
own address, so a pod whose behaviour carries metrics is served on POD_IP:PORT, PORT being its
serving container's `http` containerPort (8080 by default), without clashing with any other pod
or needing a privileged port.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.envtest import Kube, KubeError, Manifest, Watcher

NODE_NAME = "berth-test-node"
NODE_IP = "127.0.0.1"
DEFAULT_PORT = 8080


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- what a pod does


@dataclass(frozen=True)
class Behaviour:
    state: str  # Ready | InitFailed | CrashLoopBackOff | ImagePullBackOff | Unschedulable | ContainerCreating | Succeeded
    message: str = ""
    metrics: Callable[[], bytes] | None = None  # Ready pods: what GET /metrics answers


def ready(metrics: Callable[[], bytes] | None = None) -> Behaviour:
    return Behaviour("Ready", metrics=metrics)


def init_failed(message: str) -> Behaviour:
    """The init container (the model download) exits 1 with message as its termination message."""
    return Behaviour("InitFailed", message)


def crash_loop(message: str = "") -> Behaviour:
    return Behaviour("CrashLoopBackOff", message)


def image_pull_backoff() -> Behaviour:
    return Behaviour("ImagePullBackOff")


def unschedulable(message: str = "0/1 nodes are available: 1 Insufficient cpu.") -> Behaviour:
    return Behaviour("Unschedulable", message)


def container_creating() -> Behaviour:
    return Behaviour("ContainerCreating")


def succeeded(message: str = "") -> Behaviour:
    """Every container exits 0; the main container's termination message is message (Job pods)."""
    return Behaviour("Succeeded", message)


# --------------------------------------------------------------------------- node and addresses


def register_node(kube: Kube, name: str = NODE_NAME) -> Manifest:
    """A Ready Node with room for every test pod (no heartbeats: no node lifecycle controller runs)."""
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "topology.kubernetes.io/zone": "zone-a",
                "berth.dev/inference": "true",
            },
        },
        "spec": {},
    }
    with contextlib.suppress(KubeError):
        kube.create(node)
    capacity = {"cpu": "256", "memory": "1Ti", "pods": "1000", "nvidia.com/gpu": "8"}
    status = {
        "capacity": capacity,
        "allocatable": capacity,
        "addresses": [{"type": "InternalIP", "address": NODE_IP}, {"type": "Hostname", "address": name}],
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "berth test kubelet stand-in",
                "lastHeartbeatTime": now(),
                "lastTransitionTime": now(),
            }
        ],
        "nodeInfo": {
            "architecture": "amd64",
            "operatingSystem": "linux",
            "kubeletVersion": "v0.0.0-berth-test",
            "kubeProxyVersion": "",
            "containerRuntimeVersion": "fake://0",
            "osImage": "",
            "kernelVersion": "",
            "bootID": "",
            "machineID": "",
            "systemUUID": "",
        },
    }
    return kube.patch("Node", None, name, {"status": status}, sub="status")


class LoopbackAddresses:
    """Distinct pod IPs in 127.0.0.0/8 (127.1.0.1 upwards; 127.0.0.1 stays the node's)."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            n = next(self._counter)
        if n >= 254 * 256 * 254:
            raise RuntimeError("out of loopback pod addresses")
        return f"127.{1 + n // (256 * 254)}.{(n // 254) % 256}.{1 + n % 254}"


ADDRESSES = LoopbackAddresses()


class PodMetricsServer:
    """GET /metrics on one pod's address and port, answered by a callable (e.g. FleetMetricsServer.scrape)."""

    def __init__(self, host: str, port: int, metrics: Callable[[], bytes]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                body = metrics()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=f"metrics-{host}", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def serving_port(pod: Manifest) -> int:
    """The serving container's `http` containerPort (else its first port, else 8080)."""
    ports = [p for c in pod["spec"].get("containers") or [] for p in c.get("ports") or []]
    named = [p for p in ports if p.get("name") == "http"]
    chosen = (named or ports or [{"containerPort": DEFAULT_PORT}])[0]
    return int(chosen.get("containerPort", DEFAULT_PORT))


# --------------------------------------------------------------------------- pod statuses


def _condition(type_: str, status: bool, reason: str = "", message: str = "") -> Manifest:
    cond: Manifest = {"type": type_, "status": "True" if status else "False", "lastTransitionTime": now()}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def _container_status(container: Manifest, state: Manifest, **extra: Any) -> Manifest:
    return {
        "name": container["name"],
        "image": container.get("image", ""),
        "imageID": "",
        "ready": False,
        "restartCount": 0,
        "started": False,
        "state": state,
        **extra,
    }


def _running(container: Manifest, since: str) -> Manifest:
    return _container_status(container, {"running": {"startedAt": since}}, ready=True, started=True)


def _completed(container: Manifest, since: str, message: str = "") -> Manifest:
    terminated: Manifest = {"exitCode": 0, "reason": "Completed", "startedAt": since, "finishedAt": now()}
    if message:
        terminated["message"] = message
    return _container_status(container, {"terminated": terminated})


def _waiting(container: Manifest, reason: str, message: str = "", **extra: Any) -> Manifest:
    waiting = {"reason": reason, **({"message": message} if message else {})}
    return _container_status(container, {"waiting": waiting}, **extra)


def pod_status(pod: Manifest, behaviour: Behaviour, ip: str) -> Manifest:
    """The status a kubelet reports for a pod bound to the node that behaves as asked."""
    spec = pod["spec"]
    name = pod["metadata"]["name"]
    inits: list[Manifest] = spec.get("initContainers") or []
    mains: list[Manifest] = spec.get("containers") or []
    started = pod["metadata"].get("creationTimestamp") or now()
    base: Manifest = {
        "hostIP": NODE_IP,
        "hostIPs": [{"ip": NODE_IP}],
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": started,
    }
    scheduled = _condition("PodScheduled", True)
    state = behaviour.state
    if state in ("Ready", "Succeeded"):
        done = state == "Succeeded"
        containers = [
            _completed(c, started, behaviour.message) if done else _running(c, started) for c in mains
        ]
        return {
            **base,
            "phase": "Succeeded" if done else "Running",
            "conditions": [
                scheduled,
                _condition("Initialized", True),
                _condition("ContainersReady", not done, "PodCompleted" if done else ""),
                _condition("Ready", not done, "PodCompleted" if done else ""),
            ],
            "initContainerStatuses": [_completed(c, started) for c in inits],
            "containerStatuses": containers,
        }
    if state == "InitFailed":
        first, *rest = inits
        back_off = f"back-off 20s restarting failed container={first['name']} pod={name}"
        failed = _waiting(
            first,
            "CrashLoopBackOff",
            back_off,
            restartCount=2,
            lastState={
                "terminated": {
                    "exitCode": 1,
                    "reason": "Error",
                    "message": behaviour.message,
                    "startedAt": started,
                    "finishedAt": now(),
                }
            },
        )
        pending = f"containers with incomplete status: [{first['name']}]"
        return {
            **base,
            "phase": "Pending",
            "conditions": [
                scheduled,
                _condition("Initialized", False, "ContainersNotInitialized", pending),
                _condition("ContainersReady", False, "ContainersNotReady", "containers with unready status"),
                _condition("Ready", False, "ContainersNotReady", "containers with unready status"),
            ],
            "initContainerStatuses": [failed, *(_waiting(c, "PodInitializing") for c in rest)],
            "containerStatuses": [_waiting(c, "PodInitializing") for c in mains],
        }
    if state == "ImagePullBackOff":
        # The init container runs the serving image too: its pull fails first.
        first, *rest = inits or mains
        message = f'Back-off pulling image "{first.get("image", "")}": ErrImagePull: not found'
        pulling = _waiting(first, "ImagePullBackOff", message)
        not_ready = _condition("Ready", False, "ContainersNotReady", "containers with unready status")
        if inits:
            return {
                **base,
                "phase": "Pending",
                "conditions": [
                    scheduled,
                    _condition("Initialized", False, "ContainersNotInitialized"),
                    _condition("ContainersReady", False, "ContainersNotReady"),
                    not_ready,
                ],
                "initContainerStatuses": [pulling, *(_waiting(c, "PodInitializing") for c in rest)],
                "containerStatuses": [_waiting(c, "PodInitializing") for c in mains],
            }
        return {
            **base,
            "phase": "Pending",
            "conditions": [scheduled, _condition("Initialized", True), not_ready],
            "containerStatuses": [pulling, *(_waiting(c, "ContainerCreating") for c in rest)],
        }
    if state == "CrashLoopBackOff":
        first, *rest = mains
        last: Manifest = {"exitCode": 1, "reason": "Error", "startedAt": started, "finishedAt": now()}
        if behaviour.message:
            last["message"] = behaviour.message
        crashing = _waiting(
            first,
            "CrashLoopBackOff",
            f"back-off 40s restarting failed container={first['name']} pod={name}",
            restartCount=3,
            lastState={"terminated": last},
        )
        return {
            **base,
            "phase": "Running",
            "conditions": [
                scheduled,
                _condition("Initialized", True),
                _condition("ContainersReady", False, "ContainersNotReady"),
                _condition("Ready", False, "ContainersNotReady"),
            ],
            "initContainerStatuses": [_completed(c, started) for c in inits],
            "containerStatuses": [crashing, *(_running(c, started) for c in rest)],
        }
    if state == "ContainerCreating":
        return {
            **base,
            "phase": "Pending",
            "conditions": [
                scheduled,
                _condition("Initialized", not inits, "" if not inits else "ContainersNotInitialized"),
                _condition("ContainersReady", False, "ContainersNotReady"),
                _condition("Ready", False, "ContainersNotReady"),
            ],
            "initContainerStatuses": [_waiting(c, "PodInitializing") for c in inits],
            "containerStatuses": [_waiting(c, "ContainerCreating") for c in mains],
        }
    raise ValueError(f"unknown pod behaviour {state}")


# --------------------------------------------------------------------------- the stand-in


@dataclass
class _Rule:
    labels: Mapping[str, str]
    behaviour: Behaviour


@dataclass
class _Handled:
    behaviour: Behaviour
    ip: str | None = None
    server: PodMetricsServer | None = None


@dataclass
class Kubelet:
    """Plays scheduler and kubelet for the Pods of one namespace (see the module docstring)."""

    kube: Kube
    namespace: str
    node: str = NODE_NAME
    default: Behaviour = field(default_factory=ready)
    rules: list[_Rule] = field(default_factory=list)
    handled: dict[str, _Handled] = field(default_factory=dict)  # by pod uid
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._watcher = Watcher(self.kube, "Pod", self.namespace, self._on_pod)

    def behave(self, behaviour: Behaviour, labels: Mapping[str, str] | None = None) -> None:
        """Pods seen from now on whose labels include these behave so (the latest rule wins)."""
        with self._lock:
            self.rules.append(_Rule(dict(labels or {}), behaviour))

    def start(self) -> Kubelet:
        self._watcher.start()
        return self

    def stop(self) -> None:
        self._watcher.stop()
        self._watcher.join()
        with self._lock:
            handled, self.handled = list(self.handled.values()), {}
        for entry in handled:
            if entry.server is not None:
                entry.server.close()

    @property
    def all_errors(self) -> list[str]:
        return self.errors + self._watcher.errors

    def pods(self) -> list[Manifest]:
        return self._watcher.objects()

    def _choose(self, pod: Manifest) -> Behaviour:
        labels = pod["metadata"].get("labels") or {}
        with self._lock:
            for rule in reversed(self.rules):
                if all(labels.get(k) == v for k, v in rule.labels.items()):
                    return rule.behaviour
        return self.default

    def _on_pod(self, event: str, pod: Manifest) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        if event == "DELETED":
            with self._lock:
                entry = self.handled.pop(uid, None)
            if entry is not None and entry.server is not None:
                entry.server.close()
            return
        if meta.get("deletionTimestamp"):
            # The containers "stopped": the kubelet removes the pod for good.
            if pod["spec"].get("nodeName"):
                self.kube.delete("Pod", self.namespace, meta["name"], grace_seconds=0)
            return
        behaviour = self._choose(pod)
        with self._lock:
            if uid in self.handled:
                return
            entry = _Handled(behaviour)
            self.handled[uid] = entry
        try:
            self._start_pod(pod, entry)
        except KubeError as error:
            if error.status == 404:  # deleted meanwhile: nothing to run
                return
            self._failed(uid, meta["name"], entry, error)
        except Exception as error:
            self._failed(uid, meta["name"], entry, error)

    def _failed(self, uid: str, name: str, entry: _Handled, error: Exception) -> None:
        with self._lock:
            self.handled.pop(uid, None)  # the next event of this pod tries again
        if entry.server is not None:
            entry.server.close()
        self.errors.append(f"pod {name}: {type(error).__name__}: {error}")

    def _start_pod(self, pod: Manifest, entry: _Handled) -> None:
        name = pod["metadata"]["name"]
        behaviour = entry.behaviour
        if behaviour.state == "Unschedulable":
            status = {
                "phase": "Pending",
                "conditions": [_condition("PodScheduled", False, "Unschedulable", behaviour.message)],
            }
            self.kube.patch("Pod", self.namespace, name, {"status": status}, sub="status")
            return
        if not pod["spec"].get("nodeName"):
            binding = {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name, "namespace": self.namespace},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
            }
            self.kube.request(
                "POST", f"/api/v1/namespaces/{self.namespace}/pods/{name}/binding", body=binding
            )
        entry.ip, entry.server = self._address(pod, behaviour)
        status = pod_status(pod, behaviour, entry.ip)
        self.kube.patch("Pod", self.namespace, name, {"status": status}, sub="status")

    def _address(self, pod: Manifest, behaviour: Behaviour) -> tuple[str, PodMetricsServer | None]:
        if behaviour.metrics is None or behaviour.state != "Ready":
            return ADDRESSES.next(), None
        port = serving_port(pod)
        for _ in range(32):  # an address someone else holds this port on: take the next one
            ip = ADDRESSES.next()
            try:
                return ip, PodMetricsServer(ip, port, behaviour.metrics)
            except OSError as error:
                if error.errno != errno.EADDRINUSE:
                    raise
        raise RuntimeError(f"no loopback address with port {port} free for {pod['metadata']['name']}")


def describe_pods(pods: list[Manifest]) -> str:
    """One line per pod for assertion messages."""
    lines = []
    for pod in pods:
        status = pod.get("status") or {}
        lines.append(
            f"{pod['metadata']['name']}: {status.get('phase')} node={pod['spec'].get('nodeName')} "
            f"ip={status.get('podIP')} {json.dumps(status.get('conditions') or [])[:200]}"
        )
    return "\n".join(lines)

"""A real Kubernetes API server for tests: etcd, kube-apiserver and (when found) kube-controller-manager.

The binaries are found the way controller-runtime's envtest users expect (see docs/testing.md):
the directory in `KUBEBUILDER_ASSETS`, else the newest `VERSION-OS-ARCH` directory of
setup-envtest's store (`$XDG_DATA_HOME/kubebuilder-envtest/k8s/`, by default
`~/.local/share/kubebuilder-envtest/k8s/`). etcd may also come from PATH (Debian's etcd-server),
and kube-controller-manager too; setup-envtest does not ship it, and without it Deployments make
no Pods and nothing is garbage-collected.

`ControlPlane.start()` runs them on free loopback ports with a fresh data directory, a static
token file (an admin in group system:masters), RBAC authorization, service-account signing keys
(so the TokenRequest API works) and an audit log of every write the operator's ServiceAccount
makes. Every process runs in its own process group, dies with the test process (PR_SET_PDEATHSIG)
and is stopped by `stop()` or at exit.

`Kube` is a small synchronous client over httpx (discovery, get/list/create/apply/patch/replace/
delete) and `Watcher` a watch that keeps a store and calls back on every event, in a thread.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

T = TypeVar("T")
Manifest = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
ADMIN_USER = "berth-test-admin"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
START_TIMEOUT = 60.0
# Controllers the tests need from kube-controller-manager. Not the HPA controller (no metrics
# API here: it would rewrite every HPA's status every 15 s), not the node lifecycle controller
# (the stand-in kubelet sends no heartbeats).
CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "garbage-collector-controller",
    "job-controller",
    "ttl-after-finished-controller",
    "disruption-controller",
    "serviceaccount-controller",
    "namespace-controller",
    # Reports on HPAs as a cluster without a metrics adapter does (ScalingActive False).
    "horizontal-pod-autoscaler-controller",
)


# --------------------------------------------------------------------------- finding the binaries


class BinariesNotFound(RuntimeError):
    """No kube-apiserver (or no etcd) where envtest users keep them; the message says where we looked."""


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path | None
    source: str  # where kube-apiserver was found, for messages

    def describe(self) -> str:
        kcm = str(self.kube_controller_manager) if self.kube_controller_manager else "not found"
        return f"kube-apiserver {self.kube_apiserver}, etcd {self.etcd}, kube-controller-manager {kcm}"


def envtest_platform() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return f"{platform.system().lower()}-{arch}"


def envtest_store(env: Mapping[str, str] | None = None) -> Path:
    """setup-envtest's default store of versions (its --bin-dir default on Linux)."""
    env = os.environ if env is None else env
    data_home = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local" / "share")
    return Path(data_home) / "kubebuilder-envtest" / "k8s"


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name.split("-")[0]))


def _executable(path: Path) -> Path | None:
    return path if path.is_file() and os.access(path, os.X_OK) else None


def find_binaries(env: Mapping[str, str] | None = None) -> Binaries:
    """The binaries by the envtest convention, or BinariesNotFound saying every place searched."""
    env = os.environ if env is None else env
    looked: list[str] = []
    assets_dir: Path | None = None
    assets = env.get("KUBEBUILDER_ASSETS")
    if assets:
        looked.append(f"KUBEBUILDER_ASSETS={assets}")
        if _executable(Path(assets) / "kube-apiserver"):
            assets_dir = Path(assets)
    else:
        looked.append("KUBEBUILDER_ASSETS (unset)")
        store = envtest_store(env)
        suffix = f"-{envtest_platform()}"
        versions = (
            sorted(
                (d for d in store.iterdir() if d.name.endswith(suffix) and _executable(d / "kube-apiserver")),
                key=lambda d: _version_key(d.name),
            )
            if store.is_dir()
            else []
        )
        looked.append(
            f"{store}/*{suffix}/kube-apiserver" + ("" if store.is_dir() else " (no such directory)")
        )
        assets_dir = versions[-1] if versions else None
    if assets_dir is None:
        raise BinariesNotFound(
            "no kube-apiserver found; looked in " + ", ".join(looked) + ". Install the envtest binaries "
            "with setup-envtest (docs/testing.md) or point KUBEBUILDER_ASSETS at a directory holding "
            "kube-apiserver and etcd."
        )
    which = shutil.which("etcd", path=env.get("PATH"))
    etcd = _executable(assets_dir / "etcd") or (Path(which) if which else None)
    if etcd is None:
        raise BinariesNotFound(f"kube-apiserver is in {assets_dir} but no etcd there nor on PATH")
    which_kcm = shutil.which("kube-controller-manager", path=env.get("PATH"))
    kcm = _executable(assets_dir / "kube-controller-manager") or (Path(which_kcm) if which_kcm else None)
    return Binaries(etcd, assets_dir / "kube-apiserver", kcm, str(assets_dir))


# --------------------------------------------------------------------------- processes


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_RUNNING: set[ManagedProcess] = set()


@atexit.register
def _stop_all() -> None:
    for process in list(_RUNNING):
        process.stop(timeout=5)


class ManagedProcess:
    """A child in its own process group, killed with its group on stop(), at exit, or when we die.

    Start it from the main thread: PR_SET_PDEATHSIG fires when the starting thread ends.
    """

    def __init__(
        self,
        name: str,
        args: list[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # start from the main thread: see the class docstring
        )
        _RUNNING.add(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM to the group, SIGKILL after timeout; returns the exit code."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        with contextlib.suppress(ProcessLookupError):  # anything left in the group
            os.killpg(self.popen.pid, signal.SIGKILL)
        _RUNNING.discard(self)
        self._log.close()
        return self.popen.returncode


# --------------------------------------------------------------------------- waiting


def wait_for(
    predicate: Callable[[], T | None],
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
    message: str = "condition",
) -> T:
    """Poll until predicate() is truthy and return it; AssertionError after timeout (with its last value)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message} (last: {last!r})")
        time.sleep(interval)


# --------------------------------------------------------------------------- the client


class KubeError(Exception):
    """A non-2xx answer of the API server, with its Status message."""

    def __init__(self, status: int, method: str, path: str, body: Any) -> None:
        self.status = status
        self.body = body
        self.message = str(body.get("message")) if isinstance(body, dict) else str(body)[:500]
        self.reason = str(body.get("reason", "")) if isinstance(body, dict) else ""
        super().__init__(f"{method} {path}: {status} {self.message}")


@dataclass(frozen=True)
class Resource:
    api_version: str
    kind: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        parts = [base]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        if name:
            parts.append(name)
        if sub:
            parts.append(sub)
        return "/".join(parts)


# The apiVersion a bare kind means in these tests; anything else is named by its object.
KINDS = {
    "Model": "berth.dev/v1alpha1",
    "EndpointConfig": "berth.dev/v1alpha1",
    "Endpoint": "berth.dev/v1alpha1",
    "TransformJob": "berth.dev/v1alpha1",
    "MonitoringSchedule": "berth.dev/v1alpha1",
    "Deployment": "apps/v1",
    "ReplicaSet": "apps/v1",
    "Pod": "v1",
    "Service": "v1",
    "Node": "v1",
    "Namespace": "v1",
    "ServiceAccount": "v1",
    "ConfigMap": "v1",
    "Event": "v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "PodDisruptionBudget": "policy/v1",
    "Job": "batch/v1",
    "CronJob": "batch/v1",
    "Ingress": "networking.k8s.io/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "HTTPRoute": "gateway.networking.k8s.io/v1",
    "CustomResourceDefinition": "apiextensions.k8s.io/v1",
}


def tls_context(ca_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    return context


class Kube:
    """A synchronous client for one user (a bearer token). Thread-safe for plain requests."""

    def __init__(self, server: str, token: str, ca_file: Path, *, user_agent: str = "berth-tests") -> None:
        self.server = server
        self.token = token
        self.ca_file = ca_file
        self.http = httpx.Client(
            base_url=server,
            headers={"Authorization": f"Bearer {token}", "User-Agent": user_agent},
            verify=tls_context(ca_file),
            timeout=httpx.Timeout(30.0),
            trust_env=False,
        )
        self._resources: dict[tuple[str, str], Resource] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.http.close()

    def for_token(self, token: str, user_agent: str = "berth-tests") -> Kube:
        return Kube(self.server, token, self.ca_file, user_agent=user_agent)

    # ------------------------------------------------------------------ raw

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content: str | None = None,
        content_type: str = "application/json",
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        headers = {}
        data: str | None = content
        if body is not None:
            data = json.dumps(body)
        if data is not None:
            headers["Content-Type"] = content_type
        response = self.http.request(method, path, content=data, params=params, headers=headers)
        try:
            payload = response.json() if response.content else None
        except ValueError:
            payload = response.text
        if response.status_code >= 400:
            raise KubeError(response.status_code, method, path, payload)
        return payload

    # ------------------------------------------------------------------ discovery

    def resource(self, kind: str, api_version: str | None = None) -> Resource:
        api_version = api_version or KINDS.get(kind)
        if api_version is None:
            raise ValueError(f"say the apiVersion of kind {kind}")
        key = (api_version, kind)
        with self._lock:
            if key in self._resources:
                return self._resources[key]
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        try:
            listed = self.request("GET", base)
        except KubeError as error:
            if error.status == 404:
                raise LookupError(f"the server does not serve {api_version}") from None
            raise
        with self._lock:
            for entry in listed.get("resources", []):
                if "/" not in entry["name"]:
                    found = Resource(api_version, entry["kind"], entry["name"], bool(entry["namespaced"]))
                    self._resources[(api_version, entry["kind"])] = found
            if key not in self._resources:
                raise LookupError(f"the server does not serve kind {kind} in {api_version}")
            return self._resources[key]

    def serves(self, api_version: str, kind: str) -> bool:
        try:
            self.resource(kind, api_version)
        except LookupError:
            return False
        return True

    def path_of(self, obj: Mapping[str, Any], namespace: str | None = None, sub: str | None = None) -> str:
        resource = self.resource(obj["kind"], obj["apiVersion"])
        meta = obj.get("metadata") or {}
        return resource.path(namespace or meta.get("namespace"), meta.get("name"), sub)

    # ------------------------------------------------------------------ verbs

    def get(
        self, kind: str, namespace: str | None, name: str, api_version: str | None = None
    ) -> Manifest | None:
        try:
            found: Manifest = self.request("GET", self.resource(kind, api_version).path(namespace, name))
        except KubeError as error:
            if error.status == 404:
                return None
            raise
        return found

    def list_with_version(
        self,
        kind: str,
        namespace: str | None = None,
        labels: Mapping[str, str] | str | None = None,
        api_version: str | None = None,
    ) -> tuple[list[Manifest], str]:
        resource = self.resource(kind, api_version)
        params = {}
        if labels:
            params["labelSelector"] = (
                labels if isinstance(labels, str) else ",".join(f"{k}={v}" for k, v in labels.items())
            )
        listed = self.request("GET", resource.path(namespace), params=params)
        items: list[Manifest] = listed.get("items") or []
        for item in items:
            item.setdefault("apiVersion", resource.api_version)
            item.setdefault("kind", resource.kind)
        return items, str(listed["metadata"].get("resourceVersion", ""))

    def list(
        self,
        kind: str,
        namespace: str | None = None,
        labels: Mapping[str, str] | str | None = None,
        api_version: str | None = None,
    ) -> list[Manifest]:
        return self.list_with_version(kind, namespace, labels, api_version)[0]

    def create(self, obj: Manifest, *, namespace: str | None = None, dry_run: bool = False) -> Manifest:
        meta = obj.get("metadata") or {}
        resource = self.resource(obj["kind"], obj.get("apiVersion"))
        params = {"fieldValidation": "Strict", **({"dryRun": "All"} if dry_run else {})}
        created: Manifest = self.request(
            "POST", resource.path(namespace or meta.get("namespace")), body=obj, params=params
        )
        return created

    def replace(
        self, obj: Manifest, *, sub: str | None = None, namespace: str | None = None, dry_run: bool = False
    ) -> Manifest:
        params = {"fieldValidation": "Strict", **({"dryRun": "All"} if dry_run else {})}
        replaced: Manifest = self.request("PUT", self.path_of(obj, namespace, sub), body=obj, params=params)
        return replaced

    def apply(self, obj: Manifest, *, manager: str = "berth-tests", namespace: str | None = None) -> Manifest:
        """Server-side apply (what `kubectl apply --server-side --force-conflicts` does)."""
        params = {"fieldManager": manager, "force": "true", "fieldValidation": "Strict"}
        applied: Manifest = self.request(
            "PATCH",
            self.path_of(obj, namespace),
            content=json.dumps(obj),
            content_type="application/apply-patch+yaml",
            params=params,
        )
        return applied

    def patch(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        sub: str | None = None,
        patch_type: str = "merge",
        api_version: str | None = None,
    ) -> Manifest:
        content_type = {
            "merge": "application/merge-patch+json",
            "json": "application/json-patch+json",
            "strategic": "application/strategic-merge-patch+json",
        }[patch_type]
        patched: Manifest = self.request(
            "PATCH",
            self.resource(kind, api_version).path(namespace, name, sub),
            body=body,
            content_type=content_type,
        )
        return patched

    def delete(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        *,
        grace_seconds: int | None = None,
        propagation: str | None = None,
        api_version: str | None = None,
    ) -> bool:
        """Delete; False when it was not there."""
        options: Manifest = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        if propagation is not None:
            options["propagationPolicy"] = propagation
        try:
            self.request("DELETE", self.resource(kind, api_version).path(namespace, name), body=options)
        except KubeError as error:
            if error.status == 404:
                return False
            raise
        return True

    def service_account_token(self, namespace: str, name: str, seconds: int = 3600) -> str:
        """A token from the TokenRequest API (what `kubectl create token` does)."""
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds},
        }
        answer = self.request(
            "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body=request
        )
        return str(answer["status"]["token"])


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str, user: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "envtest", "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "envtest", "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------- watching


Event = tuple[str, Manifest]  # (ADDED | MODIFIED | DELETED, object)


class Watcher:
    """List then watch one kind in one namespace in a thread: a store by name, every event kept,
    and an optional callback per event (run in the watcher's thread; its errors are kept)."""

    def __init__(
        self,
        kube: Kube,
        kind: str,
        namespace: str | None,
        on_event: Callable[[str, Manifest], None] | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        api_version: str | None = None,
    ) -> None:
        self.kube = kube.for_token(kube.token, user_agent=f"berth-tests-watch-{kind.lower()}")
        self.resource = self.kube.resource(kind, api_version)
        self.namespace = namespace
        self.labels = labels
        self.on_event = on_event
        self.store: dict[str, Manifest] = {}
        self.events: list[Event] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{kind}-{namespace}", daemon=True)
        self._response: httpx.Response | None = None

    def start(self, timeout: float = 10.0) -> Watcher:
        self._thread.start()
        if not self._synced.wait(timeout):
            raise AssertionError(
                f"watch of {self.resource.plural} did not list within {timeout}s: {self.errors}"
            )
        return self

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            # Closing the response does not wake a read blocked in another thread; shutting the
            # socket down does.
            stream = response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            with contextlib.suppress(OSError):
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)
        self.kube.close()

    def objects(self) -> list[Manifest]:
        with self._lock:
            return [json.loads(json.dumps(obj)) for obj in self.store.values()]

    def history(self) -> list[Event]:
        with self._lock:
            return list(self.events)

    def _deliver(self, kind: str, obj: Manifest) -> None:
        obj.setdefault("apiVersion", self.resource.api_version)
        obj.setdefault("kind", self.resource.kind)
        name = obj["metadata"]["name"]
        with self._lock:
            if kind == "DELETED":
                self.store.pop(name, None)
            else:
                self.store[name] = obj
            self.events.append((kind, obj))
        if self.on_event is not None:
            try:
                self.on_event(kind, obj)
            except Exception as error:  # kept for the test to assert on; the watch goes on
                if not self._stop.is_set():
                    self.errors.append(f"{kind} {name}: {type(error).__name__}: {error}")

    def _relist(self) -> str:
        items, version = self.kube.list_with_version(
            self.resource.kind, self.namespace, self.labels, self.resource.api_version
        )
        fresh = {item["metadata"]["name"]: item for item in items}
        with self._lock:
            gone = [obj for name, obj in self.store.items() if name not in fresh]
            known = {name: obj["metadata"]["resourceVersion"] for name, obj in self.store.items()}
        for obj in gone:
            self._deliver("DELETED", obj)
        for name, item in fresh.items():
            if known.get(name) != item["metadata"]["resourceVersion"]:
                self._deliver("MODIFIED" if name in known else "ADDED", item)
        return version

    def _run(self) -> None:
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._relist()
                    self._synced.set()
                params = {"watch": "true", "resourceVersion": version, "allowWatchBookmarks": "true"}
                params["timeoutSeconds"] = "30"
                if self.labels:
                    params["labelSelector"] = ",".join(f"{k}={v}" for k, v in self.labels.items())
                path = self.resource.path(self.namespace)
                with self.kube.http.stream(
                    "GET", path, params=params, timeout=httpx.Timeout(40.0, connect=10.0)
                ) as response:
                    self._response = response
                    if response.status_code == 410:
                        version = None
                        continue
                    if response.status_code >= 400:
                        raise KubeError(response.status_code, "WATCH", path, response.read().decode())
                    for line in response.iter_lines():
                        if self._stop.is_set():
                            break
                        if not line:
                            continue
                        event = json.loads(line)
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            version = None if obj.get("code") == 410 else version
                            break
                        version = obj["metadata"].get("resourceVersion") or version
                        if event["type"] != "BOOKMARK":
                            self._deliver(event["type"], obj)
            except Exception as error:
                if self._stop.is_set():
                    break
                self.errors.append(f"watch {self.resource.plural}: {type(error).__name__}: {error}")
                self._stop.wait(0.5)  # the server is busy or restarting: try again shortly
            finally:
                self._response = None


# --------------------------------------------------------------------------- the control plane


# What ServiceAccounts (the operator) write, and which Berth objects they read one by one.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
    verbs: [create, update, patch, delete, deletecollection]
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
    verbs: [get]
    resources: [{group: berth.dev}]
  - level: None
"""
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


def _signing_key(directory: Path) -> tuple[Path, Path]:
    """An RSA key pair for service-account tokens (cryptography if installed, else openssl)."""
    private, public = directory / "sa.key", directory / "sa.pub"
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
    except ImportError:
        subprocess.run(["openssl", "genrsa", "-out", str(private), "2048"], check=True, capture_output=True)
        subprocess.run(
            ["openssl", "rsa", "-in", str(private), "-pubout", "-out", str(public)],
            check=True,
            capture_output=True,
        )
        return private, public
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


WORKDIR_PREFIX = "berth-envtest-"
OWNER_FILE = "owner.pid"


def _scratch_root() -> str | None:
    """etcd fsyncs on every write; on tmpfs that costs nothing (etcd 3.4 has no --unsafe-no-fsync)."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_abandoned_workdirs() -> list[Path]:
    """Remove the working directories of runs that were killed (their owner process is gone):
    etcd's files there hold about 120 MB, on tmpfs that is memory."""
    removed = []
    root = Path(_scratch_root() or tempfile.gettempdir())
    for workdir in root.glob(f"{WORKDIR_PREFIX}*"):
        try:
            owner = int((workdir / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or still being set up
        if not _pid_alive(owner):
            shutil.rmtree(workdir, ignore_errors=True)
            removed.append(workdir)
    return removed


def _new_workdir() -> Path:
    sweep_abandoned_workdirs()
    workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=_scratch_root()))
    (workdir / OWNER_FILE).write_text(str(os.getpid()))
    return workdir


@dataclass
class ControlPlane:
    binaries: Binaries
    workdir: Path = field(default_factory=_new_workdir)
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    processes: list[ManagedProcess] = field(default_factory=list)
    server: str = ""
    started_seconds: float = 0.0
    audit_policy: str = AUDIT_POLICY  # bench/reconcile_cluster.py logs every request of the operator

    @property
    def ca_file(self) -> Path:
        return self.workdir / "certs" / "apiserver.crt"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def has_controller_manager(self) -> bool:
        return self.binaries.kube_controller_manager is not None

    def start(self, crds: Iterable[Manifest] = ()) -> ControlPlane:
        """etcd and kube-apiserver, then the CRDs (Established), then kube-controller-manager.

        The CRDs come first so that the garbage collector watches their kinds from its start; CRDs
        made later it notices only at its next discovery resync (30 s)."""
        began = time.monotonic()
        try:
            self._start_etcd()
            self._start_apiserver()
            write_kubeconfig(self.admin_kubeconfig, self.server, self.ca_file, self.admin_token, ADMIN_USER)
            with contextlib.closing(self.admin()) as kube:
                install_crds(kube, crds)
            if self.binaries.kube_controller_manager is not None:
                self._start_controller_manager(self.binaries.kube_controller_manager)
        except BaseException:
            self.stop()
            raise
        self.started_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop(timeout=3)  # throwaway state: a short grace is enough
        self.processes.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def admin(self) -> Kube:
        return Kube(self.server, self.admin_token, self.ca_file)

    def _spawn(self, name: str, args: list[str]) -> ManagedProcess:
        process = ManagedProcess(name, args, self.workdir / f"{name}.log", cwd=self.workdir)
        self.processes.append(process)
        return process

    def _await(self, process: ManagedProcess, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if not process.alive():
                raise RuntimeError(
                    f"{process.name} exited with {process.popen.returncode}:\n{process.tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{process.name} not {what} after {START_TIMEOUT:.0f}s:\n{process.tail()}")
            time.sleep(0.1)

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        self.etcd_url = client_url
        etcd = self._spawn(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=berth-test",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=berth-test={peer_url}",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            try:
                return (
                    httpx.get(f"{client_url}/health", timeout=1, trust_env=False).json().get("health")
                    == "true"
                )
            except (httpx.HTTPError, ValueError):
                return False

        self._await(etcd, healthy, "healthy")

    def _start_apiserver(self) -> None:
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        (self.workdir / "certs").mkdir()
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(self.audit_policy)
        private, public = _signing_key(self.workdir)
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers={self.etcd_url}",
                f"--cert-dir={self.workdir / 'certs'}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                "--anonymous-auth=false",
                f"--service-account-issuer={self.server}",
                f"--service-account-key-file={public}",
                f"--service-account-signing-key-file={private}",
                # Owner references with blockOwnerDeletion need `update` on the owner's finalizers,
                # as the chart's RBAC comment says some clusters enforce.
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-maxbackup=1",
                "--allow-privileged=true",
            ],
        )

        def ready() -> bool:
            if not self.ca_file.exists():
                return False
            try:
                answer = httpx.get(
                    f"{self.server}/readyz",
                    headers={"Authorization": f"Bearer {self.admin_token}"},
                    verify=tls_context(self.ca_file),
                    timeout=2,
                    trust_env=False,
                )
            except (httpx.HTTPError, ssl.SSLError, OSError):
                return False
            return answer.status_code == 200

        self._await(apiserver, ready, "ready")

    def _start_controller_manager(self, binary: Path) -> None:
        port = free_port()
        (self.workdir / "kcm").mkdir()
        kcm = self._spawn(
            "kube-controller-manager",
            [
                str(binary),
                f"--kubeconfig={self.admin_kubeconfig}",
                "--leader-elect=false",
                f"--controllers={','.join(CONTROLLERS)}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'kcm'}",
                "--concurrent-gc-syncs=5",
                "--horizontal-pod-autoscaler-sync-period=2s",
            ],
        )

        def healthy() -> bool:
            try:
                answer = httpx.get(
                    f"https://127.0.0.1:{port}/healthz", verify=False, timeout=2, trust_env=False
                )
            except httpx.HTTPError:
                return False
            return answer.status_code == 200

        self._await(kcm, healthy, "healthy")

    # ------------------------------------------------------------------ audit

    def audit_events(self, user: str) -> list[Manifest]:
        """Audit events (stage ResponseComplete) of a ServiceAccount's requests (AUDIT_POLICY), in order."""
        events: list[Manifest] = []
        try:
            lines = self.audit_log.read_text().splitlines()
        except OSError:
            return events
        for line in lines:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("stage") == "ResponseComplete" and event.get("user", {}).get("username") == user:
                    events.append(event)
        return events

    def audit_writes(self, user: str) -> list[Manifest]:
        return [e for e in self.audit_events(user) if e.get("verb") in WRITE_VERBS]


# --------------------------------------------------------------------------- CRDs


def crd_documents(paths: Iterable[Path]) -> list[Manifest]:
    found: list[Manifest] = []
    for path in paths:
        with open(path) as stream:
            found += [
                doc
                for doc in yaml.safe_load_all(stream)
                if doc and doc.get("kind") == "CustomResourceDefinition"
            ]
    return found


def established(crd: Manifest | None) -> bool:
    conditions = {c["type"]: c["status"] for c in ((crd or {}).get("status") or {}).get("conditions") or []}
    return conditions.get("Established") == "True" and conditions.get("NamesAccepted") == "True"


def install_crds(kube: Kube, crds: Iterable[Manifest], timeout: float = 30.0) -> list[Manifest]:
    """Apply CRDs and wait until every one is Established; returns them as the server has them."""
    names = [kube.apply(crd)["metadata"]["name"] for crd in crds]
    if not names:
        return []

    def all_established() -> list[Manifest] | None:
        found = [kube.get("CustomResourceDefinition", None, name) for name in names]
        return [crd for crd in found if crd] if all(established(crd) for crd in found) else None

    return wait_for(all_established, timeout=timeout, message=f"CRDs {names} Established")

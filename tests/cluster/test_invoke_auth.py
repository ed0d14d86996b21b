"""Invoke authentication (issue 18) against a real kube-apiserver: the real serving runtime with
`--auth-mode KubernetesRBAC` asks the API server's TokenReview and SubjectAccessReview about
real ServiceAccount tokens, as a reviewer ServiceAccount bound to the ClusterRole the chart ships
(`berth-invoke-reviewer`: create on tokenreviews and subjectaccessreviews, nothing else).

Callers are granted invoke with an ordinary Role (`verbs: [invoke]`, `resources: [endpoints]`,
`resourceNames: [fraud]`, `apiGroups: [berth.dev]`), as docs/auth.md shows. The Endpoint object
itself need not exist: RBAC authorizes names, not objects.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests.serving.models import build_logreg
from tests.serving.support import REPO, Response, ThreadedServer, free_port, post_concurrently, request
from tests.support.envtest import ControlPlane, Kube, KubeError, Manifest, wait_for

pytestmark = pytest.mark.timeout(240)

REVIEWER_ROLE = "berth-invoke-reviewer"
REVIEWER_RULES = [
    {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
    {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
]
ENDPOINT = "fraud"
ROW = orjson.dumps([[0.1] * 16])
CACHE_SECONDS = 1


def user_of(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def invoke_role(name: str) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name},
        "rules": [
            {
                "apiGroups": ["berth.dev"],
                "resources": ["endpoints"],
                "resourceNames": [ENDPOINT],
                "verbs": ["invoke"],
            }
        ],
    }


def role_binding(name: str, role: str, service_account: str, namespace: str) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
    }


@dataclass
class World:
    """One namespace: a reviewer, a caller allowed to invoke endpoints/fraud, a stranger."""

    plane: ControlPlane
    kube: Kube
    namespace: str
    workdir: Path
    model: Path
    reviewer_token_file: Path

    def service_account(self, name: str) -> str:
        self.kube.create(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
            namespace=self.namespace,
        )
        return name

    def token(self, service_account: str) -> str:
        return self.kube.service_account_token(self.namespace, service_account, seconds=3600)

    def may_invoke(self, service_account: str) -> bool:
        """What the API server answers now (the RBAC authorizer sees a new binding within a moment)."""
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user_of(self.namespace, service_account),
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{self.namespace}",
                    "system:authenticated",
                ],
                "resourceAttributes": {
                    "namespace": self.namespace,
                    "verb": "invoke",
                    "group": "berth.dev",
                    "resource": "endpoints",
                    "name": ENDPOINT,
                },
            },
        }
        answer = self.kube.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body=review)
        return bool(answer["status"].get("allowed"))

    def grant(self, service_account: str) -> str:
        """A RoleBinding of the invoke Role to `service_account`; returns its name, once in effect."""
        name = f"{service_account}-invokes-{ENDPOINT}"
        self.kube.create(
            role_binding(name, "invoke-fraud", service_account, self.namespace), namespace=self.namespace
        )
        wait_for(lambda: self.may_invoke(service_account), message=f"{service_account} allowed to invoke")
        return name

    def reviews_by_reviewer(self, resource: str) -> int:
        events = self.plane.audit_events(user_of(self.namespace, "reviewer"))
        return sum(
            1
            for e in events
            if e.get("verb") == "create" and (e.get("objectRef") or {}).get("resource") == resource
        )

    def config_args(self, api_url: str, token_file: Path, cache_seconds: float) -> dict[str, object]:
        return {
            "auth_mode": "KubernetesRBAC",
            "auth_endpoint": f"{self.namespace}/{ENDPOINT}",
            "kube_api_url": api_url,
            "kube_token_file": str(token_file),
            "kube_ca_file": str(self.plane.ca_file),
            "auth_cache_seconds": cache_seconds,
        }


@pytest.fixture(scope="module")
def world(
    control_plane: ControlPlane, kube: Kube, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    namespace = f"t-invoke-auth-{secrets.token_hex(3)}"
    workdir = tmp_path_factory.mktemp("invoke-auth")
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    created_role = False
    existing = kube.get("ClusterRole", None, REVIEWER_ROLE, "rbac.authorization.k8s.io/v1")
    if existing is None:
        kube.create(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": REVIEWER_ROLE},
                "rules": REVIEWER_RULES,
            }
        )
        created_role = True
    else:  # the chart's (tests/cluster installs it): the same rules, or this test is not about it
        assert existing["rules"] == REVIEWER_RULES
    binding = f"{REVIEWER_ROLE}-{namespace}"
    kube.create(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": binding},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": REVIEWER_ROLE,
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reviewer", "namespace": namespace}],
        }
    )
    world = World(
        control_plane,
        kube,
        namespace,
        workdir,
        build_logreg(workdir / "fraud.onnx", zipmap=False),
        workdir / "reviewer-token",
    )
    try:
        for name in ("reviewer", "caller", "stranger"):
            world.service_account(name)
        kube.create(invoke_role("invoke-fraud"), namespace=namespace)
        world.grant("caller")
        world.reviewer_token_file.write_text(world.token("reviewer"))
        yield world
    finally:
        kube.delete("ClusterRoleBinding", None, binding, api_version="rbac.authorization.k8s.io/v1")
        if created_role:
            kube.delete("ClusterRole", None, REVIEWER_ROLE, api_version="rbac.authorization.k8s.io/v1")
        kube.delete("Namespace", None, namespace)


@dataclass
class Process:
    url: str
    popen: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="module")
def served(world: World) -> Iterator[Process]:
    """`berth serve` as the pod runs it: a process, configured by its command line."""
    port = free_port()
    log = world.workdir / "serve.log"
    args = [
        sys.executable, "-m", "berth_serving", "serve", str(world.model),
        "--host", "127.0.0.1", "--port", str(port),
        "--auth-mode", "KubernetesRBAC",
        "--auth-endpoint", f"{world.namespace}/{ENDPOINT}",
        "--kube-api-url", world.plane.server,
        "--kube-token-file", str(world.reviewer_token_file),
        "--kube-ca-file", str(world.plane.ca_file),
        "--auth-cache-seconds", str(CACHE_SECONDS),
    ]  # fmt: skip
    with open(log, "wb") as stream:
        popen = subprocess.Popen(args, stdout=stream, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: popen.poll() is not None or _ping(url), timeout=60, message="berth serve ready")
        assert popen.poll() is None, log.read_text()
        yield Process(url, popen, log)
    finally:
        popen.terminate()
        popen.wait(30)
        text = log.read_text()
        assert "Bearer ey" not in text and world.reviewer_token_file.read_text() not in text


def _ping(url: str) -> bool:
    with contextlib.suppress(OSError):
        return request(url + "/ping", timeout=2).status == 200
    return False


def invoke(url: str, token: str | None = None, **headers: str) -> Response:
    wanted = {"Content-Type": "application/json", **headers}
    if token is not None:
        wanted["Authorization"] = f"Bearer {token}"
    return request(url + "/invocations", "POST", ROW, wanted)


def message(answer: Response) -> str:
    return str(orjson.loads(answer.body)["error"]["message"])


def test_a_caller_granted_invoke_by_a_role_is_served(world: World, served: Process) -> None:
    token = world.token("caller")
    answer = invoke(served.url, token)
    assert answer.status == 200, answer.body
    assert "label" in orjson.loads(answer.body)["outputs"]
    v2 = request(
        served.url + "/v2/models/fraud/infer",
        "POST",
        orjson.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.1] * 16}]}),
        {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    assert v2.status == 200, v2.body
    metrics = request(served.url + "/metrics").body.decode()
    caller = user_of(world.namespace, "caller")
    assert (
        f'berth_invocations_by_caller_total{{caller="{caller}",result="allowed",variant="default"}}'
        in metrics
    )
    assert token not in metrics


def test_a_caller_without_the_grant_is_403_naming_what_to_grant(world: World, served: Process) -> None:
    answer = invoke(served.url, world.token("stranger"))
    assert answer.status == 403
    said = message(answer)
    assert f"user '{user_of(world.namespace, 'stranger')}' may not invoke endpoints/{ENDPOINT}" in said
    assert "resourceNames [fraud]" in said and "verbs [invoke]" in said


def test_no_token_is_401_saying_what_is_needed(world: World, served: Process) -> None:
    answer = invoke(served.url)
    assert answer.status == 401 and answer.headers["www-authenticate"].startswith("Bearer")
    assert message(answer).startswith(
        f"this endpoint needs a bearer token of a user allowed to invoke endpoints/{ENDPOINT} in namespace "
        f"{world.namespace} (verb invoke, group berth.dev)"
    )
    assert request(served.url + "/ping").status == 200
    assert request(served.url + "/metrics").status == 200


def test_bad_tokens_are_401(world: World, served: Process) -> None:
    real = world.token("caller")
    header, payload, signature = real.split(".")
    forged = f"{header}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    for token in ("not-a-token", forged):
        answer = invoke(served.url, token)
        assert answer.status == 401, (token[:12], answer.body)
        assert "not accepted by the Kubernetes API server" in message(answer)


def test_a_revoked_binding_is_denied_once_the_cache_ttl_has_passed(world: World, served: Process) -> None:
    world.service_account("revocable")
    binding = world.grant("revocable")
    token = world.token("revocable")
    assert invoke(served.url, token).status == 200
    world.kube.delete("RoleBinding", world.namespace, binding, api_version="rbac.authorization.k8s.io/v1")
    wait_for(lambda: not world.may_invoke("revocable"), message="the binding gone from the authorizer")
    # Cached answers live CACHE_SECONDS; then the next request is reviewed again.
    wait_for(lambda: invoke(served.url, token).status == 403, timeout=CACHE_SECONDS + 15, message="403")


def test_a_deleted_service_account_token_is_401_after_the_ttl(world: World, served: Process) -> None:
    world.service_account("short-lived")
    world.grant("short-lived")
    token = world.token("short-lived")
    assert invoke(served.url, token).status == 200
    world.kube.delete("ServiceAccount", world.namespace, "short-lived")
    wait_for(lambda: invoke(served.url, token).status == 401, timeout=CACHE_SECONDS + 15, message="401")


# --------------------------------------------------------------------------- an API server that goes away


class Proxy:
    """A TCP relay on a loopback port in front of the API server (TLS passes through: the
    server's certificate names 127.0.0.1, not a port), that can be stopped and started again."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> Proxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def threaded(world: World, api_url: str, token_file: Path, cache_seconds: float) -> Iterator[ThreadedServer]:
    from berth_serving.config import ServeConfig

    config = ServeConfig(model_uri=str(world.model), **world.config_args(api_url, token_file, cache_seconds))
    server = ThreadedServer(config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_api_server_down_fails_closed_with_503_and_recovers(world: World) -> None:
    port = int(world.plane.server.rsplit(":", 1)[1])
    proxy = Proxy(port).start()
    cache = 3.0
    try:
        with threaded(world, f"https://127.0.0.1:{proxy.port}", world.reviewer_token_file, cache) as server:
            cached = world.token("caller")
            assert invoke(server.url, cached).status == 200
            proxy.stop()
            down = invoke(server.url, world.token("caller"))  # a token never reviewed
            assert down.status == 503 and down.headers["retry-after"] == "1"
            assert "did not answer the review" in message(down)
            # A token reviewed before the outage is served from the cache for its TTL, no longer.
            wait_for(lambda: invoke(server.url, cached).status == 503, timeout=cache + 15, message="503")
            assert request(server.url + "/ping").status == 200  # not the pod's fault: it stays ready
            metrics = request(server.url + "/metrics").body.decode()
            assert 'berth_invoke_auth_reviews_total{result="unavailable",variant="default"}' in metrics
            proxy.start()
            wait_for(lambda: invoke(server.url, cached).status == 200, timeout=20, message="served again")
    finally:
        proxy.stop()


def test_concurrent_requests_with_one_new_token_make_one_review(world: World) -> None:
    with threaded(world, world.plane.server, world.reviewer_token_file, 30.0) as server:
        token = world.token("caller")
        before = (
            world.reviews_by_reviewer("tokenreviews"),
            world.reviews_by_reviewer("subjectaccessreviews"),
        )
        answers = post_concurrently(
            server.url,
            "/invocations",
            [ROW] * 32,
            concurrency=16,
            headers={"Authorization": f"Bearer {token}"},
        )
        assert [status for status, _ in answers] == [200] * 32
        wait_for(
            lambda: world.reviews_by_reviewer("tokenreviews") > before[0],
            message="the review in the audit log",
        )
        after = (world.reviews_by_reviewer("tokenreviews"), world.reviews_by_reviewer("subjectaccessreviews"))
        assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


def test_the_reviewers_token_file_is_read_again_when_it_changes(world: World) -> None:
    """The reviewer's own token (a projected token the kubelet rotates) is re-read: first the
    stranger's, which the API server knows but lets create no reviews (503: this pod's RBAC is
    missing), then the reviewer's."""
    token_file = world.workdir / "rotating-token"
    token_file.write_text(world.token("stranger"))
    with threaded(world, world.plane.server, token_file, 0.5) as server:
        caller = world.token("caller")
        refused = invoke(server.url, caller)
        assert refused.status == 503
        token_file.write_text(world.token("reviewer"))
        wait_for(
            lambda: invoke(server.url, caller).status == 200, timeout=20, message="served with the new token"
        )


def test_the_reviewer_role_grants_reviews_and_nothing_else(world: World) -> None:
    reviewer = world.kube.for_token(world.reviewer_token_file.read_text())
    try:
        with pytest.raises(KubeError) as refused:
            reviewer.list("Pod", world.namespace)
        assert refused.value.status == 403
        with pytest.raises(KubeError):
            reviewer.list("ServiceAccount", world.namespace)
    finally:
        reviewer.close()

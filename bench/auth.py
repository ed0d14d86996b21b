"""Invoke-auth benchmark (not a test): what the check costs a warm request, against the same
server with auth off, in one run.

    .venv/bin/python bench/auth.py [--seconds 3] [--rounds 5]

Three `berth serve` processes on the same small model (logistic regression, 16 features, one
JSON row per request): `--auth-mode None`, `APIKey` (three keys in a Secret-like directory, the
request's key hashed and compared with each), and `KubernetesRBAC` with a warm review cache
against a real kube-apiserver (skipped, with the reason, when the envtest binaries are not
found; see docs/testing.md). Each round measures every server in turn, in a rotating order:
p50 at concurrency 1 and requests/s at concurrency 64 (wrk), and the server process's CPU time
per answer. The figures are medians over the rounds, and so are the per-round differences
against auth off, which cancel part of the drift of this shared machine. Two figures that move
less with other work: the guard's cost in process (no HTTP), and (with py-spy) the guard's own
share of the event loop's samples under load. Targets (issue 18): under 0.05 ms added at p50,
at least 0.95 of the throughput.

On CPU the batch is whatever arrived while ONNX Runtime ran the previous one, so any per-request
work on the event loop also shrinks the batches and adds ONNX Runtime calls per request: the
end-to-end cost is a few times the guard's own (seen with py-spy: ORT time per request 6.9 ->
13.2 us with a 5 us guard, on the small model at c64).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from berth_serving.auth.apikeys import hashed_entry  # noqa: E402

from tests.serving.models import build_logreg  # noqa: E402

ROW = (
    b'{"instances": [[0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8, 0.9, 1.0, -1.1, 1.2, 1.3, -1.4, 1.5, 1.6]]}'
)
P50_TARGET_MS = 0.05
THROUGHPUT_TARGET = 0.95


@dataclass
class Server:
    name: str
    url: str
    pid: int
    headers: dict[str, str]


@dataclass
class Load:
    requests_per_second: float
    p50_ms: float
    cpu_us_per_request: float  # the server process's CPU time (all threads) per answered request


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads (/proc/PID/stat, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(url: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(
        url + "/invocations", data=ROW, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"berth serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url}/ping did not answer 200")


@contextmanager
def berth_serve(model: Path, *args: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    command = [sys.executable, "-m", "berth_serving", "serve", str(model), "--host", "127.0.0.1"]
    process = subprocess.Popen(
        [*command, "--port", str(port), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(30)


def wrk(server: Server, connections: int, seconds: float, workdir: Path) -> Load:
    script = workdir / f"{server.name}.lua"
    body = workdir / "row.json"
    body.write_bytes(ROW)
    lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f'wrk.headers["{key}"] = "{value}"' for key, value in server.headers.items()]
    lines += [f'local f = io.open("{body}", "rb")', "wrk.body = f:read('*all')", "f:close()"]
    script.write_text("\n".join(lines) + "\n")
    threads = str(min(2, connections))
    command = [
        "wrk",
        "-t",
        threads,
        "-c",
        str(connections),
        "-d",
        f"{seconds:g}s",
        "--latency",
        "-s",
        str(script),
    ]
    cpu_before = cpu_seconds(server.pid)
    out = subprocess.run(
        [*command, server.url + "/invocations"],
        capture_output=True,
        text=True,
    ).stdout
    cpu = cpu_seconds(server.pid) - cpu_before
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if failed or "Socket errors" in out:
        raise RuntimeError(f"{server.name}: not every answer was 200:\n{out}")
    value, unit = re.search(r"\s50%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p50 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    answered = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return Load(rps, p50, cpu / answered * 1e6)


@contextmanager
def kube_rbac_server(model: Path, workdir: Path) -> Iterator[Server | str]:
    """berth serve with KubernetesRBAC against a real kube-apiserver, or why it cannot run."""
    from tests.support.envtest import (
        CRD_DIR,
        Binaries,
        BinariesNotFound,
        ControlPlane,
        crd_documents,
        find_binaries,
    )

    try:
        found = find_binaries()
    except BinariesNotFound as error:
        yield f"skipped: {error}"
        return
    # No controller manager: nothing here needs one, and it would take CPU from the measurement.
    # The Berth CRDs, as the tests install them (start() waits for the CRDs it is given).
    crds = crd_documents(sorted(CRD_DIR.glob("*.yaml")))
    plane = ControlPlane(Binaries(found.etcd, found.kube_apiserver, None, found.source)).start(crds)
    kube = plane.admin()
    try:
        namespace = "bench"
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        for name in ("reviewer", "caller"):
            kube.create(
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
                namespace=namespace,
            )
        rbac = "rbac.authorization.k8s.io/v1"
        kube.create(
            {
                "apiVersion": rbac,
                "kind": "ClusterRole",
                "metadata": {"name": "berth-invoke-reviewer"},
                "rules": [
                    {
                        "apiGroups": ["authentication.k8s.io"],
                        "resources": ["tokenreviews"],
                        "verbs": ["create"],
                    },
                    {
                        "apiGroups": ["authorization.k8s.io"],
                        "resources": ["subjectaccessreviews"],
                        "verbs": ["create"],
                    },
                ],
            }
        )
        kube.create(
            {
                "apiVersion": rbac,
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "berth-invoke-reviewer-bench"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "berth-invoke-reviewer",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "reviewer", "namespace": namespace}],
            }
        )
        kube.create(
            {
                "apiVersion": rbac,
                "kind": "Role",
                "metadata": {"name": "invoke-fraud"},
                "rules": [
                    {
                        "apiGroups": ["berth.dev"],
                        "resources": ["endpoints"],
                        "resourceNames": ["fraud"],
                        "verbs": ["invoke"],
                    }
                ],
            },
            namespace=namespace,
        )
        kube.create(
            {
                "apiVersion": rbac,
                "kind": "RoleBinding",
                "metadata": {"name": "caller-invokes-fraud"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "invoke-fraud"},
                "subjects": [{"kind": "ServiceAccount", "name": "caller", "namespace": namespace}],
            },
            namespace=namespace,
        )
        token_file = workdir / "reviewer-token"
        token_file.write_text(kube.service_account_token(namespace, "reviewer"))
        caller = kube.service_account_token(namespace, "caller")
        args = [
            "--auth-mode", "KubernetesRBAC", "--auth-endpoint", f"{namespace}/fraud",
            "--kube-api-url", plane.server, "--kube-token-file", str(token_file),
            "--kube-ca-file", str(plane.ca_file),
            "--auth-cache-seconds", "3600",  # warm for the whole run: the figure is the cache hit
        ]  # fmt: skip
        with berth_serve(model, *args) as (url, pid):
            headers = {"Authorization": f"Bearer {caller}"}
            import time

            deadline = time.monotonic() + 30
            while post(url, headers) != 200:  # the RoleBinding reaches the authorizer within a moment
                if time.monotonic() > deadline:
                    raise RuntimeError("the caller was never allowed")
                time.sleep(0.2)
            yield Server("KubernetesRBAC", url, pid, headers)
            with urllib.request.urlopen(url + "/metrics", timeout=5) as answer:
                reviews = re.findall(
                    rb'berth_invoke_auth_reviews_total\{result="(\w+)"[^}]*\} ([\d.]+)', answer.read()
                )
            print(
                f"  KubernetesRBAC reviews asked of the API server over the whole run: {reviews_text(reviews)}"
            )
    finally:
        kube.close()
        plane.stop()


def guard_microseconds(keys: Path, key: str, token: str) -> dict[str, float]:
    """The guard's own cost per request, in process (no HTTP): a request through AuthGuard to a
    no-op app, minus the same request straight to the app; best of several runs."""
    import asyncio
    import time

    from berth_serving.auth import ApiKeyAuthenticator, AuthGuard, KubeAuthenticator
    from berth_serving.auth.apikeys import KeyStore
    from berth_serving.auth.decision import Target
    from berth_serving.auth.kube import KubeReviewer

    class Allowing:
        async def create(self, path: str, body: dict[str, object]) -> dict[str, object]:
            return {"authenticated": True, "user": {"username": "caller"}, "allowed": True}

        async def aclose(self) -> None:
            pass

    async def app(scope: object, receive: object, send: object) -> None:
        return None

    store = KeyStore(keys)
    store.load()
    common = [(b"host", b"x"), (b"content-type", b"application/json"), (b"content-length", b"98")]
    cases = {
        "APIKey": (ApiKeyAuthenticator(store), [*common, (b"x-berth-api-key", key.encode())]),
        "KubernetesRBAC": (
            KubeAuthenticator(KubeReviewer(Allowing(), Target("bench", "fraud"), 3600), ""),
            [*common, (b"authorization", b"Bearer " + token.encode())],
        ),
    }

    async def per_call(target: object, headers: list[tuple[bytes, bytes]], count: int) -> float:
        scope = {"type": "http", "method": "POST", "path": "/invocations", "headers": headers}
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(count):
                await target(scope, None, None)  # type: ignore[operator]
            best = min(best, (time.perf_counter() - started) / count)
        return best

    async def measure() -> dict[str, float]:
        found = {}
        for name, (authenticator, headers) in cases.items():
            guard = AuthGuard(app, authenticator)
            await per_call(guard, headers, 100)  # warm the cache
            found[name] = (
                await per_call(guard, headers, 20_000) - await per_call(app, headers, 20_000)
            ) * 1e6
        return found

    return asyncio.run(measure())


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def guard_share(server: Server, seconds: float, workdir: Path) -> float | None:
    """The share of the server's event-loop samples (py-spy, 250 Hz) spent in the guard itself
    (AuthGuard.__call__ outside the serving app) during a c64 load: a proportion of the server's
    own time, which other work on the machine moves far less than requests/s."""
    spy = py_spy()
    if spy is None:
        return None
    out = workdir / f"{server.name}.spy"
    record = [
        spy,
        "record",
        "-p",
        str(server.pid),
        "-d",
        f"{seconds:g}",
        "-r",
        "250",
        "-f",
        "raw",
        "-o",
        str(out),
    ]
    sampler = subprocess.Popen(
        [*record, "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wrk(server, 64, seconds, workdir)
    if sampler.wait(60) != 0 or not out.exists():
        return None
    loop = guard = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "Runner.run" not in stack:  # other threads (the ONNX Runtime worker)
            continue
        loop += int(count)
        if "AuthGuard.__call__" in stack and "ServingApp.__call__" not in stack:
            guard += int(count)
    return guard / loop if loop else None


def paired(ours: list[Load], off: list[Load], measure: Callable[[Load, Load], float]) -> float:
    return statistics.median(measure(a, b) for a, b in zip(ours, off, strict=True))


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def reviews_text(reviews: list[tuple[bytes, bytes]]) -> str:
    return ", ".join(f"{result.decode()} {float(count):.0f}" for result, count in reviews) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each load measurement")
    parser.add_argument("--rounds", type=int, default=5, help="rounds over the servers")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/auth.py needs wrk (Debian package wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="berth-bench-auth-"))
    model = build_logreg(workdir / "small.onnx", n_features=16, zipmap=False)
    keys = workdir / "keys"
    keys.mkdir()
    key = secrets.token_urlsafe(32)
    for name, content in (
        ("old", secrets.token_urlsafe(32)),
        ("ci", key),
        ("next", secrets.token_urlsafe(32)),
    ):
        (keys / name).write_text(hashed_entry(content))
    fake_token = "eyJhbGciOiJSUzI1NiJ9." + secrets.token_urlsafe(700) + "." + secrets.token_urlsafe(256)
    in_process = guard_microseconds(keys, key, fake_token)
    print(
        "the guard in process (no HTTP; a 1 KB bearer token like a ServiceAccount's, warm cache): "
        + ", ".join(f"{name} {value:.1f} us per request" for name, value in in_process.items())
    )
    print(
        f"berth invoke-auth benchmark: small model, one JSON row per request, wrk, {args.seconds:g} s per "
        f"measurement, {args.rounds} rounds, p50 at c1 and requests/s at c64"
    )
    with ExitStack() as stack:
        off_url, off_pid = stack.enter_context(berth_serve(model))
        key_url, key_pid = stack.enter_context(
            berth_serve(model, "--auth-mode", "APIKey", "--api-keys-dir", str(keys))
        )
        servers = [
            Server("off", off_url, off_pid, {}),
            Server("APIKey", key_url, key_pid, {"X-Berth-Api-Key": key}),
        ]
        rbac = stack.enter_context(kube_rbac_server(model, workdir))
        if isinstance(rbac, Server):
            servers.append(rbac)
        else:
            print(f"  KubernetesRBAC {rbac}")
        for server in servers:
            wrk(server, 64, 1.0, workdir)  # warm-up
        c1: dict[str, list[Load]] = {server.name: [] for server in servers}
        c64: dict[str, list[Load]] = {server.name: [] for server in servers}
        for round_number in range(args.rounds):
            order = servers[round_number % len(servers) :] + servers[: round_number % len(servers)]
            for server in order:
                c1[server.name].append(wrk(server, 1, args.seconds, workdir))
            for server in order:
                c64[server.name].append(wrk(server, 64, args.seconds, workdir))
            print(
                f"  round {round_number + 1}: "
                + "; ".join(
                    f"{s.name} p50 {c1[s.name][-1].p50_ms:.3f} ms, {c64[s.name][-1].requests_per_second:,.0f} "
                    f"req/s, {c64[s.name][-1].cpu_us_per_request:.0f} us CPU/req"
                    for s in servers
                )
            )
        print("\nmedians over the rounds")
        for server in servers:
            loads = c64[server.name]
            print(
                f"  {server.name:15s} p50 c1 {statistics.median(x.p50_ms for x in c1[server.name]):.3f} ms   "
                f"c64 {statistics.median(x.requests_per_second for x in loads):,.0f} req/s, "
                f"{statistics.median(x.cpu_us_per_request for x in loads):.1f} us server CPU per request"
            )
        print("\nagainst the targets (medians of the per-round differences and ratios against auth off)")
        for server in servers[1:]:
            name = server.name
            added = paired(c1[name], c1["off"], lambda a, b: a.p50_ms - b.p50_ms)
            ratio = paired(c64[name], c64["off"], lambda a, b: a.requests_per_second / b.requests_per_second)
            cpu_added = paired(
                c64[name], c64["off"], lambda a, b: a.cpu_us_per_request - b.cpu_us_per_request
            )
            capacity = paired(c64[name], c64["off"], lambda a, b: b.cpu_us_per_request / a.cpu_us_per_request)
            print(
                f"  {name}: p50 added {added * 1000:+.1f} us (target < {P50_TARGET_MS * 1000:.0f} us) "
                f"{verdict(added < P50_TARGET_MS)}; c64 throughput {ratio:.3f} of auth off (target >= "
                f"{THROUGHPUT_TARGET}) {verdict(ratio >= THROUGHPUT_TARGET)}; server CPU per request "
                f"{cpu_added:+.1f} us, so {capacity:.3f} of auth off's capacity "
                f"{verdict(capacity >= THROUGHPUT_TARGET)}"
            )
        print(
            "  (requests/s and even CPU per request move with other work on this shared machine; the "
            "profile share below moves least)"
        )
        for server in servers[1:]:
            share = guard_share(server, args.seconds, workdir)
            if share is None:
                print(f"  {server.name}: no py-spy profile (py-spy not found, or not allowed to attach)")
            else:
                print(
                    f"  {server.name}: the guard's own share of the event loop's samples at c64: {share:.1%}, "
                    f"so about {1 - share:.3f} of auth off's throughput where the loop is the limit"
                )
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The real API server tier (issue 10): one control plane per session, a namespace per test.

Without the binaries (see docs/testing.md) every test here is skipped with one reason, and the
run prints one line saying so; with BERTH_REQUIRE_CLUSTER=1 (`make test-cluster`) their absence
is an error that says where we looked.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.support import ChartInstall, Cluster, install_chart, stop_all
from tests.support.crdcheck import httproute_crd
from tests.support.envtest import (
    CRD_DIR,
    Binaries,
    BinariesNotFound,
    ControlPlane,
    Kube,
    crd_documents,
    find_binaries,
)
from tests.support.gateway import GatewayController
from tests.support.kubelet import Kubelet, register_node

HERE = Path(__file__).resolve().parent
REQUIRE = os.environ.get("BERTH_REQUIRE_CLUSTER") == "1"

_found: Binaries | None = None
_missing: str | None = None
try:
    _found = find_binaries()
except BinariesNotFound as error:
    _missing = str(error)


def _in_tier(item: pytest.Item) -> bool:
    return HERE in Path(str(item.path)).resolve().parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tier = [item for item in items if _in_tier(item)]
    if not tier or _missing is None:
        return
    if REQUIRE:
        raise pytest.UsageError(
            f"BERTH_REQUIRE_CLUSTER=1 but the real API server tier cannot run: {_missing}"
        )
    skip = pytest.mark.skip(reason=f"real API server tier skipped: {_missing}")
    for item in tier:
        item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _missing is not None and not REQUIRE:
        terminalreporter.write_line(f"tests/cluster: real API server tier skipped: {_missing}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


def failed(item: pytest.Item) -> bool:
    return any(r.failed for r in item.stash.get(_REPORTS, {}).values())


# --------------------------------------------------------------------------- session


@pytest.fixture(scope="session")
def binaries() -> Binaries:
    assert _found is not None  # collection skipped the tier otherwise
    return _found


@pytest.fixture(scope="session")
def control_plane(binaries: Binaries) -> Iterator[ControlPlane]:
    crds = [*crd_documents(sorted(CRD_DIR.glob("*.yaml"))), httproute_crd()]
    plane = ControlPlane(binaries).start(crds)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Iterator[Kube]:
    client = control_plane.admin()
    register_node(client)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def session_dir(control_plane: ControlPlane) -> Path:
    """Logs, settings and kubeconfigs of the run, removed with the control plane's directory."""
    directory = control_plane.workdir / "cluster"
    directory.mkdir()
    return directory


@pytest.fixture(scope="session")
def install(control_plane: ControlPlane, kube: Kube, session_dir: Path) -> ChartInstall:
    return install_chart(control_plane, kube, session_dir)


# --------------------------------------------------------------------------- per test


@pytest.fixture()
def namespace(request: pytest.FixtureRequest, kube: Kube, control_plane: ControlPlane) -> Iterator[str]:
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{secrets.token_hex(3)}"
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    if not control_plane.has_controller_manager:
        # The serviceaccount controller makes it otherwise; Pod admission needs it.
        kube.create(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}, namespace=name
        )
    yield name
    kube.delete("Namespace", None, name)


@pytest.fixture()
def cluster(
    request: pytest.FixtureRequest,
    control_plane: ControlPlane,
    kube: Kube,
    namespace: str,
    install: ChartInstall,
    session_dir: Path,
) -> Iterator[Cluster]:
    workdir = session_dir / namespace
    workdir.mkdir()
    kubelet = Kubelet(kube, namespace).start()
    gateway = GatewayController(kube, namespace, install.gateway_namespace, install.gateway_name).start()
    env = Cluster(control_plane, kube, namespace, install, workdir, kubelet, gateway)
    try:
        yield env
    finally:
        left: list[str] = []
        if any(op.alive() for op in env.operators):
            left = env.delete_berth_objects()  # the operator's own deletion path, finalizers and all
        stop_all(env.operators)
        env.strip_finalizers()
        stop_all([*env.watchers, kubelet, gateway])
        if failed(request.node) or left:
            # Captured output: pytest shows it with the failure report.
            if left:
                print(f"still there after the operator was asked to delete them: {left}")
            for op in env.operators:
                print(f"----- operator log {op.log_path.name} (exit {op.process.popen.returncode}) -----")
                print(op.log())
            print("----- stand-in errors -----", *env.standin_errors(), sep="\n")


@pytest.fixture()
def needs_controller_manager(control_plane: ControlPlane) -> None:
    if not control_plane.has_controller_manager:
        pytest.skip(
            "kube-controller-manager not found (setup-envtest does not ship it): "
            "Deployments make no Pods and nothing is garbage-collected"
        )

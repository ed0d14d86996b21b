"""The Helm chart as a real API server takes it: every object of every tested value set admitted
(strict field validation, a dry-run create), after the chart's own CRDs are installed."""

from __future__ import annotations

import helm_python as helm
import pytest
import yaml

from tests.delivery.delivery_support import CHART_DIR, VALUE_SETS, objects, render
from tests.support.envtest import Kube, KubeError, crd_documents, install_crds

pytestmark = pytest.mark.timeout(120)
# Kinds of other projects the chart can render (their operators install the CRDs).
THIRD_PARTY = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("gateway.networking.k8s.io/v1", "Gateway"),
}


@pytest.fixture(scope="module")
def chart() -> helm.Chart:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_chart_object_is_admitted(kube: Kube, chart: helm.Chart, name: str) -> None:
    install_crds(kube, crd_documents(sorted((CHART_DIR / "crds").glob("*.yaml"))))  # kopf's peering CRDs too
    release_namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "berth-system"}}
    kube.apply(release_namespace)
    for extra in VALUE_SETS[name].get("watchNamespaces") or []:
        kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": extra}})
    admitted, skipped = [], []
    for obj in objects(render(chart, VALUE_SETS[name])):
        where = f"{obj['kind']} {obj['metadata']['name']}"
        if not kube.serves(obj["apiVersion"], obj["kind"]):
            assert (obj["apiVersion"], obj["kind"]) in THIRD_PARTY, f"{where}: kind not served here"
            skipped.append(where)
            continue
        try:
            kube.create(obj, dry_run=True)
        except KubeError as error:
            if error.status != 409:  # exists already (an earlier value set made it): admitted then
                raise AssertionError(f"{where} refused: {error}\n{yaml.safe_dump(obj)}") from None
        admitted.append(where)
    kinds = {w.split(" ", 1)[0] for w in admitted}
    assert {"Deployment", "ConfigMap", "ServiceAccount"} <= kinds, admitted

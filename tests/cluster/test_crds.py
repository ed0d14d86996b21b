"""The CRDs as a real API server takes them: Established, discoverable, every example admitted."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.crdcheck import httproute_crd
from tests.support.envtest import CRD_DIR, REPO, Kube, Manifest, crd_documents, established

pytestmark = pytest.mark.timeout(120)
EXAMPLES = REPO / "examples"
# Kinds of other projects' CRDs the examples use (installed with Envoy Gateway / Gateway API on kind).
THIRD_PARTY = {
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyProxy"),
    ("gateway.networking.k8s.io/v1", "GatewayClass"),
}


def test_crds_are_established_and_discoverable(kube: Kube) -> None:
    ours = crd_documents(sorted(CRD_DIR.glob("*.yaml")))
    assert len(ours) == 5
    for crd in [*ours, httproute_crd()]:
        found = kube.get("CustomResourceDefinition", None, crd["metadata"]["name"])
        assert established(found), (crd["metadata"]["name"], (found or {}).get("status"))
    served = kube.request("GET", "/apis/berth.dev/v1alpha1")["resources"]
    by_name = {r["name"]: r for r in served}
    expected = {
        "models": "bm",
        "endpointconfigs": "bec",
        "endpoints": "bep",
        "transformjobs": "btj",
        "monitoringschedules": "bms",
    }
    for plural, short in expected.items():
        assert by_name[plural]["shortNames"] == [short]
        assert by_name[plural]["categories"] == ["berth"]
        assert by_name[plural]["namespaced"] is True
        assert f"{plural}/status" in by_name, f"{plural} has no status subresource"


def example_documents() -> list[tuple[Path, Manifest]]:
    docs = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                docs.append((path, doc))  # Helm values files and the like are not objects
    return docs


def test_every_example_is_admitted(kube: Kube, namespace: str) -> None:
    """Applied as `kubectl apply --server-side` would: strict field validation, schema and CEL."""
    docs = sorted(example_documents(), key=lambda item: item[1]["kind"] != "Namespace")
    applied, skipped, made = [], [], []
    for path, doc in docs:
        where = f"{path.relative_to(REPO)}: {doc['kind']} {doc['metadata']['name']}"
        if not kube.serves(doc["apiVersion"], doc["kind"]):
            assert (doc["apiVersion"], doc["kind"]) in THIRD_PARTY, f"{where}: kind not served here"
            skipped.append(where)
            continue
        target = doc["metadata"].get("namespace") or namespace
        kind = kube.resource(doc["kind"], doc["apiVersion"])
        obj = kube.apply(doc, manager="kubectl", namespace=target if kind.namespaced else None)
        applied.append(where)
        made.append(
            (doc["kind"], doc["apiVersion"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
        )
    kinds = {doc["kind"] for _, doc in docs if doc["apiVersion"].startswith("berth.dev/")}
    assert kinds == {"Model", "EndpointConfig", "Endpoint", "MonitoringSchedule"}
    assert len(skipped) == 2, skipped
    for kind, api_version, ns, name in reversed(made):
        if kind != "Namespace":
            kube.delete(kind, ns, name, api_version=api_version)
    for kind, _, _, name in made:
        if kind == "Namespace":
            kube.delete("Namespace", None, name)

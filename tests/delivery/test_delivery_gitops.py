"""docs/gitops.md's Argo CD and Flux examples are complete: every object one names is shown."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.delivery.delivery_support import CHART_DIR, REPO

GITOPS_DOC = REPO / "docs" / "gitops.md"
CHART_VERSION = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["version"]


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    blocks = re.findall(r"```yaml\n(.*?)```", GITOPS_DOC.read_text(), flags=re.DOTALL)
    return [doc for block in blocks for doc in yaml.safe_load_all(block) if doc]


def named(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def test_flux_names_only_objects_it_shows(objects: list[dict[str, Any]]) -> None:
    sources = named(objects, "GitRepository")
    kustomizations = named(objects, "Kustomization")
    assert set(kustomizations) == {"berth", "fraud-endpoints"}
    for name, kustomization in kustomizations.items():
        ref = kustomization["spec"]["sourceRef"]
        assert ref["kind"] == "GitRepository" and ref["name"] in sources, name
        for dependency in kustomization["spec"].get("dependsOn", []):
            assert dependency["name"] in kustomizations, f"{name} depends on an unshown {dependency}"
    assert kustomizations["fraud-endpoints"]["spec"]["dependsOn"] == [{"name": "berth"}]
    assert kustomizations["berth"]["spec"]["wait"] is True, "Ready only once the HelmRelease is"


def test_flux_installs_the_published_chart(objects: list[dict[str, Any]]) -> None:
    [release] = named(objects, "HelmRelease").values()
    ref = release["spec"]["chartRef"]
    repository = named(objects, "OCIRepository")[ref["name"]]
    assert ref["kind"] == "OCIRepository"
    assert repository["spec"]["url"] == "oci://ghcr.io/berth-dev/charts/berth"
    assert repository["spec"]["ref"]["tag"] == CHART_VERSION
    assert release["spec"]["install"]["createNamespace"] is True, "berth-system is made"
    assert release["spec"]["releaseName"] == "berth"
    workflow = (REPO / ".github" / "workflows" / "release.yml").read_text()
    assert "CHART_REPOSITORY: oci://ghcr.io/berth-dev/charts\n" in workflow


def test_flux_endpoints_namespace_is_created() -> None:
    """targetNamespace must exist: the repository layout shown creates it."""
    text = GITOPS_DOC.read_text()
    assert "targetNamespace: fraud" in text
    assert re.search(r"namespace\.yaml\s+kind: Namespace, name: fraud", text)


def test_argocd_installs_the_published_chart(objects: list[dict[str, Any]]) -> None:
    applications = named(objects, "Application")
    berth = applications["berth"]["spec"]
    assert berth["source"] == {
        **berth["source"],
        "repoURL": "ghcr.io/berth-dev/charts",
        "chart": "berth",
        "targetRevision": CHART_VERSION,
    }
    [repository] = [
        obj["stringData"]
        for obj in objects
        if obj["kind"] == "Secret"
        and obj["metadata"]["labels"].get("argocd.argoproj.io/secret-type") == "repository"
    ]
    assert repository["url"] == berth["source"]["repoURL"]
    assert repository["type"] == "helm" and repository["enableOCI"] == "true"
    for name, application in applications.items():
        assert "CreateNamespace=true" in application["spec"]["syncPolicy"]["syncOptions"], name

"""Every object the planner makes must be one the API server admits.

Core kinds are checked with kubernetes-validate (strict: unknown fields fail) against
Kubernetes 1.30 and the newest schemas it bundles; HTTPRoutes against the Gateway API CRD and
ScaledObjects and HTTPScaledObjects against KEDA's, schema and CEL rules, through tests.support.crdcheck.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import kubernetes_validate

from tests.support.crdcheck import admit, httproute_crd, load_crd
from tests.support.testdata import KEDA_HTTPSCALEDOBJECT_CRD, KEDA_SCALEDOBJECT_CRD, data_file

KUBERNETES_VERSIONS = ("1.30", "1.33")


@cache
def _httproute_crd() -> dict[str, Any]:
    return httproute_crd()


@cache
def _scaledobject_crd() -> dict[str, Any]:
    return load_crd(data_file(KEDA_SCALEDOBJECT_CRD))


@cache
def _httpscaledobject_crd() -> dict[str, Any]:
    return load_crd(data_file(KEDA_HTTPSCALEDOBJECT_CRD))


def problems(obj: dict[str, Any]) -> list[str]:
    """Why the API server would refuse obj ([] = admitted)."""
    if obj["kind"] == "HTTPRoute":
        return admit(_httproute_crd(), obj)
    if obj["kind"] == "ScaledObject":
        return admit(_scaledobject_crd(), obj)
    if obj["kind"] == "HTTPScaledObject":
        return admit(_httpscaledobject_crd(), obj)
    found = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            found.append(f"{obj['kind']}/{obj['metadata']['name']} ({version}): {path}: {exc.message}")
    return found


def assert_admitted(objects: list[dict[str, Any]]) -> None:
    found = [p for obj in objects for p in problems(obj)]
    assert not found, "\n".join(found)

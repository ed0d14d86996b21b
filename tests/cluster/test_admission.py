"""The admission tables of tests/crds against the real API server: what they say it refuses, it
refuses with the same message; what they say it admits, it admits.

Each row is sent as a client sends it: created (strict field validation, as kubectl does), or
for update rows the old object created first and then replaced. The status of a kind with the
status subresource is never taken from a create, so a row with a status is created without it
and its status then written through the subresource, the only way a status reaches the server.
"""

from __future__ import annotations

import copy
import re

import pytest

from tests.crds import test_crds_admission as serving
from tests.crds import test_transformjob_admission as transform
from tests.crds.test_crds_admission import Row
from tests.support.envtest import Kube, KubeError, Manifest

pytestmark = pytest.mark.timeout(60)

BAD = serving.BAD + transform.BAD
GOOD = serving.GOOD + transform.GOOD


def placed(obj: Manifest, namespace: str) -> Manifest:
    out = copy.deepcopy(obj)
    out["metadata"] = {**out.get("metadata", {}), "namespace": namespace}
    return out


def send(kube: Kube, obj: Manifest, namespace: str, old: Manifest | None = None) -> None:
    resource = kube.resource(obj["kind"])  # the served version's URL, whatever apiVersion the body says
    obj = placed(obj, namespace)
    status = obj.pop("status", None)
    if old is not None:
        previous = placed(old, namespace)
        previous.pop("status", None)
        created = kube.create(previous)
        obj["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
        written = kube.replace(obj)
    else:
        written = kube.request(
            "POST", resource.path(namespace), body=obj, params={"fieldValidation": "Strict"}
        )
    if status is not None:
        obj["metadata"]["resourceVersion"] = written["metadata"]["resourceVersion"]
        kube.replace({**obj, "status": status}, sub="status")


def verdict(kube: Kube, row: Row, namespace: str) -> str | None:
    """None when admitted, else the API server's message."""
    try:
        send(kube, row.obj, namespace, row.old)
    except KubeError as error:
        if error.status in (400, 422):
            return error.message
        raise
    return None


# Rows whose expected words the real server does not use. crdcheck (tests/support/crdcheck.py)
# words these errors, and the rows expect its words; kube-apiserver says them otherwise. Each is a
# strict xfail: it turns red the day the table and crdcheck say what the server says.
# KIND-row id -> (first kube-apiserver minor that differs, what it answers instead)
IN_BODY_MINIMUM = (
    "numeric bounds: crdcheck words them 'Invalid value: V: must be greater/less than or equal to N', "
    "kube-apiserver 'Invalid value: V: FIELD in body should be greater/less than or equal to N'"
)
KNOWN_DIFFERENCES: dict[str, tuple[int, str]] = {
    "EndpointConfig-negative-weight": (0, IN_BODY_MINIMUM),
    "EndpointConfig-autoscaling-cpu-over-100": (0, IN_BODY_MINIMUM),
    "Endpoint-canary-over-100": (0, IN_BODY_MINIMUM),
    "Endpoint-timeout-under-a-minute": (0, IN_BODY_MINIMUM),
    "TransformJob-payload-zero": (0, IN_BODY_MINIMUM),
    "TransformJob-instance-count-zero": (0, IN_BODY_MINIMUM),
    "EndpointConfig-zero-variants": (
        0,
        "minItems: crdcheck 'Invalid value: 0: must have at least 1 items', kube-apiserver "
        "'Invalid value: 0: spec.productionVariants in body should have at least 1 items'",
    ),
    "EndpointConfig-resource-quantity-float": (
        0,
        "map entries: crdcheck names the field 'resources.limits[cpu]', kube-apiserver "
        "'resources.limits.cpu' ('Invalid value: \"number\": ... must be of type integer,string: \"number\"')",
    ),
    "EndpointConfig-autoscaling-min-over-max": (
        35,
        "CEL rule on an object: crdcheck 'autoscaling: Invalid value: \"object\": MSG', kube-apiserver "
        "1.35+ (kubernetes#133832) 'autoscaling: Invalid value: MSG' (MSG, api.MSG_AUTOSCALING_BOUNDS, matches)",
    ),
    "Model-wrong-api-version": (
        0,
        "the row expects 'apiVersion' in the message; kube-apiserver answers 'the API version in the data "
        "(berth.dev/v1) does not match the expected API version (berth.dev/v1alpha1)', and kubectl refuses "
        'it before sending: no matches for kind "Model" in version "berth.dev/v1"',
    ),
}


def server_minor(kube: Kube) -> int:
    return int(re.match(r"\d+", kube.request("GET", "/version")["minor"]).group())  # type: ignore[union-attr]


def expect_known_difference(request: pytest.FixtureRequest, kube: Kube, row: Row) -> None:
    known = KNOWN_DIFFERENCES.get(row_id(row))
    if known is not None and server_minor(kube) >= known[0]:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"issue 10: row {row_id(row)}: {known[1]}"))


def row_id(row: Row) -> str:
    return f"{row.obj['kind']}-{row.id}"


@pytest.mark.parametrize("row", BAD, ids=row_id)
def test_refused_rows_are_refused_with_the_same_message(
    request: pytest.FixtureRequest, kube: Kube, namespace: str, row: Row
) -> None:
    expect_known_difference(request, kube, row)
    message = verdict(kube, row, namespace)
    assert message is not None, "admitted by the API server"
    assert row.refused_with is not None
    assert row.refused_with in message, message


@pytest.mark.parametrize("row", GOOD, ids=row_id)
def test_admitted_rows_are_admitted(kube: Kube, namespace: str, row: Row) -> None:
    assert verdict(kube, row, namespace) is None

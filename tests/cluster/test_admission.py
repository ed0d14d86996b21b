"""The admission tables of tests/crds against the real API server: what they say it refuses, it
refuses with the same message; what they say it admits, it admits.

Each row is sent as a client sends it: created (strict field validation, as kubectl does), or
for update rows the old object created first and then replaced. The status of a kind with the
status subresource is never taken from a create, so a row with a status is created without it
and its status then written through the subresource, the only way a status reaches the server.
"""

from __future__ import annotations

import copy

import pytest

from tests.crds import test_async_admission as async_
from tests.crds import test_capture_admission as capture
from tests.crds import test_crds_admission as serving
from tests.crds import test_monitoring_admission as monitoring
from tests.crds import test_serverless_admission as serverless
from tests.crds import test_transformjob_admission as transform
from tests.crds.test_crds_admission import Row
from tests.support.envtest import Kube, KubeError, Manifest

pytestmark = pytest.mark.timeout(60)

BAD = serving.BAD + transform.BAD + async_.BAD + serverless.BAD + capture.BAD + monitoring.BAD
GOOD = serving.GOOD + transform.GOOD + async_.GOOD + serverless.GOOD + capture.GOOD + monitoring.GOOD


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


def row_id(row: Row) -> str:
    return f"{row.obj['kind']}-{row.id}"


def assert_refused_by_server(kube: Kube, namespace: str, row: Row) -> None:
    """The API server refuses the row with the message the offline tier expects."""
    message = verdict(kube, row, namespace)
    assert message is not None, "admitted by the API server"
    assert row.refused_with is not None
    assert row.refused_with in message, message


@pytest.mark.parametrize("row", BAD, ids=row_id)
def test_refused_rows_are_refused_with_the_same_message(kube: Kube, namespace: str, row: Row) -> None:
    assert_refused_by_server(kube, namespace, row)


@pytest.mark.parametrize("row", GOOD, ids=row_id)
def test_admitted_rows_are_admitted(kube: Kube, namespace: str, row: Row) -> None:
    assert verdict(kube, row, namespace) is None

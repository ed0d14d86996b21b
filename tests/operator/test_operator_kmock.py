"""The KMock fixes the operator tests rely on (see tests/support/kmockk8s.py)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.operator.builders import model
from tests.support.kmockk8s import KMockCluster, api_path

pytestmark = pytest.mark.timeout(30)


def test_create_sets_identity_and_namespace_from_the_url(cluster: KMockCluster):
    body = model("m")
    del body["metadata"]["namespace"]
    created = cluster.http.post(api_path("Model", "ml"), json=body).json()
    meta = created["metadata"]
    assert meta["namespace"] == "ml" and meta["uid"] and meta["generation"] == 1
    assert int(meta["resourceVersion"]) > 0
    assert cluster.list("Model", "ml")[0]["metadata"]["name"] == "m"


def test_updates_bump_resource_version_and_spec_changes_bump_generation(cluster: KMockCluster):
    first = cluster.create(model("m"))["metadata"]
    labelled = cluster.patch("Model", "ml", "m", {"metadata": {"labels": {"a": "b"}}})["metadata"]
    assert int(labelled["resourceVersion"]) > int(first["resourceVersion"]) and labelled["generation"] == 1
    respecced = cluster.patch("Model", "ml", "m", {"spec": {"sha256": "b" * 64}})["metadata"]
    assert respecced["generation"] == 2
    status = cluster.patch("Model", "ml", "m", {"status": {"observedGeneration": 2}}, "status")["metadata"]
    assert status["generation"] == 2
    listed = cluster.http.get(api_path("Model", "ml")).json()
    assert listed["metadata"]["resourceVersion"] == status["resourceVersion"]


def test_failed_json_patch_test_is_422(cluster: KMockCluster):
    rv = cluster.create(model("m"))["metadata"]["resourceVersion"]
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "stale"},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
    ]
    headers = {"Content-Type": "application/json-patch+json"}
    response = cluster.http.patch(api_path("Model", "ml", "m"), content=json.dumps(ops), headers=headers)
    assert response.status_code == 422
    ops[0]["value"] = rv
    response = cluster.http.patch(api_path("Model", "ml", "m"), content=json.dumps(ops), headers=headers)
    assert response.status_code == 200 and response.json()["metadata"]["finalizers"] == ["x"]


def test_watch_from_a_resource_version_sends_only_later_changes(cluster: KMockCluster):
    cluster.create(model("old"))
    rv = cluster.http.get(api_path("Model", "ml")).json()["metadata"]["resourceVersion"]
    cluster.create(model("new"))
    cluster.delete("Model", "ml", "old")
    events = []
    params = {"watch": "true", "resourceVersion": rv}
    with httpx.stream("GET", cluster.url + api_path("Model", "ml"), params=params, timeout=5) as stream:
        for line in stream.iter_lines():
            if line.strip():
                events.append(json.loads(line))
            if len(events) == 2:
                break
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "new"),
        ("DELETED", "old"),
    ]


def test_finalizer_blocks_deletion_until_removed(cluster: KMockCluster):
    body = model("m")
    body["metadata"]["finalizers"] = ["berth.dev/finalizer"]
    cluster.create(body)
    cluster.delete("Model", "ml", "m")
    assert cluster.get("Model", "ml", "m")["metadata"]["deletionTimestamp"]
    cluster.patch("Model", "ml", "m", {"metadata": {"finalizers": None}})
    assert cluster.get("Model", "ml", "m") is None

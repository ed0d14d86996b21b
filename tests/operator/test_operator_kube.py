"""The operator's async Kubernetes client against KMock: verbs, status, events, label filtering."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator

import kmock
import kopf
import pytest
from berth_operator.kube import RESOURCES, KubeClient, resource_kind

from tests.operator.builders import model
from tests.support.kmockk8s import LoopThread

pytestmark = pytest.mark.timeout(30)
MODELS = RESOURCES[("berth.dev/v1alpha1", "Model")]


@contextlib.contextmanager
def plain_kmock() -> Iterator[tuple[LoopThread, kmock.KubernetesEmulator, KubeClient]]:
    """Unmodified KMock, which ignores label selectors: the client must filter by itself."""
    loop = LoopThread("plain-kmock")
    stack = contextlib.AsyncExitStack()

    async def start() -> tuple[kmock.KubernetesEmulator, KubeClient]:
        handler = kmock.KubernetesEmulator()
        handler.resources["berth.dev/v1alpha1/models"] = kmock.ResourceInfo(kind="Model", namespaced=True)
        handler.resources.load_bundled()
        await stack.enter_async_context(handler)
        await stack.enter_async_context(kmock.Server(handler))
        client = KubeClient(kopf.ConnectionInfo(server=str(handler.url), insecure=True))
        return handler, client

    handler, client = loop.run(start())
    try:
        yield loop, handler, client
    finally:
        loop.run(client.close())
        loop.run(stack.aclose())
        loop.stop()


def labelled(name: str, **labels: str) -> dict:
    body = model(name)
    body["metadata"]["labels"] = labels
    return body


def test_list_filters_by_labels_even_when_the_server_does_not():
    with plain_kmock() as (loop, _, client):
        loop.run(client.create(labelled("a", **{"berth.dev/endpoint": "ep"})))
        loop.run(client.create(labelled("b", **{"berth.dev/endpoint": "other"})))
        loop.run(client.create(labelled("c")))
        everything = loop.run(client.list_objects(MODELS, "ml"))
        mine = loop.run(client.list_objects(MODELS, "ml", {"berth.dev/endpoint": "ep"}))
    assert len(everything) == 3
    assert [m["metadata"]["name"] for m in mine] == ["a"]
    assert mine[0]["kind"] == "Model" and mine[0]["apiVersion"] == "berth.dev/v1alpha1"


def test_get_patch_status_delete_and_events(cluster):
    async def scenario() -> dict:
        client = KubeClient(kopf.ConnectionInfo(server=cluster.url, insecure=True))
        try:
            created = await client.create(model("m"))
            await client.merge_patch(MODELS, "ml", "m", {"metadata": {"labels": {"x": "1"}}})
            await client.merge_patch(MODELS, "ml", "m", {"metadata": {"annotations": {"a": "b"}}})
            await client.patch_status(MODELS, "ml", "m", {"observedGeneration": 1})
            current = await client.get(MODELS, "ml", "m")
            await client.post_event(created, "Normal", "Tested", "an event about the Model")
            gone = await client.delete(MODELS, "ml", "m")
            again = await client.delete(MODELS, "ml", "m")
            missing = await client.get(MODELS, "ml", "m")
            status_of_gone = await client.patch_status(MODELS, "ml", "m", {"observedGeneration": 2})
            return {
                "current": current,
                "gone": gone,
                "again": again,
                "missing": missing,
                "status_of_gone": status_of_gone,
            }
        finally:
            await client.close()

    loop = LoopThread("client")
    try:
        result = loop.run(scenario())
    finally:
        loop.stop()
    current = result["current"]
    assert current["metadata"]["labels"] == {"x": "1"} and current["metadata"]["annotations"] == {"a": "b"}
    assert current["status"] == {"observedGeneration": 1}
    assert result["gone"] is True and result["again"] is False and result["missing"] is None
    assert result["status_of_gone"] is None  # deleted while a reconcile ran: nothing to write, no error
    event = cluster.list("Event", "ml")[0]
    assert event["involvedObject"]["name"] == "m" and event["reason"] == "Tested"


def test_server_side_apply_creates_then_changes_and_drops_fields(cluster):
    async def scenario() -> tuple[dict, dict, int]:
        client = KubeClient(kopf.ConnectionInfo(server=cluster.url, insecure=True))
        try:
            body = model("m")
            body["metadata"]["labels"] = {"a": "1", "b": "2"}
            created = await client.apply(body)
            body["metadata"]["labels"] = {"a": "1"}  # b is no longer set: it goes
            changed = await client.apply(body)
            return created, changed, client.requests
        finally:
            await client.close()

    loop = LoopThread("client")
    try:
        created, changed, requests = loop.run(scenario())
    finally:
        loop.stop()
    assert created["metadata"]["labels"] == {"a": "1", "b": "2"}
    assert changed["metadata"]["labels"] == {"a": "1"}
    assert requests == 2
    patches = [r for r in cluster.requests_since(0) if r.method.value == "PATCH"]
    assert len(patches) == 2
    for patch in patches:
        assert patch.headers["Content-Type"] == "application/apply-patch+yaml"
        assert dict(patch.url.query) == {
            "fieldManager": "berth-operator",
            "force": "true",
            "fieldValidation": "Strict",
        }


def test_resource_table_paths():
    assert (
        resource_kind("apps/v1", "Deployment").path("ml", "d") == "/apis/apps/v1/namespaces/ml/deployments/d"
    )
    assert resource_kind("v1", "Pod").path("ml") == "/api/v1/namespaces/ml/pods"
    assert RESOURCES[("berth.dev/v1alpha1", "Endpoint")].path("ml", "e", "status") == (
        "/apis/berth.dev/v1alpha1/namespaces/ml/endpoints/e/status"
    )
    with pytest.raises(ValueError, match="unknown kind"):
        resource_kind("v1", "Secret")


def test_the_pod_view_keeps_everything_the_planner_reads():
    """The pods index keeps a view of each pod (hundreds are held in memory): every decision made
    from a whole pod is made the same from its view."""
    from berth_operator.handlers import pod_view
    from berth_operator.planner.podfailures import pod_failures, pods_stuck_starting
    from berth_operator.planner.transform import record_counts
    from berth_operator.scrape import pod_is_running, pod_metrics_url

    labels = {"berth.dev/endpoint": "ep", "berth.dev/endpoint-config": "c", "berth.dev/variant": "v"}
    terminated = {"exitCode": 1, "reason": "Error", "message": "403 Forbidden from s3://m"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "namespace": "ml",
            "labels": labels,
            "annotations": {"batch.kubernetes.io/job-completion-index": "0"},
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "managedFields": [{"manager": "kubelet"}],
        },
        "spec": {
            "containers": [
                {"name": "server", "image": "x", "ports": [{"name": "http", "containerPort": 8081}]}
            ],
            "volumes": [{"name": "model", "emptyDir": {}}],
        },
        "status": {
            "phase": "Pending",
            "podIP": "127.0.0.9",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ],
            "initContainerStatuses": [
                {"name": "storage-initializer", "lastState": {"terminated": terminated}}
            ],
            "containerStatuses": [{"name": "server", "state": {"waiting": {"reason": "PodInitializing"}}}],
        },
    }
    view = pod_view(pod)
    assert "volumes" not in view["spec"] and "managedFields" not in view["metadata"]
    models = {("c", "v"): "m"}
    assert pod_failures([view], "ep", models) == pod_failures([pod], "ep", models) != []
    later = datetime.datetime(2026, 1, 1, 1, tzinfo=datetime.UTC)
    assert pods_stuck_starting([view], later) == pods_stuck_starting([pod], later)
    assert pod_metrics_url(view) == pod_metrics_url(pod) == "http://127.0.0.9:8081/metrics"
    assert pod_is_running(view) == pod_is_running(pod)
    assert record_counts([view], 1) == record_counts([pod], 1)

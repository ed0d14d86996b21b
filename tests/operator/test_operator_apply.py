"""The pure diffing of desired children and status against what the API server returns."""

from __future__ import annotations

from berth_operator.apply import child_patch, diff_children, is_subset, status_patch
from berth_operator.planner.types import ObjectRef


def deployment(replicas: int = 2, image: str = "img:1", **meta: object) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "ml", "labels": {"a": "b"}, **meta},
        "spec": {
            "replicas": replicas,
            "template": {
                "spec": {"containers": [{"name": "c", "image": image, "ports": [{"containerPort": 8080}]}]}
            },
        },
    }


def defaulted(obj: dict) -> dict:
    """What an API server returns: our fields plus its defaults and bookkeeping."""
    out = {
        **obj,
        "metadata": {**obj["metadata"], "uid": "u", "resourceVersion": "7", "annotations": {"x": "y"}},
    }
    container = dict(obj["spec"]["template"]["spec"]["containers"][0])
    container.update(imagePullPolicy="IfNotPresent", terminationMessagePath="/dev/termination-log")
    container["ports"] = [{**p, "protocol": "TCP"} for p in container["ports"]]
    out["spec"] = {
        **obj["spec"],
        "revisionHistoryLimit": 10,
        "template": {"spec": {"containers": [container], "restartPolicy": "Always"}},
    }
    out["status"] = {"readyReplicas": 2}
    return out


def test_defaults_added_by_the_server_cause_no_patch():
    desired = deployment()
    assert is_subset(desired["spec"], defaulted(desired)["spec"])
    assert child_patch(desired, defaulted(desired)) is None


def test_changed_field_patches_only_what_differs():
    observed = defaulted(deployment(replicas=2))
    patch = child_patch(deployment(replicas=3), observed)
    assert patch == {"spec": {"replicas": 3}}


def test_changed_list_item_replaces_the_list():
    observed = defaulted(deployment(image="img:1"))
    patch = child_patch(deployment(image="img:2"), observed)
    assert patch is not None
    assert patch["spec"]["template"]["spec"]["containers"][0]["image"] == "img:2"


def test_labels_are_owned_other_metadata_is_not():
    observed = defaulted(deployment())
    assert child_patch(deployment(labels={"a": "c"}), observed) == {"metadata": {"labels": {"a": "c"}}}


def test_integer_and_float_weights_compare_equal():
    assert is_subset({"weight": 1}, {"weight": 1.0})
    assert not is_subset({"weight": 1}, {"weight": True})


def test_status_patch_sets_changes_and_removes_what_is_gone():
    observed = {"phase": "Updating", "rollout": {"step": 1}, "url": "u"}
    desired = {"phase": "InService", "url": "u"}
    assert status_patch(observed, desired) == {"phase": "InService", "rollout": None}
    assert status_patch(desired, desired) is None


def test_diff_children_creates_patches_and_deletes():
    existing = defaulted(deployment())
    stale = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "old", "namespace": "ml"}}
    new = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "new", "namespace": "ml"}, "spec": {}}
    actions = diff_children(
        [deployment(replicas=5), new],
        [ObjectRef("v1", "Service", "old", "ml"), ObjectRef("v1", "Service", "gone", "ml")],
        [existing, stale],
    )
    assert [o["metadata"]["name"] for o in actions.create] == ["new"]
    assert [p for _, p in actions.patch] == [{"spec": {"replicas": 5}}]
    assert [r.name for r in actions.delete] == ["old"]  # already gone: nothing to delete

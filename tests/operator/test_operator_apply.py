"""Which planned children need a server-side apply, and the status patch (pure)."""

from __future__ import annotations

from berth_operator.apply import DIGEST_ANNOTATION, applied, needs_apply, status_patch
from berth_operator.planner.observe import is_subset


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
    """What an API server returns after an apply of obj: our fields (and digest) plus its defaults,
    its bookkeeping and others' annotations."""
    obj = applied(obj)
    annotations = {**obj["metadata"]["annotations"], "x": "y"}
    out = {
        **obj,
        "metadata": {**obj["metadata"], "uid": "u", "resourceVersion": "7", "annotations": annotations},
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


def test_defaults_added_by_the_server_cause_no_write():
    desired = deployment()
    assert is_subset(desired["spec"], defaulted(desired)["spec"])
    assert not needs_apply(desired, defaulted(desired))
    assert needs_apply(desired, None)


def test_a_changed_plan_is_applied():
    assert needs_apply(deployment(replicas=3), defaulted(deployment(replicas=2)))
    assert needs_apply(deployment(image="img:2"), defaulted(deployment(image="img:1")))
    assert needs_apply(deployment(labels={"a": "c"}), defaulted(deployment()))


def test_a_field_the_plan_stops_setting_is_applied_so_the_server_removes_it():
    # Subset diffs never noticed this: a nodeSelector key or a limit the plan dropped stayed forever.
    with_selector = deployment()
    with_selector["spec"]["template"]["spec"]["nodeSelector"] = {"pool": "gpu"}
    assert needs_apply(deployment(), defaulted(with_selector))


def test_drift_on_a_field_we_set_is_applied_back():
    observed = defaulted(deployment(replicas=2))
    observed["spec"]["replicas"] = 7  # someone scaled it by hand
    assert needs_apply(deployment(replicas=2), observed)


def test_an_empty_value_the_server_drops_is_not_drift():
    # `value: ""` is stored without `value`: the old diff patched such an env var forever.
    desired = deployment()
    desired["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "EMPTY", "value": ""}]
    observed = defaulted(desired)
    observed["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "EMPTY"}]
    assert not needs_apply(desired, observed)


def test_the_digest_is_stamped_and_stable():
    first, second = applied(deployment()), applied(deployment())
    assert (
        first["metadata"]["annotations"][DIGEST_ANNOTATION]
        == second["metadata"]["annotations"][DIGEST_ANNOTATION]
    )
    assert (
        applied(deployment(replicas=3))["metadata"]["annotations"][DIGEST_ANNOTATION]
        != (first["metadata"]["annotations"][DIGEST_ANNOTATION])
    )
    assert "annotations" not in deployment()["metadata"]  # the plan itself is left as it was


def test_integer_and_float_weights_compare_equal():
    assert is_subset({"weight": 1}, {"weight": 1.0})
    assert not is_subset({"weight": 1}, {"weight": True})


def test_status_patch_sets_changes_and_removes_what_is_gone():
    observed = {"phase": "Updating", "rollout": {"step": 1}, "url": "u"}
    desired = {"phase": "InService", "url": "u"}
    assert status_patch(observed, desired) == {"phase": "InService", "rollout": None}
    assert status_patch(desired, desired) is None

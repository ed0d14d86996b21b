"""A TransformJob over one model of a MultiModel Model (spec.targetModel): its Job fetches
PREFIX + targetModel like any model; a targetModel that does not fit the Model fails the
TransformJob with a reason that says which way."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
from berth_operator.api import Model
from berth_operator.planner.transform import plan_transform_job
from berth_serving.cli import fetch_model

from tests.transform.test_planner import NS, SETTINGS, model, observed, planned_job, transform_job

PREFIX = "s3://models/customers/"


def multi(**spec: Any) -> Model:
    body = {"modelUri": PREFIX, "mode": "MultiModel", "credentialsSecretRef": {"name": "s3-creds"}, **spec}
    return Model.model_validate(
        {"kind": "Model", "metadata": {"name": "fraud-v1", "namespace": NS}, "spec": body}
    )


def test_the_job_fetches_the_target_model_under_the_prefix() -> None:
    job = planned_job(
        transform_job(targetModel="eu/customer-17.tar.gz"), multi(runtime={"intraOpThreads": 2})
    )
    kubernetes_validate.validate(job, "1.30", strict=True)
    pod = job["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    assert init["args"][:2] == ["fetch-model", PREFIX + "eu/customer-17.tar.gz"]
    # No digest in the spec: fetch-model checks the NAME.sha256 beside the model, as the server does.
    assert "--sha256" not in init["args"] and "--sha256-beside" in init["args"]
    assert init["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    [container] = pod["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    args = container["args"]
    assert args[args.index("--intra-op-threads") + 1] == "2"  # the Model's runtime settings apply


def test_the_init_containers_arguments_are_fetch_models() -> None:
    """The planned command line parses with the real `berth fetch-model` (nothing is fetched)."""
    job = planned_job(transform_job(targetModel="customer-17.onnx"), multi())
    [init] = job["spec"]["template"]["spec"]["initContainers"]
    context = fetch_model.make_context("fetch-model", init["args"][1:])
    assert context.params["uri"] == PREFIX + "customer-17.onnx"
    assert context.params["sha256_beside"] is True


def test_a_single_model_job_checks_no_digest_beside() -> None:
    [init] = planned_job()["spec"]["template"]["spec"]["initContainers"]
    assert "--sha256-beside" not in init["args"]


def test_a_multi_model_model_needs_a_target_model() -> None:
    plan = plan_transform_job(transform_job(), multi(), SETTINGS, observed())
    assert plan.job is None
    assert plan.status.phase == "Failed"
    failed = next(c for c in plan.status.conditions if c.type == "Failed")
    assert (failed.status, failed.reason) == ("True", "TargetModelRequired")
    assert "set targetModel" in failed.message and PREFIX in failed.message
    assert [e.reason for e in plan.events] == ["Failed"]


def test_a_single_model_model_refuses_a_target_model() -> None:
    plan = plan_transform_job(transform_job(targetModel="customer-17.onnx"), model(), SETTINGS, observed())
    assert plan.job is None
    assert plan.status.phase == "Failed"
    failed = next(c for c in plan.status.conditions if c.type == "Failed")
    assert (failed.status, failed.reason) == ("True", "TargetModelUnexpected")
    assert "targetModel customer-17.onnx" in failed.message and "SingleModel" in failed.message

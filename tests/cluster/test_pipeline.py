"""Inference pipelines on a real API server: the admission rows of
tests/crds/test_pipeline_admission.py refused with the same words (the CRD's CEL rules within
the server's cost budget, which an offline check cannot prove); a pipeline Endpoint's
Deployment makes pods (the Deployment controller's) with a storage-initializer per ONNX stage,
the image stage as a native sidecar, and the server told the stages in BERTH_PIPELINE."""

from __future__ import annotations

import json
from typing import Any

import pytest
from berth_serving.config import ENV

from tests.cluster.support import Cluster
from tests.cluster.test_admission import assert_refused_by_server, row_id, verdict
from tests.crds import test_pipeline_admission as rows
from tests.crds.test_crds_admission import Row
from tests.operator.builders import config, endpoint, variant
from tests.support import kubelet
from tests.support.envtest import Kube, Manifest

needs_controller_manager = pytest.mark.usefixtures("needs_controller_manager")
MODEL_LABEL = "berth.dev/model"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("row", rows.BAD, ids=row_id)
def test_refused_rows_are_refused_with_the_same_message(kube: Kube, namespace: str, row: Row) -> None:
    assert_refused_by_server(kube, namespace, row)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("row", rows.GOOD, ids=row_id)
def test_admitted_rows_are_admitted(kube: Kube, namespace: str, row: Row) -> None:
    assert verdict(kube, row, namespace) is None


def risk() -> Manifest:
    found: dict[str, Any] = rows.pipeline(
        {"name": "scale", **rows.SCALER},
        {"name": "classify", **rows.CLASSIFIER},
        {"name": "post", **rows.POSTPROCESS},
    )
    return found


@needs_controller_manager
@pytest.mark.timeout(180)
def test_pipeline_pods_fetch_each_stage_and_run_the_image_beside_the_server(cluster: Cluster) -> None:
    cluster.start_operator()
    cluster.create(risk())
    cluster.create(config("cfg1", variant("blue", "risk")))
    cluster.create(endpoint("ep", "cfg1"))
    cluster.wait_in_service()
    [deployment] = cluster.children("Deployment")
    pods = cluster.list("Pod", deployment["spec"]["selector"]["matchLabels"])
    assert len(pods) == 1
    spec = pods[0]["spec"]
    init = {c["name"]: c for c in spec.get("initContainers", [])}
    fetched = sorted(c["args"][1] for name, c in init.items() if c.get("args", [""])[0] == "fetch-model")
    assert fetched == sorted([rows.SCALER["modelUri"], rows.CLASSIFIER["modelUri"]])
    [sidecar] = [c for c in init.values() if c.get("restartPolicy") == "Always"]
    assert sidecar["image"] == rows.POSTPROCESS["image"]
    assert any(p["containerPort"] == rows.POSTPROCESS["port"] for p in sidecar.get("ports", []))
    [server] = [c for c in spec["containers"] if c["name"] == "server"]
    env = {e["name"]: e.get("value") for e in server.get("env", [])}
    stages = json.loads(env[ENV["pipeline"]])
    assert [s["name"] for s in stages] == ["scale", "classify", "post"]
    assert stages[2]["url"] == f"http://127.0.0.1:{rows.POSTPROCESS['port']}"
    assert stages[1]["outputs"] == ["probabilities"]
    assert cluster.operator.errors() == []


REFUSED = (
    "pipeline wiring refused: stage 'scale' cannot feed stage 'classify': dimension 1 is 4, not 5;"
    " 'scale' gives x float32[N,4], 'classify' takes x float32[N,5]"
)


@needs_controller_manager
@pytest.mark.timeout(180)
def test_a_refused_wiring_is_on_the_models_ready_condition_until_it_serves(cluster: Cluster) -> None:
    cluster.kubelet.behave(kubelet.crash_loop(REFUSED), {MODEL_LABEL: "risk"})
    cluster.start_operator()
    cluster.create(risk())
    cluster.create(config("cfg1", variant("blue", "risk")))
    cluster.create(endpoint("ep", "cfg1"))

    def model_ready() -> Manifest:
        status = cluster.status("Model", "risk")
        return next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})

    refused = cluster.wait(
        lambda: c if (c := model_ready()).get("reason") == "WiringRefused" else None,
        "the Model says its wiring was refused",
    )
    assert refused["status"] == "False" and refused["message"] == REFUSED

    # The pods serve once fixed (here: the stand-in kubelet says so, and the old pod goes).
    cluster.kubelet.behave(kubelet.ready(), {MODEL_LABEL: "risk"})
    for pod in cluster.list("Pod", {MODEL_LABEL: "risk"}):
        cluster.delete("Pod", pod["metadata"]["name"])
    cluster.wait(lambda: model_ready().get("reason") == "Accepted", "the Model is Ready again")
    assert model_ready()["status"] == "True"
    assert cluster.operator.forbidden() == []

"""Model and EndpointConfig status: Ready conditions and observedGeneration, with kopf against KMock."""

from __future__ import annotations

import pytest

from tests.operator.builders import NS, config, model, variant
from tests.support.kmockk8s import KMockCluster, wait_for

pytestmark = pytest.mark.timeout(60)


def ready(cluster: KMockCluster, kind: str, name: str) -> dict | None:
    obj = cluster.get(kind, NS, name)
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), None)


def test_model_gets_ready_condition_and_observed_generation(cluster, start_operator):
    start_operator()
    cluster.create(model("fraud-v1"))
    condition = wait_for(lambda: ready(cluster, "Model", "fraud-v1"), message="Model Ready")
    assert condition["status"] == "True"
    status = cluster.get("Model", NS, "fraud-v1")["status"]
    assert status["observedGeneration"] == 1


def test_config_names_missing_model_then_heals(cluster, start_operator):
    start_operator()
    cluster.create(config("cfg", variant("a", "m-a"), variant("b", "m-b")))
    cluster.create(model("m-a"))
    condition = wait_for(
        lambda: (c := ready(cluster, "EndpointConfig", "cfg")) and c["reason"] == "ModelNotFound" and c,
        message="ModelNotFound",
    )
    assert condition["status"] == "False"
    assert "m-b" in condition["message"] and "m-a" not in condition["message"]

    cluster.create(model("m-b"))
    condition = wait_for(
        lambda: (c := ready(cluster, "EndpointConfig", "cfg")) and c["status"] == "True" and c,
        message="config Ready after the Model appears",
    )
    assert condition["reason"] == "ModelsFound"
    assert cluster.get("EndpointConfig", NS, "cfg")["status"]["observedGeneration"] == 1


def test_observed_generation_follows_spec_changes(cluster, start_operator):
    start_operator()
    cluster.create(model("fraud"))
    wait_for(lambda: ready(cluster, "Model", "fraud"), message="Model Ready")
    # Admission refuses Model spec changes in a real cluster; KMock does not, which lets us
    # check that observedGeneration follows metadata.generation.
    cluster.patch("Model", NS, "fraud", {"spec": {"sha256": "a" * 64}})
    wait_for(
        lambda: cluster.get("Model", NS, "fraud")["status"]["observedGeneration"] == 2,
        message="observedGeneration 2",
    )


def test_invalid_config_is_not_ready_with_the_reason(cluster, start_operator):
    start_operator()
    cluster.create(model("m"))
    cluster.create(config("dup", variant("a", "m"), variant("a", "m")))
    condition = wait_for(lambda: ready(cluster, "EndpointConfig", "dup"), message="Ready condition")
    assert condition["status"] == "False" and condition["reason"] == "InvalidSpec"
    assert "unique" in condition["message"]

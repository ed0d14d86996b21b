"""Model and EndpointConfig status from the planner: Ready condition, reasons, observedGeneration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from berth_operator.planner import config_status, model_status
from berth_operator.planner.resources import config_model_names

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)
SHA = "a" * 64


def model(name: str = "m1", generation: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name, "namespace": "prod", "generation": generation},
        "spec": {"modelUri": f"s3://models/{name}.onnx", "sha256": SHA, **spec},
    }


def config(*variants: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "EndpointConfig",
        "metadata": {"name": "cfg", "namespace": "prod", "generation": generation},
        "spec": {"productionVariants": list(variants)},
    }


def variant(name: str, model_name: str) -> dict[str, Any]:
    return {
        "variantName": name,
        "modelName": model_name,
        "instanceType": "cpu-small",
        "initialInstanceCount": 1,
        "initialVariantWeight": 1,
    }


def ready(status: dict[str, Any]) -> dict[str, Any]:
    (condition,) = status["conditions"]
    assert condition["type"] == "Ready"
    return condition


def test_valid_model_is_ready_accepted() -> None:
    status = model_status(model(), NOW)
    assert status["observedGeneration"] == 1
    assert ready(status) == {
        "type": "Ready",
        "status": "True",
        "reason": "Accepted",
        "message": "",
        "lastTransitionTime": "2026-03-01T12:00:00.000000Z",
        "observedGeneration": 1,
    }


def test_invalid_model_is_not_ready_and_names_the_field() -> None:
    condition = ready(model_status(model(sha256="short"), NOW))
    assert (condition["status"], condition["reason"]) == ("False", "InvalidSpec")
    assert condition["message"].startswith("spec.sha256: ")


def test_config_with_all_models_is_ready() -> None:
    raw = config(variant("a", "m-a"), variant("b", "m-b"))
    condition = ready(config_status(raw, {"m-a", "m-b", "unrelated"}, NOW))
    assert (condition["status"], condition["reason"], condition["message"]) == ("True", "ModelsFound", "")


def test_config_names_the_missing_models() -> None:
    raw = config(variant("a", "m-a"), variant("b", "m-b"), variant("c", "m-c"))
    one = ready(config_status(raw, {"m-a", "m-c"}, NOW))
    assert (one["status"], one["reason"], one["message"]) == (
        "False",
        "ModelNotFound",
        "Model not found: m-b",
    )
    two = ready(config_status(raw, {"m-a"}, NOW))
    assert two["message"] == "Models not found: m-b, m-c"


def test_invalid_config_says_why() -> None:
    raw = config(variant("a", "m"), variant("a", "m"))
    assert config_model_names(raw) is None
    condition = ready(config_status(raw, {"m"}, NOW))
    assert (condition["status"], condition["reason"]) == ("False", "InvalidSpec")
    assert "variantName must be unique" in condition["message"]


def test_config_model_names() -> None:
    assert config_model_names(config(variant("a", "m-a"), variant("b", "m-b"))) == {"m-a", "m-b"}


def test_unchanged_status_keeps_last_transition_time() -> None:
    raw = model()
    raw["status"] = model_status(raw, NOW)
    again = ready(model_status(raw, LATER))
    assert again["lastTransitionTime"] == "2026-03-01T12:00:00.000000Z"

    cfg = config(variant("a", "m-a"))
    cfg["status"] = config_status(cfg, set(), NOW)
    still_missing = ready(config_status(cfg, set(), LATER))
    assert still_missing["lastTransitionTime"] == "2026-03-01T12:00:00.000000Z"


def test_changed_status_moves_last_transition_time() -> None:
    cfg = config(variant("a", "m-a"))
    cfg["status"] = config_status(cfg, set(), NOW)
    found = ready(config_status(cfg, {"m-a"}, LATER))
    assert (found["status"], found["lastTransitionTime"]) == ("True", "2026-03-01T12:05:00.000000Z")


def test_generation_is_copied() -> None:
    status = model_status(model(generation=7), NOW)
    assert status["observedGeneration"] == 7 and ready(status)["observedGeneration"] == 7
    cfg_status = config_status(config(variant("a", "m"), generation=3), {"m"}, NOW)
    assert cfg_status["observedGeneration"] == 3 and ready(cfg_status)["observedGeneration"] == 3


def test_planning_twice_gives_the_same_status() -> None:
    raw = model()
    raw["status"] = model_status(raw, NOW)
    assert model_status(raw, LATER) == raw["status"]


REFUSED = (
    "pipeline wiring refused: stage 'classify' cannot feed stage 'widen': dimension 1 is 3, not 5;"
    " 'classify' gives probabilities float32[N,3], 'widen' takes probabilities float32[N,5]"
)


def server_pod(state: dict[str, Any], last: dict[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"name": "server", "state": state}
    if last is not None:
        status["lastState"] = last
    return {"metadata": {"name": "p"}, "status": {"containerStatuses": [status]}}


def crashed(message: str) -> dict[str, Any]:
    return {"terminated": {"exitCode": 1, "reason": "Error", "message": message}}


def test_a_server_that_refused_the_wiring_makes_the_model_not_ready_saying_why() -> None:
    waiting = {"waiting": {"reason": "CrashLoopBackOff"}}
    for pod in (server_pod(crashed(REFUSED)), server_pod(waiting, last=crashed(REFUSED))):
        condition = ready(model_status(model(), NOW, [pod]))
        assert (condition["status"], condition["reason"], condition["message"]) == (
            "False",
            "WiringRefused",
            REFUSED,
        )


def test_other_crashes_and_other_containers_leave_the_model_accepted() -> None:
    pods = [
        server_pod(crashed("cannot load model: no such file")),
        {"status": {"containerStatuses": [{"name": "stage-post", "state": crashed(REFUSED)}]}},
        server_pod({"running": {}}),
    ]
    assert ready(model_status(model(), NOW, pods))["reason"] == "Accepted"
    # Once the refusing pods are gone, Ready turns True again.
    refused = model_status(model(), NOW, [server_pod(crashed(REFUSED))])
    healed = model_status({**model(), "status": refused}, LATER, [])
    assert ready(healed)["status"] == "True"
    assert ready(healed)["lastTransitionTime"] == "2026-03-01T12:05:00.000000Z"

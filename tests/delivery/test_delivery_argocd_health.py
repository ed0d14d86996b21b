"""The Argo CD health checks (Lua 5.1, as Argo CD's gopher-lua) on sample Berth objects.

Statuses are built with the API types, so a renamed status field breaks these tests
rather than the health checks in a user's Argo CD.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from berth_operator.api import (
    Condition,
    EndpointConfigStatus,
    EndpointStatus,
    ModelStatus,
    TransformJobStatus,
)
from lupa import lua51

from tests.delivery.delivery_support import REPO

HEALTH_DIR = REPO / "docs" / "argocd-health"
GITOPS_DOC = REPO / "docs" / "gitops.md"
NOW = "2026-01-01T00:00:00Z"


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Run docs/argocd-health/berth.dev_KIND.lua the way Argo CD does: `obj` global, a table back."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute((HEALTH_DIR / f"berth.dev_{kind}.lua").read_text())
    assert result["status"] in ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")
    return str(result["status"]), str(result["message"])


def cond(
    type_: str, status: bool, reason: str = "Reason", message: str = "", generation: int = 3
) -> Condition:
    return Condition(
        type=type_,
        status="True" if status else "False",
        reason=reason,
        message=message,
        last_transition_time=NOW,
        observed_generation=generation,
    )


def resource(kind: str, status: Any | None, generation: int = 3) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "fraud", "namespace": "ml", "generation": generation},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status.to_wire()
    return obj


def endpoint(
    phase: str | None, ready: bool, progressing: bool, degraded: bool, **extra: Any
) -> dict[str, Any]:
    generation = extra.pop("observed", 3)
    status = EndpointStatus(
        observed_generation=generation,
        phase=phase,  # type: ignore[arg-type]
        endpoint_config_name="fraud-v1",
        conditions=[
            cond("Ready", ready, generation=generation),
            cond("Progressing", progressing, message="step 1 of 2", generation=generation),
            cond("Degraded", degraded, message="rolled back: 5xx 12% > 5%", generation=generation),
        ],
        **extra,
    )
    return resource("Endpoint", status)


ENDPOINT_SAMPLES = [
    (endpoint("InService", True, False, False), "Healthy"),
    (endpoint("Creating", False, True, False), "Progressing"),
    (endpoint("Updating", True, True, False, pending_endpoint_config_name="fraud-v2"), "Progressing"),
    (endpoint("RollingBack", True, False, False), "Progressing"),
    (endpoint("Deleting", True, False, False), "Progressing"),
    (endpoint("InService", True, False, True, failure_reason="rolled back"), "Degraded"),
    # Mid-rollout trouble (e.g. the new fleet crash-loops) shows even while traffic still moves.
    (endpoint("Updating", True, True, True, failure_reason="pod crash loop"), "Degraded"),
    (
        endpoint("Failed", False, False, True, failure_reason="model fraud-v2: download failed"),
        "Degraded",
    ),
    (endpoint("Failed", False, False, False), "Degraded"),
    # The operator has not seen the latest spec yet: whatever the old status says.
    (endpoint("InService", True, False, False, observed=2), "Progressing"),
    (endpoint("Failed", False, False, True, observed=2), "Progressing"),
    (resource("Endpoint", None), "Progressing"),
]


@pytest.mark.parametrize(("obj", "expected"), ENDPOINT_SAMPLES)
def test_endpoint_health(obj: dict[str, Any], expected: str) -> None:
    assert health("Endpoint", obj)[0] == expected


def test_endpoint_messages_say_why() -> None:
    assert health("Endpoint", endpoint("Failed", False, False, True, failure_reason="download failed: 403"))[
        1
    ] == ("download failed: 403")
    assert "rolled back" in health("Endpoint", endpoint("InService", True, False, True))[1]
    assert "step 1 of 2" in health("Endpoint", endpoint("Updating", True, True, False))[1]
    assert "generation 3" in health("Endpoint", endpoint("InService", True, False, False, observed=2))[1]


def test_stale_conditions_do_not_count() -> None:
    """A Ready condition computed from an older generation is not health of the new one."""
    obj = endpoint("InService", True, False, False)
    for condition in obj["status"]["conditions"]:
        condition["observedGeneration"] = 2
    assert health("Endpoint", obj)[0] == "Progressing"


MODEL_SAMPLES = [
    (ModelStatus(observed_generation=3, conditions=[cond("Ready", True, "Accepted")]), "Healthy"),
    (
        ModelStatus(observed_generation=3, conditions=[cond("Ready", False, "InvalidSpec", "bad uri")]),
        "Degraded",
    ),
    (ModelStatus(observed_generation=2, conditions=[cond("Ready", True, "Accepted")]), "Progressing"),
    (ModelStatus(observed_generation=3), "Progressing"),
    (None, "Progressing"),
]


@pytest.mark.parametrize(("status", "expected"), MODEL_SAMPLES)
def test_model_health(status: ModelStatus | None, expected: str) -> None:
    assert health("Model", resource("Model", status))[0] == expected


CONFIG_SAMPLES = [
    (
        EndpointConfigStatus(
            observed_generation=1, conditions=[cond("Ready", True, "ModelsFound", generation=1)]
        ),
        "Healthy",
    ),
    (
        EndpointConfigStatus(
            observed_generation=1,
            conditions=[cond("Ready", False, "ModelNotFound", "Model not found: a", 1)],
        ),
        "Progressing",
    ),
    (
        EndpointConfigStatus(observed_generation=1, conditions=[cond("Ready", False, "InvalidSpec", "x", 1)]),
        "Degraded",
    ),
    (None, "Progressing"),
]


@pytest.mark.parametrize(("status", "expected"), CONFIG_SAMPLES)
def test_endpoint_config_health(status: EndpointConfigStatus | None, expected: str) -> None:
    assert health("EndpointConfig", resource("EndpointConfig", status, generation=1))[0] == expected


def test_gitops_doc_has_flux_health_checks() -> None:
    docs = [doc for block in yaml_blocks(GITOPS_DOC) for doc in yaml.safe_load_all(block) if doc]
    kinds = {doc["kind"]: doc for doc in docs}
    assert kinds["HelmRelease"]["spec"]["upgrade"]["crds"] == "CreateReplace"
    checks = flux_checks().values()
    assert {(c["apiVersion"], c["kind"]) for c in checks} == {
        ("berth.dev/v1alpha1", kind) for kind in ("Model", "EndpointConfig", "Endpoint", "TransformJob")
    }
    assert all("current" in c and "failed" in c for c in checks)


def test_scripts_exist_for_every_kind() -> None:
    assert sorted(p.name for p in HEALTH_DIR.glob("*.lua")) == [
        "berth.dev_Endpoint.lua",
        "berth.dev_EndpointConfig.lua",
        "berth.dev_Model.lua",
        "berth.dev_TransformJob.lua",
    ]
    assert Path(HEALTH_DIR).is_dir()


def yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", path.read_text(), flags=re.DOTALL)


def test_doc_yaml_blocks_parse() -> None:
    for doc in sorted((REPO / "docs").glob("*.md")):
        for block in yaml_blocks(doc):
            assert list(yaml.safe_load_all(block)), f"{doc.name}: empty YAML block"


def test_argocd_cm_block_carries_the_scripts() -> None:
    """The argocd-cm snippet, parsed as YAML, holds each script exactly."""
    configmaps = [
        doc
        for block in yaml_blocks(GITOPS_DOC)
        for doc in yaml.safe_load_all(block)
        if doc and doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "argocd-cm"
    ]
    assert len(configmaps) == 1
    data = configmaps[0]["data"]
    for script in sorted(HEALTH_DIR.glob("berth.dev_*.lua")):
        assert data[f"resource.customizations.health.{script.stem}"] == script.read_text()


TRANSFORM_SAMPLES = [
    (
        TransformJobStatus(observed_generation=3, phase="Succeeded", records_done=1000, records_total=1000),
        "Healthy",
    ),
    (TransformJobStatus(observed_generation=3, phase="Running"), "Progressing"),
    (
        TransformJobStatus(observed_generation=3, phase="Pending", failure_reason="waiting for Model m1"),
        "Progressing",
    ),
    (
        TransformJobStatus(observed_generation=3, phase="Failed", failure_reason="row 7: bad float"),
        "Degraded",
    ),
    (TransformJobStatus(observed_generation=2, phase="Succeeded"), "Progressing"),
    (TransformJobStatus(observed_generation=3), "Progressing"),
    (None, "Progressing"),
]


@pytest.mark.parametrize(("status", "expected"), TRANSFORM_SAMPLES)
def test_transform_job_health(status: TransformJobStatus | None, expected: str) -> None:
    assert health("TransformJob", resource("TransformJob", status))[0] == expected


def test_transform_job_messages() -> None:
    done = TransformJobStatus(observed_generation=3, phase="Succeeded", records_done=1000)
    assert health("TransformJob", resource("TransformJob", done))[1] == "Succeeded: 1000 records"
    failed = TransformJobStatus(observed_generation=3, phase="Failed", failure_reason="row 7: bad float")
    assert health("TransformJob", resource("TransformJob", failed))[1] == "row 7: bad float"


# ---------------------------------------------------------------- Flux: the same answers in CEL

FLUX_STATUS = {"Healthy": "Current", "Progressing": "InProgress", "Degraded": "Failed"}


def flux_checks() -> dict[str, dict[str, str]]:
    for block in yaml_blocks(GITOPS_DOC):
        for doc in yaml.safe_load_all(block):
            if doc and doc.get("kind") == "Kustomization" and "healthCheckExprs" in doc["spec"]:
                return {check["kind"]: check for check in doc["spec"]["healthCheckExprs"]}
    raise AssertionError("no Flux Kustomization in docs/gitops.md")


def flux_health(checks: dict[str, dict[str, str]], obj: dict[str, Any]) -> str:
    """kustomize-controller's order: a stale observedGeneration, then inProgress, failed, current."""
    status = obj.get("status") or {}
    if "observedGeneration" in status and status["observedGeneration"] != obj["metadata"].get("generation"):
        return "InProgress"
    env = celpy.Environment()
    activation = {key: celpy.json_to_cel(value) for key, value in obj.items()}
    for field, result in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current")):
        expression = checks[obj["kind"]].get(field)
        if expression and env.program(env.compile(expression)).evaluate(activation):
            return result
    return "InProgress"


def all_samples() -> list[tuple[dict[str, Any], str]]:
    samples = list(ENDPOINT_SAMPLES)
    samples += [(resource("Model", status), expected) for status, expected in MODEL_SAMPLES]
    samples += [
        (resource("EndpointConfig", status, generation=1), expected) for status, expected in CONFIG_SAMPLES
    ]
    return samples


def test_flux_and_argocd_agree() -> None:
    checks = flux_checks()
    for obj, expected in all_samples():
        assert health(obj["kind"], obj)[0] == expected
        assert flux_health(checks, obj) == FLUX_STATUS[expected], (obj["kind"], obj.get("status"))

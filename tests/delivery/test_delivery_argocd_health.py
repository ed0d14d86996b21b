"""The Argo CD health checks (Lua 5.1, as Argo CD's gopher-lua) on sample Berth objects.

Statuses are built with the API types, so a renamed status field breaks these tests
rather than the health checks in a user's Argo CD.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from berth_operator.api import Condition, EndpointConfigStatus, EndpointStatus, ModelStatus
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


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (endpoint("InService", True, False, False), "Healthy"),
        (endpoint("Creating", False, True, False), "Progressing"),
        (endpoint("Updating", True, True, False, pending_endpoint_config_name="fraud-v2"), "Progressing"),
        (endpoint("RollingBack", True, False, False), "Progressing"),
        (endpoint("Deleting", True, False, False), "Progressing"),
        (endpoint("InService", True, False, True, failure_reason="rolled back"), "Degraded"),
        (
            endpoint("Failed", False, False, True, failure_reason="model fraud-v2: download failed"),
            "Degraded",
        ),
        (endpoint("Failed", False, False, False), "Degraded"),
        # The operator has not seen the latest spec yet: whatever the old status says.
        (endpoint("InService", True, False, False, observed=2), "Progressing"),
        (endpoint("Failed", False, False, True, observed=2), "Progressing"),
        (resource("Endpoint", None), "Progressing"),
    ],
)
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


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (ModelStatus(observed_generation=3, conditions=[cond("Ready", True, "Accepted")]), "Healthy"),
        (
            ModelStatus(observed_generation=3, conditions=[cond("Ready", False, "InvalidSpec", "bad uri")]),
            "Degraded",
        ),
        (ModelStatus(observed_generation=2, conditions=[cond("Ready", True, "Accepted")]), "Progressing"),
        (ModelStatus(observed_generation=3), "Progressing"),
        (None, "Progressing"),
    ],
)
def test_model_health(status: ModelStatus | None, expected: str) -> None:
    assert health("Model", resource("Model", status))[0] == expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
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
            EndpointConfigStatus(
                observed_generation=1, conditions=[cond("Ready", False, "InvalidSpec", "x", 1)]
            ),
            "Degraded",
        ),
        (None, "Progressing"),
    ],
)
def test_endpoint_config_health(status: EndpointConfigStatus | None, expected: str) -> None:
    assert health("EndpointConfig", resource("EndpointConfig", status, generation=1))[0] == expected


def test_gitops_doc_carries_the_tested_scripts() -> None:
    """docs/gitops.md shows each script verbatim under its argocd-cm key."""
    doc = GITOPS_DOC.read_text()
    for script in sorted(HEALTH_DIR.glob("berth.dev_*.lua")):
        key = f"resource.customizations.health.{script.stem}: |"
        assert key in doc, key
        block = doc[doc.index(key) + len(key) :]
        lines = []
        for line in block.splitlines()[1:]:
            if line and not line.startswith("    "):
                break
            lines.append(line[4:])
        assert "\n".join(lines).strip() == script.read_text().strip(), script.name
    assert re.search(r"kind: HelmRelease", doc) and re.search(r"kind: Kustomization", doc)


def test_scripts_exist_for_every_kind() -> None:
    assert sorted(p.name for p in HEALTH_DIR.glob("*.lua")) == [
        "berth.dev_Endpoint.lua",
        "berth.dev_EndpointConfig.lua",
        "berth.dev_Model.lua",
    ]
    assert Path(HEALTH_DIR).is_dir()

"""The status a Gateway API controller writes on an HTTPRoute it accepted (or refused)."""

from __future__ import annotations

from typing import Any

Manifest = dict[str, Any]
CONTROLLER = "example.net/test-gateway-controller"


def parents_status(
    route: Manifest, accepted: bool = True, reason: str = "Accepted", message: str = ""
) -> dict[str, Any]:
    """status.parents for every parentRef of the route, for its current generation."""
    generation = route.get("metadata", {}).get("generation", 1)
    parents = []
    for ref in route.get("spec", {}).get("parentRefs", []):
        conditions = [
            {
                "type": "Accepted",
                "status": "True" if accepted else "False",
                "reason": reason if not accepted else "Accepted",
                "message": message,
                "observedGeneration": generation,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            },
            {
                "type": "ResolvedRefs",
                "status": "True",
                "reason": "ResolvedRefs",
                "message": "",
                "observedGeneration": generation,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            },
        ]
        parents.append({"parentRef": dict(ref), "controllerName": CONTROLLER, "conditions": conditions})
    return {"parents": parents}

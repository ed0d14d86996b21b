"""The status table of `berth up` (pure text)."""

from __future__ import annotations

from berth_operator.local import display


def test_status_table_shows_both_fleets_during_a_rollout() -> None:
    def v(name: str, weight: float, ready: int) -> dict:
        return {
            "variantName": name,
            "currentWeight": weight,
            "readyInstanceCount": ready,
            "desiredInstanceCount": 1,
        }

    status = {
        "phase": "Updating",
        "endpointConfigName": "c1",
        "pendingEndpointConfigName": "c2",
        "productionVariants": [v("blue", 80, 1)],
        "pendingProductionVariants": [v("green", 20, 1)],
        "url": "http://127.0.0.1:8080/endpoints/default/ep/invocations",
    }
    snapshot = {"endpoints": [{"namespace": "default", "name": "ep", "status": status, "replicas": []}]}
    table = display.table(snapshot)
    assert "ENDPOINT" in table.splitlines()[0]
    row = table.splitlines()[1]
    assert "default/ep" in row and "Updating" in row and "c1 -> c2" in row
    assert "blue 80% 1/1 -> green 20% 1/1" in row

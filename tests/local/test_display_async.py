"""The status table shows an async variant's queue beside its replicas."""

from __future__ import annotations

from berth_operator.local import display


def test_an_async_variant_shows_its_queue_and_a_realtime_one_does_not() -> None:
    async_variant = {
        "variantName": "q",
        "currentWeight": 1,
        "readyInstanceCount": 0,
        "desiredInstanceCount": 0,
        "backlogSize": 3,
    }
    realtime = {"variantName": "r", "currentWeight": 1, "readyInstanceCount": 1, "desiredInstanceCount": 1}
    assert display.variants_cell({"productionVariants": [async_variant]}) == "q 100% 0/0 queue 3"
    assert display.variants_cell({"productionVariants": [realtime]}) == "r 100% 1/1"

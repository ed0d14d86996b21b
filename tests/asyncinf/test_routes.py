"""The choice of a variant for one async request (pure: the routes and a seeded random)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from berth_serving.asyncinf.keys import Routes, RouteVariant
from berth_serving.asyncinf.routes import NoRoute, choose


def variant(name: str, config: str, weight: float) -> RouteVariant:
    return RouteVariant(
        variantName=name, endpointConfigName=config, weight=weight, stream=f"s/{config}/{name}",
        outputUri="s3://b/o/", failureUri="s3://b/f/",
    )  # fmt: skip


def routes(*variants: RouteVariant) -> Routes:
    return Routes(namespace="ns", endpoint="ep", variants=list(variants))


def test_weights_share_the_traffic() -> None:
    table = routes(variant("blue", "c1", 3), variant("green", "c1", 1), variant("grey", "c1", 0))
    rng = random.Random(7)
    drawn = Counter(choose(table, None, rng).variant_name for _ in range(20_000))
    assert drawn["grey"] == 0
    assert drawn["blue"] / 20_000 == pytest.approx(0.75, abs=0.015)


def test_during_a_rollout_a_named_variant_is_the_one_with_the_traffic_now() -> None:
    table = routes(variant("blue", "old", 10), variant("blue", "new", 90))
    assert choose(table, "blue").endpoint_config_name == "new"


def test_no_live_variant_is_503_and_an_unknown_name_is_400() -> None:
    with pytest.raises(NoRoute) as none_live:
        choose(routes(variant("blue", "c1", 0)), None)
    assert none_live.value.status == 503
    with pytest.raises(NoRoute) as unknown:
        choose(routes(variant("blue", "c1", 1), variant("a", "c1", 1)), "zed")
    assert unknown.value.status == 400
    assert unknown.value.message == "no variant 'zed' in endpoint ep; its variants are a, blue"

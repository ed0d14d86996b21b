"""The HTTPRoute interpreter of the local router (pure), on routes the planner makes."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime

from berth_operator.api import Endpoint, EndpointConfig, Model
from berth_operator.local.engine import local_settings
from berth_operator.local.routetable import (
    BackendRef,
    compile_routes,
    pick_backend,
    rewrite_path,
    select_rule,
)
from berth_operator.planner import Observed, PlanInput, plan_endpoint
from berth_operator.settings import Settings

from .support import config, endpoint, model, variant


def planned_route() -> dict:
    """The HTTPRoute the planner makes for a/b at 70/30 with a shadow s."""
    models = {"m": Model.model_validate(model("m", "file:///m.onnx"))}
    cfg = EndpointConfig.model_validate(
        config("c1", [variant("a", "m", 70), variant("b", "m", 30)], [variant("s", "m")])
    )
    ep = Endpoint.model_validate(endpoint("ep", "c1"))
    plan = plan_endpoint(
        PlanInput(
            ep,
            {"c1": cfg},
            models,
            local_settings(Settings(), 8080),
            Observed(now=datetime(2026, 1, 1, tzinfo=UTC)),
        )
    )
    (route,) = [o for o in plan.objects if o["kind"] == "HTTPRoute"]
    return route


def services(route: dict) -> dict[str, str]:
    """variant name -> Service name, from the header rules."""
    table = compile_routes([route])
    _, rules = table.lookup("/endpoints/default/ep/invocations") or ("", ())
    return {dict(r.headers)["x-berth-target-variant"]: r.backends[0].service for r in rules if r.headers}


def test_lookup_rewrite_and_rules() -> None:
    route = planned_route()
    table = compile_routes([route])
    # v2 requests naming a model have a rule of their own (to the variants serving that model)
    found = table.lookup("/endpoints/default/ep/v2/models/m/infer")
    assert found is not None
    model_prefix, model_rules = found
    assert model_prefix == "/endpoints/default/ep/v2/models/m"
    model_rule = select_rule(model_rules, {})
    assert model_rule is not None and model_rule.replace_prefix == "/v2/models/m"
    assert rewrite_path(
        b"/endpoints/default/ep/v2/models/m/infer", model_prefix, model_rule.replace_prefix
    ) == (b"/v2/models/m/infer")
    found = table.lookup("/endpoints/default/ep/invocations")
    assert found is not None
    prefix, rules = found
    assert prefix == "/endpoints/default/ep"
    default = select_rule(rules, {})
    assert default is not None and not default.headers
    assert (
        rewrite_path(b"/endpoints/default/ep/v2/models/m/infer", prefix, default.replace_prefix)
        == b"/v2/models/m/infer"
    )
    assert rewrite_path(b"/endpoints/default/ep", prefix, "/") == b"/"
    # The rewrite keeps the rest as sent: percent-encoding is the replica's to decode.
    assert rewrite_path(b"/endpoints/default/ep/v2/models/a%2Fb/infer", prefix, "/") == (
        b"/v2/models/a%2Fb/infer"
    )
    assert rewrite_path(b"/endpoints/default/ep/x", prefix, None) == b"/endpoints/default/ep/x"
    assert table.lookup("/endpoints/default/other/invocations") is None
    assert table.lookup("/endpoints/default/epx/invocations") is None  # element-wise, not string prefix
    by_variant = services(route)
    targeted = select_rule(rules, {"x-berth-target-variant": "b"})
    assert targeted is not None and [b.service for b in targeted.backends] == [by_variant["b"]]
    assert select_rule(rules, {"x-berth-target-variant": "zzz"}) is default
    assert [m.backend.service for m in default.mirrors] and all(m.percent == 100 for m in default.mirrors)


def test_weighted_choice_and_fallback_to_ready_backends() -> None:
    a = BackendRef("default", "a", 8080, 700)
    b = BackendRef("default", "b", 8080, 300)
    rng = random.Random(1)
    both = {a.key: 1, b.key: 1}
    picks = Counter(pick_backend((a, b), both, rng).service for _ in range(10_000))  # type: ignore[union-attr]
    assert abs(picks["a"] / 10_000 - 0.7) < 0.02
    # A backend without a ready replica never gets a request that another one can take.
    only_b = {b.key: 1}
    assert {pick_backend((a, b), only_b, rng).service for _ in range(100)} == {"b"}  # type: ignore[union-attr]
    assert pick_backend((a, b), {}, rng) is None
    assert pick_backend((BackendRef("default", "z", 8080, 0),), both, rng) is None

"""Routing modes, integer weights, header targeting and mirroring."""

from __future__ import annotations

from typing import Any

import pytest
from berth_operator.planner.routing import WEIGHT_TOTAL, apportion
from berth_operator.settings import Routing, Settings

from .support import Cluster, config, endpoint, model, model_rules, variant
from .support import header_rules as support_header_rules
from .validation import assert_admitted


def cluster(
    *variants: dict[str, Any], mode: str = "gateway", shadows: tuple[dict[str, Any], ...] = ()
) -> Cluster:
    cfg = config("cfg1", *variants, shadows=shadows)
    settings = Settings(routing=Routing(mode=mode))  # type: ignore[arg-type]
    return Cluster(endpoint("cfg1"), {"cfg1": cfg}, {"m1": model("m1")}, settings)


def kinds(plan: Any) -> list[str]:
    return [o["kind"] for o in plan.objects]


@pytest.mark.parametrize(
    ("fractions", "expected"),
    [
        ([1.0], [1000]),
        ([0.8, 0.2], [800, 200]),
        ([1, 1, 1], [334, 333, 333]),
        ([2, 0, 1], [667, 0, 333]),
        ([1e-6, 1.0], [0, 1000]),
        ([0.0, 0.0], [0, 0]),
    ],
)
def test_apportion(fractions: list[float], expected: list[int]) -> None:
    assert apportion(fractions) == expected
    if sum(fractions):
        assert sum(apportion(fractions)) == WEIGHT_TOTAL


def test_gateway_route() -> None:
    c = cluster(
        variant("blue", "m1", initialVariantWeight=3),
        variant("green", "m1", initialVariantWeight=1),
        variant("dark", "m1", initialVariantWeight=0),
        shadows=(variant("shadow", "m1"),),
    )
    plan = c.step()
    assert_admitted(plan.objects)
    route = next(o for o in plan.objects if o["kind"] == "HTTPRoute")
    rules = route["spec"]["rules"]
    prefix = {"type": "PathPrefix", "value": "/endpoints/prod/fraud/"}
    rewrite = {
        "type": "URLRewrite",
        "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}},
    }
    header_rules = support_header_rules(route)
    # one rule per live variant, by header, even for a variant with weight 0; never for the shadow
    assert [r["matches"][0]["headers"][0]["value"] for r in header_rules] == ["blue", "dark", "green"]
    for rule in header_rules:
        assert rule["matches"][0]["path"] == prefix
        assert rule["matches"][0]["headers"][0]["name"] == "X-Berth-Target-Variant"
        assert rule["matches"][0]["headers"][0]["type"] == "Exact"
        assert rule["filters"] == [rewrite]
        assert [ref["name"] for ref in rule["backendRefs"]] == [
            f"fraud-cfg1-{rule['matches'][0]['headers'][0]['value']}"
        ]
    # v2 clients name the model in the path: each served model's requests reach a variant serving it
    # (blue and green both serve m1, by their weights; dark has none, the shadow never answers).
    assert model_rules(route) == {
        "m1": {
            "matches": [{"path": {"type": "PathPrefix", "value": "/endpoints/prod/fraud/v2/models/m1"}}],
            "filters": [
                {
                    "type": "URLRewrite",
                    "urlRewrite": {
                        "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2/models/m1"}
                    },
                }
            ],
            "backendRefs": [
                {"name": "fraud-cfg1-blue", "port": 8080, "weight": 750},
                {"name": "fraud-cfg1-green", "port": 8080, "weight": 250},
            ],
        }
    }
    default = rules[-1]
    assert default["matches"] == [{"path": prefix}]
    assert default["backendRefs"] == [
        {"name": "fraud-cfg1-blue", "port": 8080, "weight": 750},
        {"name": "fraud-cfg1-green", "port": 8080, "weight": 250},
    ]
    assert default["filters"] == [
        rewrite,
        {
            "type": "RequestMirror",
            # no `percent`: absent before Gateway API v1.3, and 100 is the default
            "requestMirror": {"backendRef": {"name": "fraud-cfg1-shadow", "port": 8080}},
        },
    ]
    assert not any(f.get("type") == "ResponseHeaderModifier" for r in rules for f in r["filters"])


def test_ingress_two_variants() -> None:
    c = cluster(
        variant("blue", "m1", initialVariantWeight=9),
        variant("green", "m1", initialVariantWeight=1),
        mode="ingress",
    )
    plan = c.step()
    assert_admitted(plan.objects)
    ingresses = {o["metadata"]["name"]: o for o in plan.objects if o["kind"] == "Ingress"}
    assert sorted(ingresses) == ["fraud", "fraud-canary"]
    main, canary = ingresses["fraud"], ingresses["fraud-canary"]
    assert main["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "fraud-cfg1-blue"
    assert "nginx.ingress.kubernetes.io/canary" not in main["metadata"]["annotations"]
    annotations = canary["metadata"]["annotations"]
    assert canary["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "fraud-cfg1-green"
    assert annotations["nginx.ingress.kubernetes.io/canary"] == "true"
    assert annotations["nginx.ingress.kubernetes.io/canary-weight"] == "100"
    assert annotations["nginx.ingress.kubernetes.io/canary-weight-total"] == "1000"
    assert annotations["nginx.ingress.kubernetes.io/canary-by-header-value"] == "green"
    assert main["spec"]["ingressClassName"] == "nginx"
    assert c.step().status.phase == "InService"


def test_ingress_with_one_variant_has_no_canary() -> None:
    plan = cluster(variant("blue", "m1"), mode="ingress").step()
    assert [o["metadata"]["name"] for o in plan.objects if o["kind"] == "Ingress"] == ["fraud"]


def test_ingress_more_than_two_live_variants_is_a_status_error() -> None:
    c = cluster(variant("a", "m1"), variant("b", "m1"), variant("c", "m1"), mode="ingress")
    plan = c.step()
    assert "Ingress" not in kinds(plan)
    assert plan.status.failure_reason == (
        "routing mode ingress supports at most two live variants, found 3: fraud-cfg1-a, fraud-cfg1-b, fraud-cfg1-c"
    )
    assert c.step().status.phase != "InService"


def test_routing_none_gives_services_only_and_can_be_in_service() -> None:
    c = cluster(variant("blue", "m1"), mode="none")
    plan = c.step()
    assert sorted(set(kinds(plan))) == ["Deployment", "NetworkPolicy", "Service"]  # no route
    assert c.step().status.phase == "InService"


def test_switching_modes_deletes_the_old_route() -> None:
    c = cluster(variant("blue", "m1"))
    c.step()
    c.settings = Settings(routing=Routing(mode="ingress"))
    plan = c.step()
    assert [(r.kind, r.name) for r in plan.delete] == [("HTTPRoute", "fraud")]
    assert c.names("Ingress") == ["fraud"]


def test_ingress_path_regex_escapes_dots() -> None:
    cfg = config("cfg1", variant("blue", "m1"))
    settings = Settings(routing=Routing(mode="ingress"))
    c = Cluster(endpoint("cfg1", name="fraud.v1"), {"cfg1": cfg}, {"m1": model("m1")}, settings)
    plan = c.step()
    ingress = next(o for o in plan.objects if o["kind"] == "Ingress")
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["path"] == r"/endpoints/prod/fraud\.v1(/|$)(.*)"
    assert ingress["metadata"]["name"].startswith("fraud-v1-")
    assert_admitted(plan.objects)


def test_observed_split_reads_routes_and_ingresses() -> None:
    from berth_operator.planner.observe import observed_split

    gateway = cluster(variant("blue", "m1", initialVariantWeight=3), variant("green", "m1"))
    gateway.step()
    assert observed_split(list(gateway.objects.values())) == {"fraud-cfg1-blue": 750, "fraud-cfg1-green": 250}
    ingress = cluster(variant("blue", "m1", initialVariantWeight=3), variant("green", "m1"), mode="ingress")
    ingress.step()
    assert observed_split(list(ingress.objects.values())) == {"fraud-cfg1-blue": 750, "fraud-cfg1-green": 250}
    single = cluster(variant("blue", "m1"), mode="ingress")
    single.step()
    assert observed_split(list(single.objects.values())) == {"fraud-cfg1-blue": 1000}

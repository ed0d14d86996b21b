"""The offline admission check itself: Gateway API HTTPRoutes, API server semantics, CEL extras."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.support import celk8s
from tests.support.crdcheck import admit, berth_crds, child_schemas
from tests.support.crdcheck import httproute_crd as load_httproute_crd

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def httproute_crd() -> Obj:
    return load_httproute_crd()


def prefix_match(path: str = "/endpoints/default/fraud/") -> Obj:
    return {"path": {"type": "PathPrefix", "value": path}}


def rewrite() -> Obj:
    return {
        "type": "URLRewrite",
        "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}},
    }


def backend(name: str, weight: int | None = None) -> Obj:
    return {"name": name, "port": 8080, **({} if weight is None else {"weight": weight})}


def planner_route() -> Obj:
    """The shape of route the planner makes: a rule per variant header, a weighted default, a mirror."""
    header = {"name": "X-Berth-Target-Variant", "value": "blue"}
    mirror = {
        "type": "RequestMirror",
        "requestMirror": {"backendRef": backend("fraud-shadow"), "percent": 100},
    }
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "fraud", "namespace": "default"},
        "spec": {
            "parentRefs": [{"name": "berth", "namespace": "berth-system"}],
            "rules": [
                {
                    "matches": [{**prefix_match(), "headers": [header]}],
                    "filters": [rewrite()],
                    "backendRefs": [backend("fraud-blue")],
                },
                {
                    "matches": [prefix_match()],
                    "filters": [rewrite(), mirror],
                    "backendRefs": [backend("fraud-blue", 90), backend("fraud-green", 10)],
                },
            ],
        },
    }


def every_filter_route() -> Obj:
    """A valid route that reaches every place of the HTTPRoute schema that carries CEL rules."""
    cors = {
        "type": "CORS",
        "cors": {"allowOrigins": ["https://a.example"], "allowMethods": ["GET"], "allowHeaders": ["x-a"]}
        | {"exposeHeaders": ["x-b"]},
    }
    headers = {"set": [{"name": "x-a", "value": "1"}]}
    mirror = {
        "type": "RequestMirror",
        "requestMirror": {"backendRef": backend("mirror"), "fraction": {"numerator": 1, "denominator": 10}},
    }
    filters = [
        {"type": "RequestHeaderModifier", "requestHeaderModifier": headers},
        {"type": "ResponseHeaderModifier", "responseHeaderModifier": headers},
        cors,
        mirror,
        rewrite(),
        {"type": "ExtensionRef", "extensionRef": {"group": "acme.dev", "kind": "Auth", "name": "a"}},
    ]
    redirect = {
        "type": "RequestRedirect",
        "requestRedirect": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/x"}},
    }
    route = planner_route()
    route["spec"]["rules"] = [
        {
            "matches": [prefix_match()],
            "filters": filters,
            "backendRefs": [{**backend("a"), "filters": filters}],
            "timeouts": {"request": "10s", "backendRequest": "5s"},
        },
        {"matches": [prefix_match("/old/")], "filters": [redirect]},
        {
            "matches": [prefix_match("/b/")],
            "backendRefs": [{**backend("b"), "filters": [redirect]}],
        },
    ]
    return route


def ruled_paths(schema: Obj, value: Any, path: str = "") -> set[str]:
    """Schema places with rules that hold a value in `value` (list indexes folded into [])."""
    found = {path} if schema.get("x-kubernetes-validations") else set()
    for key, sub in child_schemas(schema, value):
        found |= ruled_paths(sub, value[key], f"{path}[]" if isinstance(key, int) else f"{path}.{key}")
    return found


def all_ruled_paths(schema: Obj, path: str = "") -> set[str]:
    found = {path} if schema.get("x-kubernetes-validations") else set()
    for name, sub in schema.get("properties", {}).items():
        found |= all_ruled_paths(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        found |= all_ruled_paths(schema["items"], f"{path}[]")
    return found


# --------------------------------------------------------------------------- HTTPRoute


def test_planner_shaped_route_is_admitted(httproute_crd: Obj) -> None:
    assert admit(httproute_crd, planner_route()) == []


def test_every_rule_of_httproute_is_evaluated_and_holds(httproute_crd: Obj) -> None:
    schema = httproute_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    route = every_filter_route()
    assert ruled_paths(schema, route) == all_ruled_paths(schema)  # every rule had a value to check
    assert admit(httproute_crd, route) == []


def test_every_rule_of_httproute_compiles(httproute_crd: Obj) -> None:
    schema = httproute_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules: list[str] = []

    def collect(node: Obj) -> None:
        rules.extend(rule["rule"] for rule in node.get("x-kubernetes-validations", []))
        for sub in node.get("properties", {}).values():
            collect(sub)
        if isinstance(node.get("items"), dict):
            collect(node["items"])

    collect(schema)
    assert len(rules) == 89
    for rule in set(rules):
        celk8s.program(rule)


def broken(change: Any) -> Obj:
    route = planner_route()
    change(route["spec"])
    return route


BAD_ROUTES = [
    (
        "no-port",
        lambda s: s["rules"][1]["backendRefs"][0].pop("port"),
        "spec.rules[1].backendRefs[0]: Invalid value",
    ),
    (
        "weight-too-big",
        lambda s: s["rules"][1]["backendRefs"][0].update(weight=2_000_000),
        "in body should be less than or equal to 1000000",
    ),
    (
        "rewrite-with-two-matches",
        lambda s: s["rules"][1]["matches"].append(prefix_match("/x/")),
        "When using URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified",
    ),
    (
        "mirror-percent-and-fraction",
        lambda s: s["rules"][1]["filters"][1]["requestMirror"].update(fraction={"numerator": 1}),
        "Only one of percent or fraction may be specified",
    ),
    (
        "fraction-over-one",
        lambda s: s["rules"][1]["filters"][1]["requestMirror"].update(
            percent=None, fraction={"numerator": 200}
        ),
        "numerator must be less than or equal to denominator",
    ),
    (
        "double-slash",
        lambda s: s["rules"][0]["matches"][0]["path"].update(value="/a//b"),
        "must not contain '//'",
    ),
    (
        "duplicate-header-match",
        lambda s: s["rules"][0]["matches"][0]["headers"].append(
            {"name": "X-Berth-Target-Variant", "value": "x"}
        ),
        "spec.rules[0].matches[0].headers[1]: Duplicate value",
    ),
    (
        "same-parent-twice",
        lambda s: s["parentRefs"].append({"name": "berth", "namespace": "berth-system"}),
        "sectionName must be unique",
    ),
    (
        "backend-timeout-longer",
        lambda s: s["rules"][0].update(timeouts={"request": "1s", "backendRequest": "2s"}),
        "backendRequest timeout cannot be longer than request timeout",
    ),
    (
        "filter-without-config",
        lambda s: s["rules"][0]["filters"][0].pop("urlRewrite"),
        "filter.urlRewrite must be specified",
    ),
    (
        "redirect-with-backends",
        lambda s: s["rules"][1]["filters"].__setitem__(
            1, {"type": "RequestRedirect", "requestRedirect": {"hostname": "a.example"}}
        ),
        "RequestRedirect filter must not be used together with backendRefs",
    ),
    (
        "rewrite-twice",
        lambda s: s["rules"][0]["filters"].append(rewrite()),
        "URLRewrite filter cannot be repeated",
    ),
    ("unknown-field", lambda s: s["rules"][0].update(weight=1), 'unknown field "spec.rules[0].weight"'),
    (
        "bad-filter-type",
        lambda s: s["rules"][0]["filters"][0].update(type="Rewrite"),
        'Unsupported value: "Rewrite"',
    ),
]


@pytest.mark.parametrize(
    ("change", "message"), [row[1:] for row in BAD_ROUTES], ids=[row[0] for row in BAD_ROUTES]
)
def test_invalid_routes_are_refused(httproute_crd: Obj, change: Any, message: str) -> None:
    messages = admit(httproute_crd, broken(change))
    assert any(message in m for m in messages), messages


def test_defaults_apply_before_rules(httproute_crd: Obj) -> None:
    """backendRefs[].kind defaults to Service, so the "Must have port" rule applies to a bare name."""
    route = planner_route()
    route["spec"]["rules"][0]["backendRefs"] = [{"name": "fraud-blue"}]
    assert admit(httproute_crd, route) == [
        'spec.rules[0].backendRefs[0]: Invalid value: "object": Must have port for Service reference'
    ]
    route["spec"]["rules"][0]["backendRefs"] = [
        {"name": "fraud-blue", "kind": "Backend", "group": "acme.dev"}
    ]
    assert admit(httproute_crd, route) == []


# --------------------------------------------------------------------------- API server semantics


def tiny_crd(spec_schema: Obj) -> Obj:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.test.dev"},
        "spec": {
            "group": "test.dev",
            "names": {"kind": "Thing", "plural": "things"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"}}
                            | {"metadata": {"type": "object"}, "spec": spec_schema},
                        }
                    },
                }
            ],
        },
    }


def thing(**spec: Any) -> Obj:
    return {"apiVersion": "test.dev/v1", "kind": "Thing", "metadata": {"name": "t"}, "spec": spec}


LOCKED = {
    "type": "string",
    "maxLength": 10,
    "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "locked"}],
}


def test_transition_rules_run_only_where_the_old_value_exists() -> None:
    crd = tiny_crd({"type": "object", "properties": {"locked": LOCKED, "free": {"type": "string"}}})
    assert admit(crd, thing(locked="a")) == []  # create
    assert admit(crd, thing(locked="a"), old=thing(free="x")) == []  # no old value at that path
    assert admit(crd, thing(locked="b"), old=thing(locked="a")) == [
        'spec.locked: Invalid value: "string": locked'
    ]


def test_list_items_correlate_only_in_map_lists() -> None:
    item = {"type": "object", "properties": {"name": {"type": "string"}, "value": LOCKED}}
    atomic = tiny_crd({"type": "object", "properties": {"items": {"type": "array", "items": item}}})
    keyed = copy.deepcopy(atomic)
    items_schema = keyed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["items"]
    items_schema.update({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    items_schema["items"]["required"] = ["name"]
    old = thing(items=[{"name": "a", "value": "1"}, {"name": "b", "value": "2"}])
    new = thing(items=[{"name": "b", "value": "2"}, {"name": "a", "value": "9"}])
    assert admit(atomic, new, old=old) == []  # atomic lists: items are not correlated
    assert admit(keyed, new, old=old) == ['spec.items[1].value: Invalid value: "string": locked']


def test_reasons_field_paths_and_message_expressions() -> None:
    rules = [
        {
            "rule": "self.a > 0",
            "message": "a must be positive",
            "reason": "FieldValueForbidden",
            "fieldPath": ".a",
        },
        {
            "rule": "has(self.b)",
            "messageExpression": "'b is needed when a is ' + string(self.a)",
            "reason": "FieldValueRequired",
        },
        {"rule": "self.a < 100"},
    ]
    crd = tiny_crd(
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "x-kubernetes-validations": rules,
        }
    )
    assert admit(crd, thing(a=-1)) == [
        "spec.a: Forbidden: a must be positive",
        "spec: Required value: b is needed when a is -1",
    ]
    assert admit(crd, thing(a=200, b=1)) == ['spec: Invalid value: "object": failed rule: self.a < 100']


def test_int_or_string_preserved_fields_and_nulls() -> None:
    crd = berth_crds()["EndpointConfig"]
    variant = {"variantName": "a", "modelName": "m", "instanceType": "cpu-small", "autoscaling": None}
    variant["resources"] = {"limits": {"cpu": "500m", "nvidia.com/gpu": 1}}
    obj = {"apiVersion": "berth.dev/v1alpha1", "kind": "EndpointConfig", "metadata": {"name": "c"}}
    assert admit(crd, {**obj, "spec": {"productionVariants": [variant]}}) == []  # null pruned like the server
    model = berth_crds()["Model"]
    env = [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name", "anything": {"goes": 1}}}}]
    spec = {"modelUri": "file:///m.onnx", "env": env}
    assert admit(model, {**obj, "kind": "Model", "spec": spec}) == []


def test_blocking_errors_skip_the_rules() -> None:
    crd = berth_crds()["EndpointConfig"]
    variants = [
        {"variantName": "a", "modelName": "m", "instanceType": "cpu-small", "initialVariantWeight": "x"}
    ]
    messages = admit(
        crd,
        {"apiVersion": "berth.dev/v1alpha1", "kind": "EndpointConfig", "metadata": {"name": "c"}}
        | {"spec": {"productionVariants": variants}},
    )
    assert messages[0].startswith('spec.productionVariants[0].initialVariantWeight: Invalid value: "x"')
    assert "some validation rules were not checked" in messages[-1] and len(messages) == 2


# --------------------------------------------------------------------------- CEL library


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("[1, 2, 3].sum()", 6),
        ("[1.5, 2.5].sum()", 4.0),
        ("[3, 1, 2].min() + [3, 1, 2].max()", 4),
        ("[1, 2, 2].isSorted() && ![2, 1].isSorted()", True),
        ("[1, 2, 3].exists_one(x, x > 2) && [1, 2, 3].all(x, x > 0)", True),
        ("['a', 'b', 'a'].indexOf('a') == 0 && ['a', 'b', 'a'].lastIndexOf('a') == 2", True),
        ("'hello'.indexOf('l') == 2 && 'hello'.lastIndexOf('l') == 3", True),
        ("'Hello'.lowerAscii() + 'x'.upperAscii()", "helloX"),
        ("' a '.trim() + 'abc'.charAt(1) + 'abcdef'.substring(2, 4)", "abcd"),
        ("'a,b,c'.split(',').size() == 3 && ['a', 'b'].join('-') == 'a-b'", True),
        ("'aaa'.replace('a', 'b', 2)", "bba"),
        ("'abc123'.find('[0-9]+') + ':' + 'a1b22'.findAll('[0-9]+').join(',')", "123:1,22"),
        ("'fraud-v1'.matches('^[a-z0-9-]+$') && !'Fraud'.matches('^[a-z]+$')", True),
        ("isURL('https://example.com:80/path?q=v') && isURL('/absolute') && !isURL('relative/path')", True),
        ("!isURL('https://a:b:c/') && !isURL('http://a b')", True),
        ("url('https://user@example.com:8443/p/q?x=1&x=2').getScheme()", "https"),
        ("url('https://user@example.com:8443/p/q?x=1').getHost()", "example.com:8443"),
        (
            "url('https://example.com:8443/p').getHostname() + url('https://example.com:8443/p').getPort()",
            "example.com8443",
        ),
        ("url('https://example.com/p/q?x=1&x=2').getEscapedPath()", "/p/q"),
        ("url('https://example.com/?x=1&x=2').getQuery()['x'].size()", 2),
        ("duration('10s') > duration('5s')", True),
    ],
)
def test_kubernetes_cel_extras(expression: str, expected: Any) -> None:
    assert celk8s.evaluate(expression, {}) == expected


def test_keywords_are_escaped_and_numbers_are_doubles() -> None:
    schema = {
        "type": "object",
        "properties": {"namespace": {"type": "string"}, "x-y": {"type": "integer"}, "w": {"type": "number"}},
    }
    value = celk8s.to_cel({"namespace": "ns", "x-y": 1, "w": 2}, schema)
    assert celk8s.evaluate("self.__namespace__ == 'ns' && self.x__dash__y == 1", {"self": value})
    assert celk8s.evaluate("self.w == 2.0 && type(self.w) == double", {"self": value})

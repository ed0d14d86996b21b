"""The Helm chart renders, lints and produces valid, least-privilege objects for every value set."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest
import yaml
from berth_operator.kube import RESOURCES

from tests.delivery.delivery_support import (
    CHART_DIR,
    NAMESPACE,
    REPO,
    VALUE_SETS,
    Manifest,
    by_kind,
    grants,
    objects,
    one,
    operator_args,
    rbac_rules,
    render,
    validate,
)


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def renders(chart: helm.Chart) -> dict[str, list[Manifest]]:
    return {name: objects(render(chart, values)) for name, values in VALUE_SETS.items()}


def test_chart_metadata(chart: helm.Chart) -> None:
    meta = chart.metadata
    assert (meta["apiVersion"], meta["name"], meta["version"], meta["appVersion"]) == (
        "v2",
        "berth",
        "0.1.0",
        "0.1.0",
    )


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_is_clean(name: str) -> None:
    report = helm.lint(CHART_DIR, VALUE_SETS[name], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_object_is_valid(renders: dict[str, list[Manifest]], name: str) -> None:
    objs = renders[name]
    assert {"Deployment", "ConfigMap", "ServiceAccount"} <= {obj["kind"] for obj in objs}
    for obj in objs:
        try:
            validate(obj)
        except Exception as exc:
            raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']} ({name}): {exc}") from exc


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_no_rbac_wildcards(renders: dict[str, list[Manifest]], name: str) -> None:
    rules = rbac_rules(renders[name])
    assert rules
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
            assert all("*" not in entry for entry in rule[field]), rule
        assert "nonResourceURLs" not in rule
        # The one named grant: binding the invoke reviewer role, and nothing else.
        if "resourceNames" in rule:
            assert rule == {
                "apiGroups": ["rbac.authorization.k8s.io"],
                "resources": ["clusterroles"],
                "resourceNames": ["berth-invoke-reviewer"],
                "verbs": ["bind"],
            }


def named(objs: list[Manifest], kind: str, suffix: str) -> Manifest:
    found = [o for o in by_kind(objs, kind) if o["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, [o["metadata"]["name"] for o in by_kind(objs, kind)]
    return found[0]


REVIEWER = {
    ("authentication.k8s.io", "tokenreviews", "create"),
    ("authorization.k8s.io", "subjectaccessreviews", "create"),
}
BINDER = {
    ("rbac.authorization.k8s.io", "clusterrolebindings", verb) for verb in ("create", "get", "patch")
} | {("rbac.authorization.k8s.io", "clusterroles", "bind")}


@pytest.mark.parametrize("name", ["default", "namespaced"])
def test_invoke_reviewers_get_two_verbs_and_the_operator_binds_only_that(
    renders: dict[str, list[Manifest]], name: str
) -> None:
    objs = renders[name]
    reviewer = named(objs, "ClusterRole", "-invoke-reviewer")
    assert grants(reviewer["rules"]) == REVIEWER
    binder = named(objs, "ClusterRole", "-invoke-binder")
    assert grants(binder["rules"]) == BINDER
    assert binder["rules"][1]["resourceNames"] == [reviewer["metadata"]["name"]]
    binding = named(objs, "ClusterRoleBinding", "-invoke-binder")
    assert binding["roleRef"]["name"] == binder["metadata"]["name"]
    assert binding["subjects"][0]["name"] == one(objs, "ServiceAccount")["metadata"]["name"]
    settings = yaml.safe_load(one(objs, "ConfigMap")["data"]["settings.yaml"])
    assert settings["auth"]["reviewerClusterRole"] == reviewer["metadata"]["name"]
    assert settings["networkPolicy"]["operatorNamespace"] == NAMESPACE


OWNED = ("create", "get", "list", "watch", "patch", "delete")


def expected_grants() -> set[tuple[str, str, str]]:
    """What the operator needs in a namespace it watches, and nothing more."""
    berth_kinds = ("models", "endpointconfigs", "endpoints", "transformjobs", "monitoringschedules")
    want = {
        ("berth.dev", plural, verb) for plural in berth_kinds for verb in ("get", "list", "watch", "patch")
    }
    want |= {("berth.dev", f"{plural}/status", verb) for plural in berth_kinds for verb in ("get", "patch")}
    want |= {
        ("berth.dev", f"{owner}/finalizers", "update")
        for owner in ("endpoints", "transformjobs", "monitoringschedules")
    }
    for group, plural in (
        ("apps", "deployments"),
        ("", "services"),
        ("autoscaling", "horizontalpodautoscalers"),
        ("policy", "poddisruptionbudgets"),
        ("batch", "jobs"),
        ("batch", "cronjobs"),  # a MonitoringSchedule's executions
        ("gateway.networking.k8s.io", "httproutes"),
        ("networking.k8s.io", "ingresses"),
        ("networking.k8s.io", "networkpolicies"),
        ("keda.sh", "scaledobjects"),
        ("http.keda.sh", "httpscaledobjects"),  # serverless variants
        ("", "configmaps"),  # the async front door's routes
    ):
        want |= {(group, plural, verb) for verb in OWNED}
    want |= {("", "serviceaccounts", verb) for verb in ("create", "get", "patch")}
    want |= {("", "pods", verb) for verb in ("get", "list", "watch")}
    want |= {(group, "events", verb) for group in ("", "events.k8s.io") for verb in ("create", "patch")}
    return want


# The ReferenceGrant in the interceptor's namespace that serverless variants' routes need.
INTERCEPTOR_GRANTS = {
    ("gateway.networking.k8s.io", "referencegrants", verb) for verb in ("create", "get", "patch")
}
DISCOVERY = {
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}


def test_cluster_wide_rbac_is_exact(renders: dict[str, list[Manifest]]) -> None:
    objs = renders["default"]
    assert not by_kind(objs, "Role")
    role = named(objs, "ClusterRole", "-operator")
    peering = {("kopf.dev", "clusterkopfpeerings", verb) for verb in ("get", "list", "watch", "patch")}
    assert grants(role["rules"]) == expected_grants() | INTERCEPTOR_GRANTS | DISCOVERY | peering
    binding = named(objs, "ClusterRoleBinding", "-operator")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": one(objs, "ServiceAccount")["metadata"]["name"],
            "namespace": NAMESPACE,
        }
    ]


def test_route_grants_do_not_depend_on_the_mode(renders: dict[str, list[Manifest]]) -> None:
    """Deleting an Endpoint lists and deletes children of both route kinds."""
    assert grants(named(renders["ingress-two-replicas"], "ClusterRole", "-operator")["rules"]) == grants(
        named(renders["default"], "ClusterRole", "-operator")["rules"]
    )


def test_a_namespaced_install_may_grant_reference_grants_in_the_interceptor_namespace(
    chart: helm.Chart,
) -> None:
    """Off by default (the namespace may not exist); on, a Role there for the ReferenceGrants."""
    values = {"watchNamespaces": ["team-a"], "rbac": {"interceptorGrants": True}}
    objs = objects(render(chart, values))
    [role] = [r for r in by_kind(objs, "Role") if r["metadata"]["namespace"] == "keda"]
    assert grants(role["rules"]) == INTERCEPTOR_GRANTS
    [binding] = [b for b in by_kind(objs, "RoleBinding") if b["metadata"]["namespace"] == "keda"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_namespaced_install_uses_roles_per_namespace(renders: dict[str, list[Manifest]]) -> None:
    objs = renders["namespaced"]
    roles = by_kind(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    peering = {("kopf.dev", "kopfpeerings", verb) for verb in ("get", "list", "watch", "patch")}
    for role in roles:
        assert grants(role["rules"]) == expected_grants() | peering
    bindings = by_kind(objs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert all(b["subjects"][0]["namespace"] == NAMESPACE for b in bindings)
    # Cluster-scoped: kopf's read-only discovery, and binding the invoke reviewer role.
    assert grants(named(objs, "ClusterRole", "-discovery")["rules"]) == DISCOVERY
    assert {o["metadata"]["name"] for o in by_kind(objs, "ClusterRole")} == {
        "berth-discovery",
        "berth-invoke-reviewer",
        "berth-invoke-binder",
    }
    args = operator_args(objs)
    assert args[args.index("--namespace") :].count("--namespace") == 2
    assert [args[i + 1] for i, a in enumerate(args) if a == "--namespace"] == ["team-a", "team-b"]
    peerings = by_kind(objs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert not by_kind(objs, "ClusterKopfPeering")


def test_namespaced_install_without_discovery(chart: helm.Chart) -> None:
    objs = objects(render(chart, {"watchNamespaces": ["team-a"], "rbac": {"clusterDiscovery": False}}))
    # Only invoke auth's: the reviewer role and the operator's right to bind it.
    assert sorted(o["metadata"]["name"] for o in by_kind(objs, "ClusterRole")) == [
        "berth-invoke-binder",
        "berth-invoke-reviewer",
    ]
    assert [o["metadata"]["name"] for o in by_kind(objs, "ClusterRoleBinding")] == ["berth-invoke-binder"]


def test_operator_deployment_defaults(renders: dict[str, list[Manifest]]) -> None:
    objs = renders["default"]
    deployment = one(objs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "ghcr.io/berth-dev/berth-operator:0.1.0"
    assert operator_args(objs) == [
        "berth", "operator", "--settings", "/etc/berth/settings.yaml", "--liveness-port", "8080",
        "--metrics-port", "8081", "--peering", "berth",
    ]  # fmt: skip
    assert deployment["spec"]["replicas"] == 1
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["ports"] == [
        {"name": "health", "containerPort": 8080, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 8081, "protocol": "TCP"},
    ]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # The settings file is mounted where --settings points.
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/berth")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == one(objs, "ConfigMap")["metadata"]["name"]
    assert pod["serviceAccountName"] == one(objs, "ServiceAccount")["metadata"]["name"]
    peering = one(objs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "berth"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_restricted_security_context(renders: dict[str, list[Manifest]], name: str) -> None:
    pod = one(renders[name], "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        ctx = container["securityContext"]
        assert ctx["runAsNonRoot"] is True
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod and "hostPID" not in pod


def test_two_replicas_peer_and_spread(renders: dict[str, list[Manifest]]) -> None:
    objs = renders["ingress-two-replicas"]
    deployment = one(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    args = operator_args(objs)
    assert "--standalone" not in args and args[args.index("--peering") + 1] == "berth"
    assert one(objs, "ClusterKopfPeering")["metadata"]["name"] == "berth"
    assert one(objs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    affinity = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert affinity["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"][
        "topologyKey"
    ] == ("kubernetes.io/hostname")


def test_standalone_only_with_one_replica_and_no_peering(
    renders: dict[str, list[Manifest]], chart: helm.Chart
) -> None:
    objs = renders["custom-instance-types"]
    args = operator_args(objs)
    assert "--standalone" in args and "--peering" not in args
    assert not by_kind(objs, "ClusterKopfPeering") and not by_kind(objs, "KopfPeering")
    assert one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example.com/berth-operator:dev"
    )
    with pytest.raises(helm.HelmRenderError, match=r"needs peering\.enabled=true"):
        render(chart, {"replicas": 2, "peering": {"enabled": False}})


def test_optional_objects(renders: dict[str, list[Manifest]]) -> None:
    default_kinds = {obj["kind"] for obj in renders["default"]}
    assert not default_kinds & {
        "Gateway",
        "ServiceMonitor",
        "PodMonitor",
        "NetworkPolicy",
        "PodDisruptionBudget",
    }

    objs = renders["monitoring-netpol-gateway"]
    gateway = one(objs, "Gateway")
    assert (gateway["metadata"]["name"], gateway["metadata"]["namespace"]) == ("inference", "gateways")
    assert gateway["spec"]["gatewayClassName"] == "eg"
    assert gateway["spec"]["listeners"][0]["name"] == "web"  # the settings' sectionName
    assert gateway["spec"]["listeners"][0]["port"] == 8080

    monitor = one(objs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    # The operator's own gauges, from the container port the Deployment names.
    operator_monitor = one(objs, "PodMonitor")
    deployment = one(objs, "Deployment")
    assert (
        operator_monitor["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    )
    ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert operator_monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports

    policy = one(objs, "NetworkPolicy")
    assert (
        policy["spec"]["podSelector"]["matchLabels"]
        == one(objs, "Deployment")["spec"]["selector"]["matchLabels"]
    )
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {53, 443, 6443, 8080, 9090} <= egress_ports
    assert [p["port"] for p in policy["spec"]["ingress"][0]["ports"]] == [8080, 8081]


def test_settings_change_restarts_the_operator(chart: helm.Chart) -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = one(objects(render(chart, values)), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/settings"])

    assert checksum({}) == checksum({"replicas": 1})
    assert checksum({}) != checksum({"settings": {"routing": {"publicUrl": "https://ml.example.com"}}})


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"settings": {"routing": {"mode": "mesh"}}}, "/settings/routing/mode"),
        ({"replicaCount": 2}, "replicaCount"),
        ({"settings": {"instanceTypes": {"cpu-small": {"accelerator": "amd"}}}}, "accelerator"),
        ({"settings": {"instanceTypes": {"huge": {"gpus": 8}}}}, "gpus"),
        ({"settings": {"namespaces": ["a"]}}, "namespaces"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
        ({"replicas": 0}, "replicas"),
    ],
)
def test_schema_rejects_bad_values(chart: helm.Chart, values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=complaint):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError):
        render(chart, values)


def test_values_file_is_documented() -> None:
    """Every value has a `# --` comment, on itself or on the map that holds it."""
    key_line = re.compile(r"^(\s*)([A-Za-z][\w.-]*):(.*)$")
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    documented_indents: list[int] = []  # indents of documented maps enclosing the current line
    undocumented = []
    for index, line in enumerate(lines):
        match = key_line.match(line)
        if not match:
            continue
        indent, key, rest = len(match[1]), match[2], match[3].strip()
        documented_indents = [i for i in documented_indents if i < indent]
        comments = []
        for above in reversed(lines[:index]):
            if not above.lstrip().startswith("#"):
                break
            comments.append(above.strip())
        has_doc = any(c.startswith("# --") for c in comments)
        is_map = rest == "" or rest.startswith("#")
        if has_doc and is_map:
            documented_indents.append(indent)
        elif not has_doc and not is_map and not documented_indents:
            undocumented.append(key)
    assert undocumented == []


def test_values_reference_is_complete() -> None:
    """docs/kubernetes.md lists every value (instance-type entries aside)."""
    doc = (REPO / "docs" / "kubernetes.md").read_text()
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())

    def leaves(node: Any, prefix: str) -> Iterator[str]:
        if isinstance(node, dict) and node and prefix not in DOCUMENTED_AS_A_WHOLE:
            for key, value in node.items():
                yield from leaves(value, f"{prefix}.{key}" if prefix else key)
        else:
            yield prefix

    missing = [path for path in leaves(values, "") if f"| `{path}` |" not in doc]
    assert missing == []


DOCUMENTED_AS_A_WHOLE = {
    "resources",
    "podSecurityContext",
    "securityContext",
    "settings.instanceTypes",
    "async.redis.deploy.resources",
}


def test_every_kind_the_operator_touches_is_granted(chart: helm.Chart) -> None:
    """A kind added to the operator's API client without a chart rule would fail with 403 in a cluster."""
    granted: set[tuple[str, str, str]] = set()
    for mode in ("gateway", "ingress"):
        objs = objects(render(chart, {"settings": {"routing": {"mode": mode}}}))
        granted |= grants(rbac_rules(objs))
    for kind in RESOURCES.values():
        group = kind.api_version.rpartition("/")[0]
        needed = {"get", "list"}
        if kind.kind == "Event":
            needed = {"create"}
        elif kind.kind in ("ServiceAccount", "ClusterRoleBinding", "ReferenceGrant"):  # applied, never listed
            needed = {"get", "create", "patch"}
        missing = {verb for verb in needed if (group, kind.plural, verb) not in granted}
        assert not missing, f"{kind.kind}: no {sorted(missing)} for {group or 'core'}/{kind.plural}"


def test_notes_tell_the_next_commands(chart: helm.Chart) -> None:
    notes = render(chart, {})["berth/templates/NOTES.txt"]
    deployment = one(objects(render(chart, {})), "Deployment")["metadata"]["name"]
    assert f"kubectl -n {NAMESPACE} rollout status deployment/{deployment}" in notes
    assert "kubectl wait --for=condition=Ready bep/" in notes
    assert "berth invoke" in notes and "http://localhost" in notes
    namespaced = render(chart, {"watchNamespaces": ["team-a"], "gateway": {"create": True}})[
        "berth/templates/NOTES.txt"
    ]
    assert "watches the namespaces team-a" in namespaced and "created by this chart" in namespaced

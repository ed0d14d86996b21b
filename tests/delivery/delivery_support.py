"""Render the Berth chart offline and check what comes out (shared by the delivery tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "berth"
RELEASE = "berth"
NAMESPACE = "berth-system"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas we have.
KUBE_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())

Manifest = dict[str, Any]

# Value sets a user is likely to install with (each is also rendered and validated).
VALUE_SETS: dict[str, Manifest] = {
    "default": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"], "replicas": 2},
    "ingress-two-replicas": {
        "replicas": 2,
        "settings": {
            "routing": {"mode": "ingress", "ingressClassName": "nginx", "publicUrl": "https://ml.example.com"}
        },
    },
    "monitoring-netpol-gateway": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "networkPolicy": {"enabled": True},
        "gateway": {"create": True, "className": "eg", "port": 8080},
        "settings": {
            "routing": {"gateway": {"name": "inference", "namespace": "gateways", "sectionName": "web"}},
            "rollback": {"prometheusUrl": "http://prometheus-operated.monitoring:9090"},
        },
    },
    "custom-instance-types": {
        "image": {"repository": "registry.example.com/berth-operator", "tag": "dev"},
        "peering": {"enabled": False},
        "settings": {
            "images": {"cpu": "registry.example.com/berth-serving:dev", "pullPolicy": "Always"},
            "instanceTypes": {
                "cpu-small": None,
                "gpu-small": None,
                "kind-tiny": {
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "256Mi"},
                        "limits": {"memory": "512Mi"},
                    },
                    "nodeSelector": {"berth.dev/inference": "true"},
                },
                "a100": {
                    "accelerator": "nvidia",
                    "resources": {"limits": {"nvidia.com/gpu": 1}},
                    "nodeSelector": {"nvidia.com/gpu.product": "A100-SXM4-40GB"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                },
            },
        },
    },
}


def render(chart: helm.Chart, values: Manifest) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would produce."""
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(rendered: dict[str, str]) -> list[Manifest]:
    """Every Kubernetes object of a render (NOTES.txt and empty documents left out)."""
    found: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        found.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return found


def by_kind(objs: list[Manifest], kind: str) -> list[Manifest]:
    return [obj for obj in objs if obj["kind"] == kind]


def one(objs: list[Manifest], kind: str) -> Manifest:
    matches = by_kind(objs, kind)
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def operator_args(objs: list[Manifest]) -> list[str]:
    container = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return [*container["command"], *container["args"]]


def rendered_settings(objs: list[Manifest]) -> str:
    return str(one(objs, "ConfigMap")["data"]["settings.yaml"])


def rbac_rules(objs: list[Manifest]) -> list[Manifest]:
    rules: list[Manifest] = []
    for obj in objs:
        if obj["kind"] in ("ClusterRole", "Role"):
            rules.extend(obj["rules"])
    return rules


def grants(rules: list[Manifest]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for every rule of a role."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


# ---------------------------------------------------------------- kinds kubernetes-validate lacks


def check_gateway(obj: Manifest) -> None:
    """Basic shape of a gateway.networking.k8s.io/v1 Gateway (standard channel)."""
    assert obj["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert set(obj) == {"apiVersion", "kind", "metadata"} | {"spec"}
    spec = obj["spec"]
    assert set(spec) <= {"gatewayClassName", "listeners", "addresses", "infrastructure"}
    assert isinstance(spec["gatewayClassName"], str) and spec["gatewayClassName"]
    assert 1 <= len(spec["listeners"]) <= 64
    names = [listener["name"] for listener in spec["listeners"]]
    assert len(names) == len(set(names)), "listener names must be unique"
    for listener in spec["listeners"]:
        assert set(listener) <= {"name", "hostname", "port", "protocol", "tls", "allowedRoutes"}
        assert listener["protocol"] in ("HTTP", "HTTPS", "TLS", "TCP", "UDP")
        assert 1 <= listener["port"] <= 65535
        assert listener["allowedRoutes"]["namespaces"]["from"] in ("All", "Same", "Selector")


def check_service_monitor(obj: Manifest) -> None:
    """Basic shape of a monitoring.coreos.com/v1 ServiceMonitor."""
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    spec = obj["spec"]
    assert set(spec) <= {
        "selector",
        "namespaceSelector",
        "endpoints",
        "targetLabels",
        "jobLabel",
        "podTargetLabels",
    }
    assert spec["selector"]["matchLabels"], "an empty selector would scrape every Service"
    assert set(spec["namespaceSelector"]) <= {"any", "matchNames"}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert isinstance(endpoint["port"], str), "ServiceMonitor endpoints name the Service port"
        assert endpoint["path"].startswith("/")


def check_pod_monitor(obj: Manifest) -> None:
    """Basic shape of a monitoring.coreos.com/v1 PodMonitor."""
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    spec = obj["spec"]
    assert set(spec) <= {
        "selector",
        "namespaceSelector",
        "podMetricsEndpoints",
        "jobLabel",
        "podTargetLabels",
    }
    assert spec["selector"]["matchLabels"], "an empty selector would scrape every pod"
    for endpoint in spec["podMetricsEndpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert isinstance(endpoint["port"], str), "PodMonitor endpoints name the container port"
        assert endpoint["path"].startswith("/")


def check_kopf_peering(obj: Manifest) -> None:
    assert obj["apiVersion"] == "kopf.dev/v1"
    assert set(obj) == {"apiVersion", "kind", "metadata"}
    assert ("namespace" in obj["metadata"]) == (obj["kind"] == "KopfPeering")


CUSTOM_KIND_CHECKS = {
    "Gateway": check_gateway,
    "ServiceMonitor": check_service_monitor,
    "PodMonitor": check_pod_monitor,
    "ClusterKopfPeering": check_kopf_peering,
    "KopfPeering": check_kopf_peering,
}


def validate(obj: Manifest) -> None:
    """kubernetes-validate --strict for built-in kinds, a shape check for the others."""
    check = CUSTOM_KIND_CHECKS.get(obj["kind"])
    if check is not None:
        check(obj)
        return
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)

"""Who may reach and invoke an Endpoint's serving pods: the NetworkPolicy, the serving pods' auth
settings and volumes, and the per-namespace identity KubernetesRBAC serving pods review with.

The serving runtime does the checks itself (berth_serving.auth); the planner only decides what
each pod is told and mounted, and which objects let the network and the API server agree.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from berth_serving.config import DEFAULT_PORT, ENV, IN_CLUSTER_CA_FILE, IN_CLUSTER_TOKEN_FILE

from ..api import ASYNC_WORKER_METRICS_PORT, Endpoint, auth_mode_of
from ..api.endpoint import AuthMode
from ..settings import Settings
from . import labels
from .meta import object_meta
from .names import network_policy_name
from .types import Manifest

API_KEYS_VOLUME = "api-keys"
API_KEYS_MOUNT_PATH = "/var/run/berth/api-keys"
KUBE_API_VOLUME = "kube-api-access"
KUBE_API_MOUNT_PATH = posixpath.dirname(IN_CLUSTER_TOKEN_FILE)  # where in-cluster clients look
assert posixpath.dirname(IN_CLUSTER_CA_FILE) == KUBE_API_MOUNT_PATH
TOKEN_SECONDS = 3607  # what the kubelet's own projected token asks for; it rotates before expiry
NETWORK_POLICY_COMPONENT = "network-policy"
NAMESPACE_LABEL = "kubernetes.io/metadata.name"  # set on every namespace by the API server
# The async worker sidecar's /metrics (planner/asyncinf.py); no pipeline stage may take it.
ASYNC_METRICS_PORT = ASYNC_WORKER_METRICS_PORT


@dataclass(frozen=True)
class ServingAccess:
    """How one Endpoint's serving pods authenticate callers, as the pod spec carries it."""

    mode: AuthMode
    endpoint: str  # NAMESPACE/NAME, what the SubjectAccessReview asks about
    api_keys_secret: str | None = None
    service_account: str | None = None  # KubernetesRBAC: the pods review tokens as this account

    @property
    def reviews_tokens(self) -> bool:
        return self.mode == "KubernetesRBAC"


def serving_access(
    endpoint: Endpoint, settings: Settings, model_service_account: str | None
) -> ServingAccess:
    """A Model's own ServiceAccount (IRSA, workload identity) wins; the reviewer role is bound to it."""
    mode = auth_mode_of(endpoint.spec)
    auth = endpoint.spec.auth
    secret = auth.secret_ref.name if auth is not None and auth.secret_ref is not None else None
    account = (model_service_account or settings.auth.service_account) if mode == "KubernetesRBAC" else None
    return ServingAccess(mode, f"{endpoint.namespace}/{endpoint.name}", secret, account)


def access_env(access: ServingAccess) -> dict[str, str]:
    """The serving runtime's auth settings, always said (the runtime's own default is None). The
    API server and the token are the in-cluster ones the projected volume provides."""
    env: dict[str, str] = {ENV["auth_mode"]: access.mode}
    if access.reviews_tokens:
        env[ENV["auth_endpoint"]] = access.endpoint
    if access.api_keys_secret is not None:
        env[ENV["api_keys_dir"]] = API_KEYS_MOUNT_PATH
    return env


def access_volumes(access: ServingAccess) -> list[dict[str, Any]]:
    """APIKey: the Secret of keys (a Secret volume follows rotation). KubernetesRBAC: the account's
    token, the cluster CA and the namespace, projected as automounting would, but for the server
    container alone: the storage-initializer never gets a Kubernetes credential."""
    if access.api_keys_secret is not None:
        return [{"name": API_KEYS_VOLUME, "secret": {"secretName": access.api_keys_secret}}]
    if access.reviews_tokens:
        return [
            {
                "name": KUBE_API_VOLUME,
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "path": posixpath.basename(IN_CLUSTER_TOKEN_FILE),
                                "expirationSeconds": TOKEN_SECONDS,
                            }
                        },
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}
                                ]
                            }
                        },
                    ]
                },
            }
        ]
    return []


def access_mounts(access: ServingAccess) -> list[dict[str, Any]]:
    if access.api_keys_secret is not None:
        return [{"name": API_KEYS_VOLUME, "mountPath": API_KEYS_MOUNT_PATH, "readOnly": True}]
    if access.reviews_tokens:
        return [{"name": KUBE_API_VOLUME, "mountPath": KUBE_API_MOUNT_PATH, "readOnly": True}]
    return []


# ---------------------------------------------------------------- network


def _from_namespace(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: name}}}


def caller_namespaces(endpoint: Endpoint, settings: Settings) -> list[str]:
    """Namespaces whose pods may open connections to the serving pods: the route's proxy, the
    operator (bake metrics), monitoring, and the ones the settings add. With routing.mode none
    the callers are in-cluster clients, so the Endpoint's own namespace is admitted too."""
    policy = settings.network_policy
    mode = settings.routing.mode
    names = [policy.operator_namespace, policy.monitoring_namespace, *policy.allowed_namespaces]
    if mode == "gateway":
        names.append(settings.routing.gateway.namespace)
    elif mode == "ingress":
        names.append(policy.ingress_namespace)
    else:
        names.append(endpoint.namespace)
    return sorted(set(names))


def network_policy(
    endpoint: Endpoint,
    settings: Settings,
    *,
    async_metrics: bool = False,
    interceptor: bool = False,
    peers: bool = False,
) -> Manifest | None:
    """One NetworkPolicy over every serving pod of the Endpoint (all configs and variants, and the
    async front door): ingress on the serving port from the caller namespaces only (and the KEDA
    HTTP interceptor's, which forwards serverless variants' traffic), and on the async workers'
    metrics port when there are some. With MultiModel variants (peers) the Endpoint's serving
    pods reach each other on the serving port too: a replica forwards a model's request to the
    replica that holds it, and a new fleet asks the old one which models to warm. Egress is left
    alone (model downloads)."""
    if not settings.network_policy.enabled:
        return None
    sources = caller_namespaces(endpoint, settings)
    if interceptor and settings.serverless.interceptor.namespace not in sources:
        sources = [*sources, settings.serverless.interceptor.namespace]
    meta = object_meta(
        endpoint,
        network_policy_name(endpoint.name),
        labels.endpoint_labels(endpoint.name, NETWORK_POLICY_COMPONENT),
    )

    def pods() -> dict[str, Any]:
        return {"matchLabels": {labels.ENDPOINT: labels.endpoint_label(endpoint.name)}}

    ingress: list[dict[str, Any]] = [
        {
            "from": [_from_namespace(name) for name in sources],
            "ports": [
                {"protocol": "TCP", "port": port}
                for port in (DEFAULT_PORT, *((ASYNC_METRICS_PORT,) if async_metrics else ()))
            ],
        }
    ]
    if peers:  # a podSelector alone: pods of this namespace
        ingress.append(
            {"from": [{"podSelector": pods()}], "ports": [{"protocol": "TCP", "port": DEFAULT_PORT}]}
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta,
        "spec": {"podSelector": pods(), "policyTypes": ["Ingress"], "ingress": ingress},
    }


# ---------------------------------------------------------------- identity


def reviewer_binding_name(settings: Settings, namespace: str, account: str) -> str:
    return f"{settings.auth.reviewer_cluster_role}:{namespace}:{account}"


def serving_identity(namespace: str, account: str, settings: Settings) -> list[Manifest]:
    """What lets KubernetesRBAC serving pods in namespace review tokens as account: the account
    (only Berth's own; a Model's account is the user's) and a ClusterRoleBinding of the reviewer
    ClusterRole to it. Shared by every Endpoint of the namespace, so neither has an owner: they
    stay when the last Endpoint goes, and the account goes with its namespace."""
    meta_labels = {
        labels.PART_OF: labels.PART_OF_VALUE,
        labels.MANAGED_BY: labels.MANAGED_BY_VALUE,
        labels.COMPONENT: "invoke-auth",
    }
    objects: list[Manifest] = []
    if account == settings.auth.service_account:
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": account, "namespace": namespace, "labels": dict(meta_labels)},
                "automountServiceAccountToken": False,  # the server container mounts its token itself
            }
        )
    objects.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {
                "name": reviewer_binding_name(settings, namespace, account),
                "labels": dict(meta_labels),
            },
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": settings.auth.reviewer_cluster_role,
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        }
    )
    return objects

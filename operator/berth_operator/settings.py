"""Operator settings and the instance-type catalog, loaded from a mounted YAML file.

The Helm chart renders this file into a ConfigMap; `berth operator --settings FILE`,
`berth render --settings FILE` and `berth up --settings FILE` read it. Without a file the
defaults below apply.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .quantity import QUANTITY_PATTERN

DEFAULT_CPU_IMAGE = "ghcr.io/berth-dev/berth-serving:0.1.0"
DEFAULT_GPU_IMAGE = "ghcr.io/berth-dev/berth-serving-gpu:0.1.0"


class SettingsModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


Quantity = int | float | str  # 1, 0.5 or "500m", as a YAML file or a Helm value gives it


class Quantities(SettingsModel):
    """Requests and limits of one replica; numbers are allowed (cpu: 0.5), as Helm values give them."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)  # true is not 1

    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)

    @field_validator("requests", "limits")
    @classmethod
    def _quantities(cls, values: dict[str, Quantity]) -> dict[str, Quantity]:
        for name, value in values.items():
            if not re.match(QUANTITY_PATTERN, str(value)):
                raise ValueError(f"{name}: {value!r} is not a quantity (like 2, 0.5, 500m or 2Gi)")
        return values


class InstanceType(SettingsModel):
    """Hardware for one replica: what a variant's instanceType names."""

    accelerator: Literal["nvidia"] | None = None
    resources: Quantities = Field(default_factory=Quantities)
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    # The model volume's sizeLimit: the largest model (unpacked) a replica of this type can hold.
    model_volume_size_limit: str = Field(
        default="10Gi", alias="modelVolumeSizeLimit", pattern=QUANTITY_PATTERN
    )
    # What one replica of this type costs an hour (any currency): `berth recommend` prices with it.
    price_per_hour: float | None = Field(default=None, alias="pricePerHour", ge=0)


def default_catalog() -> dict[str, InstanceType]:
    def cpu(cores: str, memory: str) -> InstanceType:
        quantities: dict[str, Quantity] = {"cpu": cores, "memory": memory}
        return InstanceType(resources=Quantities(requests=quantities, limits=dict(quantities)))

    return {
        "cpu-small": cpu("1", "2Gi"),
        "cpu-large": cpu("4", "8Gi"),
        "gpu-small": InstanceType(
            accelerator="nvidia",
            resources=Quantities(requests={"cpu": "2", "memory": "8Gi"}, limits={"nvidia.com/gpu": 1}),
            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        ),
    }


class GatewayRef(SettingsModel):
    """The Gateway that Endpoint HTTPRoutes attach to."""

    name: str = "berth"
    namespace: str = "berth-system"
    section_name: str | None = Field(default=None, alias="sectionName")


class Routing(SettingsModel):
    mode: Literal["gateway", "ingress", "none"] = "gateway"
    gateway: GatewayRef = Field(default_factory=GatewayRef)
    ingress_class_name: str = Field(default="nginx", alias="ingressClassName")
    # Base of status.url: http://GATEWAY/endpoints/NAMESPACE/NAME/invocations
    public_url: str = Field(default="http://localhost", alias="publicUrl")


class Images(SettingsModel):
    cpu: str = DEFAULT_CPU_IMAGE
    gpu: str = DEFAULT_GPU_IMAGE
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", alias="pullPolicy"
    )


class Rollback(SettingsModel):
    # Optional Prometheus to read the new fleet's metrics from; empty = scrape pods directly.
    prometheus_url: str = Field(default="", alias="prometheusUrl")


NAMESPACE_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class NetworkPolicySettings(SettingsModel):
    """A NetworkPolicy per Endpoint: its serving pods accept traffic only from these namespaces."""

    enabled: bool = True
    # Prometheus (or whatever scrapes /metrics) runs here.
    monitoring_namespace: str = Field(
        default="monitoring", alias="monitoringNamespace", pattern=NAMESPACE_NAME
    )
    # The operator scrapes the new fleet's /metrics during a bake. The chart sets its release namespace.
    operator_namespace: str = Field(default="berth-system", alias="operatorNamespace", pattern=NAMESPACE_NAME)
    # routing.mode ingress: where the ingress controller runs.
    ingress_namespace: str = Field(default="ingress-nginx", alias="ingressNamespace", pattern=NAMESPACE_NAME)
    # Callers that reach the Services directly (routing.mode none, in-cluster clients).
    allowed_namespaces: list[str] = Field(default_factory=list, alias="allowedNamespaces")

    @field_validator("allowed_namespaces")
    @classmethod
    def _namespaces(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.match(NAMESPACE_NAME, name):
                raise ValueError(f"{name!r} is not a namespace name")
        return names


class AuthSettings(SettingsModel):
    """What serving pods of KubernetesRBAC Endpoints run as: a ServiceAccount per namespace, bound to
    a ClusterRole that may create TokenReviews and SubjectAccessReviews (the chart creates it)."""

    service_account: str = Field(default="berth-serving", alias="serviceAccount", pattern=NAMESPACE_NAME)
    reviewer_cluster_role: str = Field(
        default="berth-invoke-reviewer", alias="reviewerClusterRole", min_length=1
    )


class AutoscalingSettings(SettingsModel):
    # hpa: a HorizontalPodAutoscaler (request-based targets need prometheus-adapter);
    # keda: a KEDA ScaledObject with a Prometheus trigger for request targets (CPU stays on an HPA).
    scaler: Literal["hpa", "keda"] = "hpa"
    # The Prometheus KEDA queries; empty means rollback.prometheusUrl.
    prometheus_url: str = Field(default="", alias="prometheusUrl", pattern=r"^(https?://.*)?$")


REDIS_URL = r"^rediss?://.+"
SECRET_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
MSG_REDIS_ONE_SOURCE = "async.redis: give url or secretRef, not both"


class RedisSecretRef(SettingsModel):
    """A Secret in each namespace with async Endpoints (pods read Secrets of their own namespace)."""

    name: str = Field(pattern=SECRET_NAME, max_length=253)
    # The entry holding the redis:// or rediss:// URL the front door and the workers connect with.
    key: str = Field(pattern=SECRET_KEY, max_length=253)
    # Entries KEDA reads (it takes host:port and the password apart, not a URL): without
    # addressKey an autoscaled async variant cannot get its ScaledObject (the status says so).
    address_key: str | None = Field(default=None, alias="addressKey", pattern=SECRET_KEY, max_length=253)
    password_key: str | None = Field(default=None, alias="passwordKey", pattern=SECRET_KEY, max_length=253)


class RedisSettings(SettingsModel):
    """The Redis (or Valkey, 7 or later) whose streams queue async inferences."""

    url: str | None = Field(default=None, pattern=REDIS_URL)
    secret_ref: RedisSecretRef | None = Field(default=None, alias="secretRef")

    @model_validator(mode="after")
    def _one_source(self) -> RedisSettings:
        if self.url is not None and self.secret_ref is not None:
            raise ValueError(MSG_REDIS_ONE_SOURCE)
        return self

    @property
    def configured(self) -> bool:
        return self.url is not None or self.secret_ref is not None


class AsyncSettings(SettingsModel):
    redis: RedisSettings = Field(default_factory=RedisSettings)


DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
MSG_CACHE_ONE_SOURCE = "modelCache.volume: give exactly one of hostPath or persistentVolumeClaim"


class InterceptorRef(SettingsModel):
    """The KEDA HTTP add-on's interceptor Service: serverless variants' traffic goes through it."""

    name: str = Field(default="keda-add-ons-http-interceptor-proxy", pattern=DNS_LABEL, max_length=63)
    namespace: str = Field(default="keda", pattern=DNS_LABEL, max_length=63)
    port: int = Field(default=8080, ge=1, le=65535)


class ServerlessSettings(SettingsModel):
    interceptor: InterceptorRef = Field(default_factory=InterceptorRef)


class HostPathSource(SettingsModel):
    path: str = Field(pattern=r"^/.+")


class ClaimSource(SettingsModel):
    claim_name: str = Field(alias="claimName", pattern=SECRET_NAME, max_length=253)


class CacheVolume(SettingsModel):
    """A node-local volume holding model files by sha256 (a hostPath, or a PVC bound per node)."""

    host_path: HostPathSource | None = Field(default=None, alias="hostPath")
    persistent_volume_claim: ClaimSource | None = Field(default=None, alias="persistentVolumeClaim")

    @model_validator(mode="after")
    def _one_source(self) -> CacheVolume:
        if (self.host_path is None) == (self.persistent_volume_claim is None):
            raise ValueError(MSG_CACHE_ONE_SOURCE)
        return self

    def source(self) -> dict[str, Any]:
        """The pod volume source."""
        if self.host_path is not None:
            return {"hostPath": {"path": self.host_path.path, "type": "DirectoryOrCreate"}}
        assert self.persistent_volume_claim is not None
        return {"persistentVolumeClaim": {"claimName": self.persistent_volume_claim.claim_name}}


class ModelCacheSettings(SettingsModel):
    volume: CacheVolume | None = None


class Settings(SettingsModel):
    routing: Routing = Field(default_factory=Routing)
    images: Images = Field(default_factory=Images)
    instance_types: dict[str, InstanceType] = Field(default_factory=default_catalog, alias="instanceTypes")
    namespaces: list[str] = Field(default_factory=list, description="Watched namespaces; empty = all.")
    rollback: Rollback = Field(default_factory=Rollback)
    network_policy: NetworkPolicySettings = Field(
        default_factory=NetworkPolicySettings, alias="networkPolicy"
    )
    auth: AuthSettings = Field(default_factory=AuthSettings)
    autoscaling: AutoscalingSettings = Field(default_factory=AutoscalingSettings)
    async_: AsyncSettings = Field(default_factory=AsyncSettings, alias="async")
    serverless: ServerlessSettings = Field(default_factory=ServerlessSettings)
    model_cache: ModelCacheSettings = Field(default_factory=ModelCacheSettings, alias="modelCache")


class SettingsError(ValueError):
    """The settings file is missing or invalid; the message says which field and why."""


def _helm_merge(base: Any, override: Any) -> Any:
    """Helm's merge of values over defaults: maps merge key by key, null removes a key."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return override
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _helm_merge(base.get(key), value)
    return merged


def settings_from_values(values: dict[str, Any]) -> dict[str, Any]:
    """The settings a Helm install of charts/berth with these values gives the operator, as its
    `berth.settings` helper makes them: the values' settings merged over the defaults (which are
    the chart's own defaults), an empty image or Gateway namespace meaning the default, and
    watchNamespaces as the namespaces. `berth render` and `berth up` read a values file so."""
    defaults = Settings().model_dump(by_alias=True, mode="json")
    merged: dict[str, Any] = _helm_merge(defaults, values.get("settings") or {})
    for images_key in ("cpu", "gpu"):
        if not (merged.get("images") or {}).get(images_key):
            merged.setdefault("images", {})[images_key] = defaults["images"][images_key]
    gateway = (merged.get("routing") or {}).get("gateway") or {}
    if not gateway.get("namespace"):
        gateway["namespace"] = defaults["routing"]["gateway"]["namespace"]
    policy = merged.get("networkPolicy") or {}
    if not policy.get("operatorNamespace"):  # the chart's release namespace
        policy["operatorNamespace"] = defaults["networkPolicy"]["operatorNamespace"]
    auth = merged.get("auth") or {}
    if not auth.get("reviewerClusterRole"):  # the chart's FULLNAME-invoke-reviewer
        auth["reviewerClusterRole"] = defaults["auth"]["reviewerClusterRole"]
    merged["namespaces"] = list(values.get("watchNamespaces") or [])
    redis = _redis_from_values(values)
    if redis:
        merged["async"] = {"redis": redis}
    return merged


# The release the values of a file are read as (the docs install `berth` into berth-system).
VALUES_RELEASE = "berth"
VALUES_NAMESPACE = "berth-system"


def _redis_from_values(values: dict[str, Any]) -> dict[str, Any]:
    """The chart's async.redis values as the `berth.asyncRedis` helper turns them into settings."""
    redis = (values.get("async") or {}).get("redis") or {}
    given = [
        bool(redis.get("url")),
        bool(redis.get("secretRef")),
        bool((redis.get("deploy") or {}).get("enabled")),
    ]
    if sum(given) > 1:
        raise SettingsError("async.redis: give one of url, secretRef and deploy.enabled")
    if given[2]:
        fullname = values.get("fullnameOverride") or VALUES_RELEASE
        return {"url": f"redis://{fullname}-redis.{VALUES_NAMESPACE}.svc:6379"}
    if given[0]:
        return {"url": redis["url"]}
    if given[1]:
        return {"secretRef": redis["secretRef"]}
    return {}


def load_settings(path: str | Path | None) -> Settings:
    """Settings from a YAML file, or the defaults when path is None. The file is an operator
    settings file (the chart's ConfigMap) or a chart values file with a `settings:` block."""
    if path is None:
        return Settings()
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"cannot read settings {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise SettingsError(f"invalid settings {path}: expected a mapping at the top")
    redis_values = (raw.get("async") or {}).get("redis") if isinstance(raw.get("async"), dict) else None
    # Chart values: no settings file has these (async.redis.deploy is a chart value only).
    if (
        "settings" in raw
        or "watchNamespaces" in raw
        or (isinstance(redis_values, dict) and "deploy" in redis_values)
    ):
        if not isinstance(raw.get("settings") or {}, dict):
            raise SettingsError(f"invalid settings {path}: the chart values' settings must be a mapping")
        raw = settings_from_values(raw)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"invalid settings {path}: {problems}") from exc

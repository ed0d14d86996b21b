"""Endpoint: a stable URL that serves one EndpointConfig at a time, and how it moves between them."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .meta import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    ApiModel,
    Condition,
    LocalObjectReference,
    Resource,
    conditions_field,
)

MSG_OVERRIDE_NAMES_UNIQUE = "variantOverrides: variantName must be unique"
MSG_API_KEY_NEEDS_SECRET = "auth.secretRef: mode APIKey needs the Secret that holds the keys"
MSG_SECRET_ONLY_FOR_API_KEY = "auth.secretRef: only mode APIKey reads a Secret"

AuthMode = Literal["KubernetesRBAC", "APIKey", "None"]
# What an Endpoint without spec.auth gets on a cluster. Local mode's default is None on loopback.
CLUSTER_DEFAULT_AUTH_MODE: AuthMode = "KubernetesRBAC"


class CapacitySize(ApiModel):
    """A share of the traffic."""

    type: Literal["Percent"] = Field(default="Percent", description="Unit of value: Percent of traffic.")
    value: int = Field(ge=1, le=100, description="Traffic share in percent.")


class TrafficRouting(ApiModel):
    """How traffic moves from the old fleet to the new one."""

    type: Literal["AllAtOnce", "Canary", "Linear"] = Field(
        default="AllAtOnce", description="AllAtOnce, Canary (canarySize first, then all) or Linear (steps)."
    )
    wait_interval_seconds: int = Field(
        default=60, ge=0, le=3600, description="Bake time between traffic steps, in seconds."
    )
    canary_size: CapacitySize = Field(
        default_factory=lambda: CapacitySize(value=10), description="Canary: share of the first step."
    )
    linear_step_size: CapacitySize = Field(
        default_factory=lambda: CapacitySize(value=25), description="Linear: share added at each step."
    )


class BlueGreen(ApiModel):
    """Blue/green rollout: the new fleet starts beside the old one and takes over its traffic."""

    traffic_routing: TrafficRouting = Field(
        default_factory=TrafficRouting, description="Traffic shifting policy."
    )
    termination_wait_seconds: int = Field(
        default=30, ge=0, le=3600, description="Keep the old fleet this long after the full shift."
    )
    maximum_execution_timeout_seconds: int = Field(
        default=1800,
        ge=60,
        le=28800,
        description="Roll back when the new fleet is not serving within this time.",
    )


class AutoRollback(ApiModel):
    """Thresholds checked on the new fleet during every bake."""

    max_error_rate_percent: float = Field(
        default=5, ge=0, le=100, description="Largest share of 5xx answers from the new fleet, in percent."
    )
    max_p99_latency_ms: float = Field(
        default=0, ge=0, description="Largest p99 model latency in ms; 0 = not checked."
    )


class DeploymentConfig(ApiModel):
    """How a change of endpointConfigName is rolled out."""

    blue_green: BlueGreen = Field(
        default_factory=BlueGreen, description="Blue/green rollout of a config change."
    )
    auto_rollback: AutoRollback | None = Field(
        default=None, description="Roll back automatically when the new fleet misbehaves during a bake."
    )


class VariantOverride(ApiModel):
    """Weights and capacity changed in place, without a new fleet."""

    variant_name: str = Field(
        pattern=DNS_LABEL, max_length=63, description="A production variant of the config."
    )
    desired_weight: float | None = Field(default=None, ge=0, le=1_000_000, description="New traffic weight.")
    desired_instance_count: int | None = Field(default=None, ge=1, le=1000, description="New replica count.")


class InvokeAuth(ApiModel):
    """Who may invoke the Endpoint; checked by the serving runtime on every invoke."""

    mode: AuthMode = Field(
        default=CLUSTER_DEFAULT_AUTH_MODE,
        description=(
            "KubernetesRBAC: a bearer token the API server accepts (TokenReview) of a user allowed the verb"
            " invoke on endpoints/NAME in group berth.dev (SubjectAccessReview). APIKey: a key of the"
            " Secret in secretRef, as Authorization: Bearer KEY or X-Berth-Api-Key. None: open to"
            " anyone who reaches it (written explicitly)."
        ),
    )
    secret_ref: LocalObjectReference | None = Field(
        default=None,
        description=(
            "APIKey: the Secret holding the keys, one entry per key (the entry's name names the caller);"
            " a value sha256:HEX is the key stored hashed."
        ),
    )

    x_kubernetes_validations: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "!has(self.mode) || self.mode != 'APIKey' || has(self.secretRef)",
            "message": MSG_API_KEY_NEEDS_SECRET,
        },
        {
            "rule": "(has(self.mode) && self.mode == 'APIKey') || !has(self.secretRef)",
            "message": MSG_SECRET_ONLY_FOR_API_KEY,
        },
    ]

    @model_validator(mode="after")
    def _check(self) -> InvokeAuth:
        if self.mode == "APIKey" and self.secret_ref is None:
            raise ValueError(MSG_API_KEY_NEEDS_SECRET)
        if self.mode != "APIKey" and self.secret_ref is not None:
            raise ValueError(MSG_SECRET_ONLY_FOR_API_KEY)
        return self


class EndpointSpec(ApiModel):
    """A stable URL that serves one EndpointConfig at a time."""

    endpoint_config_name: str = Field(
        pattern=DNS_SUBDOMAIN, max_length=253, description="The EndpointConfig to serve."
    )
    deployment_config: DeploymentConfig = Field(
        default_factory=DeploymentConfig, description="How a change of endpointConfigName is rolled out."
    )
    variant_overrides: list[VariantOverride] = Field(
        default_factory=list, max_length=10, description="Weights and instance counts changed in place."
    )
    auth: InvokeAuth | None = Field(
        default=None,
        description=(
            "Invoke authentication. Absent: KubernetesRBAC on a cluster; in local mode (berth up) None on"
            " loopback."
        ),
    )

    x_kubernetes_validations: ClassVar[list[dict[str, str]]] = [
        {
            "rule": (
                "!has(self.variantOverrides) || self.variantOverrides.all(o,"
                " self.variantOverrides.exists_one(p, p.variantName == o.variantName))"
            ),
            "message": MSG_OVERRIDE_NAMES_UNIQUE,
        },
    ]

    @model_validator(mode="after")
    def _check(self) -> EndpointSpec:
        names = [o.variant_name for o in self.variant_overrides]
        if len(names) != len(set(names)):
            raise ValueError(MSG_OVERRIDE_NAMES_UNIQUE)
        return self


Phase = Literal["Creating", "InService", "Updating", "RollingBack", "Failed", "Deleting"]


class VariantStatus(ApiModel):
    """Traffic and replicas of one variant."""

    variant_name: str = Field(description="Variant name.")
    model_name: str = Field(description="Model served by the variant.")
    current_weight: float = Field(default=0, description="Weight the route carries now.")
    desired_weight: float = Field(default=0, description="Weight the route should carry.")
    current_instance_count: int = Field(default=0, description="Replicas that exist.")
    desired_instance_count: int = Field(default=0, description="Replicas wanted.")
    ready_instance_count: int = Field(default=0, description="Replicas that answer /ping.")
    backlog_size: int | None = Field(
        default=None, ge=0, description="Async variants: messages queued or in flight on its stream."
    )
    backlog_per_instance: float | None = Field(
        default=None,
        ge=0,
        description="Async variants: backlogSize per ready replica (all of it at 0 ready).",
    )
    oldest_message_age_seconds: float | None = Field(
        default=None, ge=0, description="Async variants: age of the oldest message on its stream."
    )


class RolloutStatus(ApiModel):
    """Enough of a rollout to resume it after an operator restart."""

    target_endpoint_config_name: str = Field(description="Config being rolled out.")
    step: int = Field(default=0, ge=0, description="Traffic step reached (0 = new fleet not yet serving).")
    started_at: str = Field(description="When the rollout started (RFC 3339).")
    step_started_at: str | None = Field(default=None, description="When the current step started (RFC 3339).")
    traffic_shifted_percent: int = Field(
        default=0, ge=0, le=100, description="Share of traffic on the new config."
    )
    state: Literal["Provisioning", "Baking", "Terminating"] = Field(
        default="Provisioning",
        description="Provisioning the new fleet, Baking a step, or Terminating the old fleet.",
    )
    retained_instance_counts: dict[str, int] = Field(
        default_factory=dict, description="Replicas the old fleet had per variant name, kept by the new one."
    )
    warm_from: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "MultiModel variants of the new config, by name: the old fleet's GET /models URL their"
            " replicas load the most used models from before they take traffic."
        ),
    )


class RollbackRecord(ApiModel):
    """The last automatic rollback; that config is not tried again until spec.endpointConfigName changes."""

    endpoint_config_name: str = Field(description="Config that was rolled back.")
    reason: str = Field(description="Why it was rolled back.")
    time: str = Field(description="When it was rolled back (RFC 3339).")


class EndpointStatus(ApiModel):
    """What the Endpoint serves now and how its rollout goes (written by the operator)."""

    observed_generation: int | None = Field(default=None, description="Last metadata.generation seen.")
    phase: Phase | None = Field(
        default=None, description="Creating, InService, Updating, RollingBack, Failed or Deleting."
    )
    url: str | None = Field(default=None, description="Where to send requests.")
    endpoint_config_name: str | None = Field(default=None, description="The config now serving.")
    pending_endpoint_config_name: str | None = Field(default=None, description="The config being rolled out.")
    production_variants: list[VariantStatus] = Field(default_factory=list, description="Per-variant state.")
    pending_production_variants: list[VariantStatus] = Field(
        default_factory=list, description="Per-variant state of the config being rolled out."
    )
    rollout: RolloutStatus | None = Field(default=None, description="Rollout in progress, if any.")
    failure_reason: str | None = Field(
        default=None, description="Why the endpoint or its last rollout failed."
    )
    last_rollback: RollbackRecord | None = Field(
        default=None, description="The last automatic rollback, if any."
    )
    warm_from: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "MultiModel variants of the serving config, by name: the URL their rollout warmed them from"
            " (rollout.warmFrom), kept so that their pods do not change when the rollout ends."
        ),
    )
    draining_endpoint_config_names: list[str] = Field(
        default_factory=list,
        max_length=10,
        description="Async configs that left the route but still answer the messages queued for them.",
    )
    capture_dropped_total: int | None = Field(
        default=None,
        ge=0,
        description="Data capture: events the serving fleet had dropped when last looked at.",
    )
    conditions: list[Condition] = conditions_field(
        "Ready, Progressing and Degraded; HasBacklogWithoutCapacity for async endpoints;"
        " CaptureDegraded while data capture drops events."
    )


def auth_mode_of(spec: EndpointSpec, default: AuthMode = CLUSTER_DEFAULT_AUTH_MODE) -> AuthMode:
    """The mode the Endpoint is served with: its own, else the caller's default."""
    return spec.auth.mode if spec.auth is not None else default


class Endpoint(Resource):
    """A stable URL that serves one EndpointConfig at a time and moves between configs without downtime."""

    KIND: ClassVar[str] = "Endpoint"
    PLURAL: ClassVar[str] = "endpoints"
    SHORT_NAME: ClassVar[str] = "bep"
    kind: str = "Endpoint"
    spec: EndpointSpec
    status: EndpointStatus | None = None

"""EndpointConfig: production variants (which Models, on what hardware, with what weight). Immutable."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from .meta import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    ApiModel,
    Condition,
    Resource,
    ResourceRequirements,
    conditions_field,
)

MSG_VARIANT_NAMES_UNIQUE = "variantName must be unique across productionVariants and shadowProductionVariants"
MSG_WEIGHTS_POSITIVE = "at least one production variant needs initialVariantWeight > 0"
MSG_CONFIG_IMMUTABLE = (
    "EndpointConfig spec is immutable: create a new EndpointConfig and point the Endpoint at it"
)
MSG_AUTOSCALING_BOUNDS = "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"
MSG_AUTOSCALING_TARGET = (
    "autoscaling needs exactly one of targetInvocationsPerReplica or targetCPUUtilization"
)


class Autoscaling(ApiModel):
    """A HorizontalPodAutoscaler for the variant."""

    min_replicas: int = Field(default=1, ge=1, le=1000, description="Fewest replicas.")
    max_replicas: int = Field(ge=1, le=1000, description="Most replicas.")
    target_invocations_per_replica: int | None = Field(
        default=None,
        ge=1,
        description="Requests per second per replica (Pods metric berth_invocations_per_second).",
    )
    target_cpu_utilization: int | None = Field(
        default=None,
        ge=1,
        le=100,
        alias="targetCPUUtilization",
        description="Average CPU utilization in percent.",
    )
    scale_in_cooldown_seconds: int = Field(
        default=300, ge=0, le=3600, description="Scale-down stabilization window in seconds."
    )
    scale_out_cooldown_seconds: int = Field(
        default=60, ge=0, le=3600, description="Scale-up stabilization window in seconds."
    )

    x_kubernetes_validations: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
            "message": MSG_AUTOSCALING_BOUNDS,
        },
        {
            "rule": "has(self.targetInvocationsPerReplica) != has(self.targetCPUUtilization)",
            "message": MSG_AUTOSCALING_TARGET,
        },
    ]

    @model_validator(mode="after")
    def _check(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(MSG_AUTOSCALING_BOUNDS)
        if (self.target_invocations_per_replica is None) == (self.target_cpu_utilization is None):
            raise ValueError(MSG_AUTOSCALING_TARGET)
        return self


class ProductionVariant(ApiModel):
    """One fleet behind the endpoint: a model on some hardware with a share of the traffic."""

    variant_name: str = Field(
        pattern=DNS_LABEL, max_length=63, description="Unique name of the variant (DNS label)."
    )
    model_name: str = Field(
        pattern=DNS_SUBDOMAIN, max_length=253, description="A Model in the same namespace."
    )
    instance_type: str = Field(
        min_length=1, max_length=63, description="Key into the operator's instance-type catalog."
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="Override of the catalog's requests and limits."
    )
    initial_instance_count: int = Field(default=1, ge=1, le=1000, description="Replicas to start with.")
    initial_variant_weight: float = Field(
        default=1, ge=0, le=1_000_000, description="Relative traffic weight; share = weight / sum of weights."
    )
    autoscaling: Autoscaling | None = Field(default=None, description="Optional horizontal autoscaling.")
    volume_size_in_gb: int | None = Field(
        default=None,
        ge=1,
        le=512,
        alias="volumeSizeInGB",
        description="Size of each replica's model volume in GiB (default: the instance type's).",
    )


class EndpointConfigSpec(ApiModel):
    """Production variants of an endpoint. Immutable: make a new EndpointConfig to change."""

    production_variants: list[ProductionVariant] = Field(
        min_length=1, max_length=10, description="Variants that answer requests (1 to 10)."
    )
    shadow_production_variants: list[ProductionVariant] = Field(
        default_factory=list,
        max_length=10,
        description="Variants that receive a mirrored copy of the traffic and never answer.",
    )

    x_kubernetes_validations: ClassVar[list[dict[str, str]]] = [
        {"rule": "self == oldSelf", "message": MSG_CONFIG_IMMUTABLE},
        {
            "rule": (
                "self.productionVariants.all(v, self.productionVariants.exists_one(w, w.variantName == v.variantName))"
                " && (!has(self.shadowProductionVariants) || self.shadowProductionVariants.all(v,"
                " !self.productionVariants.exists(w, w.variantName == v.variantName)"
                " && self.shadowProductionVariants.exists_one(w, w.variantName == v.variantName)))"
            ),
            "message": MSG_VARIANT_NAMES_UNIQUE,
        },
        {
            "rule": "self.productionVariants.exists(v, !has(v.initialVariantWeight) || v.initialVariantWeight > 0.0)",
            "message": MSG_WEIGHTS_POSITIVE,
        },
    ]

    @model_validator(mode="after")
    def _check(self) -> EndpointConfigSpec:
        names = [v.variant_name for v in self.production_variants + self.shadow_production_variants]
        if len(names) != len(set(names)):
            raise ValueError(MSG_VARIANT_NAMES_UNIQUE)
        if not any(v.initial_variant_weight > 0 for v in self.production_variants):
            raise ValueError(MSG_WEIGHTS_POSITIVE)
        return self


class EndpointConfigStatus(ApiModel):
    """What the operator observed about the EndpointConfig (written by the operator)."""

    observed_generation: int | None = Field(default=None, description="Last metadata.generation seen.")
    conditions: list[Condition] = conditions_field("Ready: every referenced Model exists.")


class EndpointConfig(Resource):
    """Production variants: which Models, on what hardware, with what traffic weight. Spec is immutable."""

    KIND: ClassVar[str] = "EndpointConfig"
    PLURAL: ClassVar[str] = "endpointconfigs"
    SHORT_NAME: ClassVar[str] = "bec"
    kind: str = "EndpointConfig"
    spec: EndpointConfigSpec
    status: EndpointConfigStatus | None = None

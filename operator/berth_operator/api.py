"""The Berth API (berth.dev/v1alpha1) as pydantic models: the one source of truth.

The CRD schemas in `crds/` are generated from these classes (`berth crds`), and the
operator, `berth render` and local mode all parse manifests through them, so a manifest
that the cluster refuses is refused with the same words everywhere.

Defaults live here and are applied when a manifest is read, never written back into a
stored spec: Argo CD and Flux then see no drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

GROUP = "berth.dev"
VERSION = "v1alpha1"
API_VERSION: Final = "berth.dev/v1alpha1"  # a literal, so that mypy accepts it as the Literal default below

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
MODEL_URI = r"^(s3|gs|https?|pvc|file)://.+"
SHA256_HEX = r"^[a-f0-9]{64}$"

# Admission messages, shared by the CEL rules in the CRDs and the pydantic validators
# below, so `kubectl apply`, `berth render` and `berth up` refuse bad input alike.
MSG_VARIANT_NAMES_UNIQUE = "variantName must be unique across productionVariants and shadowProductionVariants"
MSG_WEIGHTS_POSITIVE = "at least one production variant needs initialVariantWeight > 0"
MSG_MODEL_IMMUTABLE = "Model spec is immutable: create a new Model and reference it from a new EndpointConfig"
MSG_CONFIG_IMMUTABLE = (
    "EndpointConfig spec is immutable: create a new EndpointConfig and point the Endpoint at it"
)
MSG_AUTOSCALING_BOUNDS = "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"
MSG_AUTOSCALING_TARGET = (
    "autoscaling needs exactly one of targetInvocationsPerReplica or targetCPUUtilization"
)
MSG_OVERRIDE_NAMES_UNIQUE = "variantOverrides: variantName must be unique"
MSG_TRANSFORM_IMMUTABLE = "TransformJob spec is immutable: create a new TransformJob to run again"
MSG_NPY_NEEDS_NO_SPLIT = (
    "input.contentType application/x-npy needs input.splitType None (one array per object)"
)
MSG_JOIN_NEEDS_LINES = "joinSource Input needs input.splitType Line and output.assembleWith Line"
MSG_OUTPUT_NOT_INPUT = "output.uri must differ from input.uri"
STORAGE_URI = r"^(s3|file)://.+"


def validation_problems(error: ValidationError) -> list[str]:
    """One "field.path[0].name: message" per problem, in the manifest's camelCase words."""
    return [f"{_location(e) or '(top)'}: {_message(e)}" for e in error.errors()]


def validation_message(error: ValidationError) -> str:
    """The problems of a refused object on one line, for a status message or failureReason."""
    return "; ".join(validation_problems(error))


def _location(error: Mapping[str, Any]) -> str:
    text = ""
    for part in error["loc"]:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _message(error: Mapping[str, Any]) -> str:
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields and wrong types are refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=False,
        strict=True,  # like the API server: "2" is not an integer, true is not a number
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest (camelCase, unset optionals left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# --------------------------------------------------------------------------- shared


class Condition(ApiModel):
    """A metav1.Condition."""

    type: str = Field(description="Condition type: Ready, Progressing or Degraded.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="A CamelCase word that says why, for machines.")
    message: str = Field(default="", description="A sentence that says why, for people.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, description="metadata.generation that the condition was computed from."
    )


class ObjectMeta(BaseModel):
    """The part of metav1.ObjectMeta that Berth reads; everything else is kept as it is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    uid: str | None = None
    resource_version: str | None = Field(default=None, alias="resourceVersion")


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace."""

    name: str = Field(description="Name of an object in the same namespace.", min_length=1, max_length=253)


class ResourceRequirements(ApiModel):
    """Container requests and limits (quantities such as "500m", "2Gi" or 1)."""

    requests: dict[str, int | str] = Field(
        default_factory=dict, max_length=16, description="Minimum resources."
    )
    limits: dict[str, int | str] = Field(
        default_factory=dict, max_length=16, description="Maximum resources."
    )


class EnvVar(ApiModel):
    """A container environment variable (core/v1 EnvVar)."""

    name: str = Field(min_length=1, max_length=256, description="Variable name.")
    value: str | None = Field(default=None, max_length=32768, description="Literal value.")
    value_from: dict[str, Any] | None = Field(
        default=None,
        max_length=1,
        description="Source for the value (secretKeyRef, configMapKeyRef, fieldRef...); passed through unchanged.",
    )


# --------------------------------------------------------------------------- Model


class RuntimeSettings(ApiModel):
    """Tuning of the built-in ONNX Runtime server."""

    max_batch_size: int = Field(
        default=32, ge=1, le=4096, description="Largest number of rows merged into one ONNX Runtime call."
    )
    max_batch_delay_ms: float = Field(
        default=2,
        ge=0,
        le=1000,
        description=(
            "Longest wait for more requests before running a batch, on GPU providers. On CPU a batch is"
            " what arrived while the previous one ran: waiting there only adds latency."
        ),
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        le=256,
        description="ONNX Runtime intra-op threads; 0 derives them from the CPU limit.",
    )
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = Field(
        default="all", description="ONNX Runtime graph optimization level."
    )


class ModelSpec(ApiModel):
    """What to serve."""

    model_uri: str = Field(
        pattern=MODEL_URI,
        max_length=2048,
        description=(
            "Where the model is: s3://, gs://, http(s)://, pvc://CLAIM/PATH or file:// (local mode). "
            "A .tar.gz is unpacked and the .onnx inside is served."
        ),
    )
    sha256: str | None = Field(
        default=None,
        pattern=SHA256_HEX,
        max_length=64,
        description="Expected SHA-256 of the downloaded file; a mismatch fails the load.",
    )
    image: str | None = Field(
        default=None,
        max_length=1024,
        description="Bring-your-own serving image honouring Berth's serving contract.",
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=64, description="Extra environment for the serving container."
    )
    credentials_secret_ref: LocalObjectReference | None = Field(
        default=None,
        description="Secret with storage credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY...).",
    )
    service_account_name: str | None = Field(
        default=None,
        max_length=253,
        description="Service account of the serving pods (IRSA / workload identity).",
    )
    runtime: RuntimeSettings = Field(
        default_factory=RuntimeSettings, description="Tuning of the built-in ONNX Runtime server."
    )

    x_kubernetes_validations: ClassVar[list[dict[str, str]]] = [
        {"rule": "self == oldSelf", "message": MSG_MODEL_IMMUTABLE},
    ]


class ModelStatus(ApiModel):
    """What the operator observed about the Model (written by the operator)."""

    observed_generation: int | None = Field(default=None, description="Last metadata.generation seen.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready.")


# --------------------------------------------------------------------------- EndpointConfig


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
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready: every referenced Model exists."
    )


# --------------------------------------------------------------------------- Endpoint


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
    conditions: list[Condition] = Field(default_factory=list, description="Ready, Progressing and Degraded.")


# --------------------------------------------------------------------------- TransformJob


class TransformInput(ApiModel):
    """The dataset: an object or a prefix in object storage, and how to read its records."""

    uri: str = Field(
        pattern=STORAGE_URI,
        max_length=2048,
        description="An object, or a prefix ending in / whose objects are all read (s3:// or file://).",
    )
    content_type: Literal["text/csv", "application/jsonlines", "application/x-npy"] = Field(
        default="text/csv", description="text/csv, application/jsonlines or application/x-npy."
    )
    split_type: Literal["Line", "None"] = Field(
        default="Line", description="Line: a record per line; None: each object is one record (or array)."
    )
    compression: Literal["None", "Gzip"] = Field(default="None", description="None or Gzip.")

    x_kubernetes_validations: ClassVar[list[dict[str, str]]] = [
        {
            "rule": (
                "!has(self.contentType) || self.contentType != 'application/x-npy'"
                " || (has(self.splitType) && self.splitType == 'None')"
            ),
            "message": MSG_NPY_NEEDS_NO_SPLIT,
        },
    ]

    @model_validator(mode="after")
    def _check(self) -> TransformInput:
        if self.content_type == "application/x-npy" and self.split_type != "None":
            raise ValueError(MSG_NPY_NEEDS_NO_SPLIT)
        return self


class TransformOutput(ApiModel):
    """Where predictions go: an object INPUT.out per input object under this prefix."""

    uri: str = Field(pattern=STORAGE_URI, max_length=2048, description="Output prefix (s3:// or file://).")
    accept: Literal["text/csv", "application/jsonlines"] = Field(
        default="text/csv", description="Format of the predictions: text/csv or application/jsonlines."
    )
    assemble_with: Literal["Line", "None"] = Field(
        default="Line",
        description="Line: a line per record; None: each batch's answer as the serving runtime writes it.",
    )


class TransformJobSpec(ApiModel):
    """Run a Model over a dataset in object storage and write the predictions back. Immutable."""

    model_name: str = Field(
        pattern=DNS_SUBDOMAIN, max_length=253, description="A Model in the same namespace."
    )
    input: TransformInput = Field(description="The dataset to read.")
    output: TransformOutput = Field(description="Where to write the predictions.")
    batch_strategy: Literal["SingleRecord", "MultiRecord"] = Field(
        default="MultiRecord",
        description="MultiRecord: records are sent to the model in batches; SingleRecord: one at a time.",
    )
    max_payload_bytes: int = Field(
        default=6 * 1024 * 1024,
        ge=1,
        le=100 * 1024 * 1024,
        description="Largest batch of input records, in bytes (a single larger record is sent alone).",
    )
    max_concurrent_transforms: int = Field(
        default=2, ge=1, le=64, description="Batches in flight per instance (read while the model runs)."
    )
    instance_type: str = Field(
        min_length=1, max_length=63, description="Key into the operator's instance-type catalog."
    )
    instance_count: int = Field(
        default=1, ge=1, le=100, description="Pods working in parallel; each takes a share of the objects."
    )
    join_source: Literal["None", "Input"] = Field(
        default="None", description="Input: each output line carries its input record."
    )
    max_errors: int = Field(
        default=0,
        ge=0,
        le=1_000_000_000,
        description="Malformed records tolerated per instance; they are listed in INPUT.errors objects.",
    )
    ttl_seconds_after_finished: int = Field(
        default=3600,
        ge=0,
        le=604800,
        description="Seconds after the Job finished before its Job and pods are deleted.",
    )

    x_kubernetes_validations: ClassVar[list[dict[str, str]]] = [
        {"rule": "self == oldSelf", "message": MSG_TRANSFORM_IMMUTABLE},
        {
            "rule": (
                "!has(self.joinSource) || self.joinSource == 'None'"
                " || ((!has(self.input.splitType) || self.input.splitType == 'Line')"
                " && (!has(self.output.assembleWith) || self.output.assembleWith == 'Line'))"
            ),
            "message": MSG_JOIN_NEEDS_LINES,
        },
        {"rule": "self.output.uri != self.input.uri", "message": MSG_OUTPUT_NOT_INPUT},
    ]

    @model_validator(mode="after")
    def _check(self) -> TransformJobSpec:
        if self.join_source == "Input" and (
            self.input.split_type != "Line" or self.output.assemble_with != "Line"
        ):
            raise ValueError(MSG_JOIN_NEEDS_LINES)
        if self.output.uri == self.input.uri:
            raise ValueError(MSG_OUTPUT_NOT_INPUT)
        return self


TransformPhase = Literal["Pending", "Running", "Succeeded", "Failed"]


class TransformJobStatus(ApiModel):
    """How the transform goes (written by the operator)."""

    observed_generation: int | None = Field(default=None, description="Last metadata.generation seen.")
    phase: TransformPhase | None = Field(default=None, description="Pending, Running, Succeeded or Failed.")
    job_name: str | None = Field(default=None, description="The batch/v1 Job running the transform.")
    records_done: int | None = Field(
        default=None, description="Records transformed, as reported by the finished pods."
    )
    records_total: int | None = Field(
        default=None, description="Records read (transformed and malformed); known when every pod finished."
    )
    start_time: str | None = Field(default=None, description="When the Job started (RFC 3339).")
    completion_time: str | None = Field(default=None, description="When the Job finished (RFC 3339).")
    failure_reason: str | None = Field(default=None, description="Why the transform failed or waits.")
    conditions: list[Condition] = Field(default_factory=list, description="Complete and Failed.")


# --------------------------------------------------------------------------- resources


class Resource(ApiModel):
    """A berth.dev object: apiVersion, kind, metadata, spec and status."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    SHORT_NAME: ClassVar[str]

    api_version: Literal["berth.dev/v1alpha1"] = API_VERSION
    kind: str
    metadata: ObjectMeta

    @field_validator("kind")
    @classmethod
    def _kind_matches(cls, value: str) -> str:
        if value != cls.KIND:
            raise ValueError(f"kind must be {cls.KIND}")
        return value

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace


class Model(Resource):
    """A model to serve: where its file is and how to run it. Spec is immutable."""

    KIND: ClassVar[str] = "Model"
    PLURAL: ClassVar[str] = "models"
    SHORT_NAME: ClassVar[str] = "bm"
    kind: str = "Model"
    spec: ModelSpec
    status: ModelStatus | None = None


class EndpointConfig(Resource):
    """Production variants: which Models, on what hardware, with what traffic weight. Spec is immutable."""

    KIND: ClassVar[str] = "EndpointConfig"
    PLURAL: ClassVar[str] = "endpointconfigs"
    SHORT_NAME: ClassVar[str] = "bec"
    kind: str = "EndpointConfig"
    spec: EndpointConfigSpec
    status: EndpointConfigStatus | None = None


class Endpoint(Resource):
    """A stable URL that serves one EndpointConfig at a time and moves between configs without downtime."""

    KIND: ClassVar[str] = "Endpoint"
    PLURAL: ClassVar[str] = "endpoints"
    SHORT_NAME: ClassVar[str] = "bep"
    kind: str = "Endpoint"
    spec: EndpointSpec
    status: EndpointStatus | None = None


class TransformJob(Resource):
    """A batch transform: a Model run over a dataset in object storage, predictions written back."""

    KIND: ClassVar[str] = "TransformJob"
    PLURAL: ClassVar[str] = "transformjobs"
    SHORT_NAME: ClassVar[str] = "btj"
    kind: str = "TransformJob"
    spec: TransformJobSpec
    status: TransformJobStatus | None = None


RESOURCE_KINDS: dict[str, type[Resource]] = {
    cls.KIND: cls for cls in (Model, EndpointConfig, Endpoint, TransformJob)
}

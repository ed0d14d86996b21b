"""EndpointConfig: production variants (which Models, on what hardware, with what weight). Immutable."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from .meta import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    STORAGE_URI,
    ApiModel,
    Condition,
    LocalObjectReference,
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
    "autoscaling needs exactly one of targetInvocationsPerReplica, targetCPUUtilization"
    " or targetBacklogPerInstance"
)
MSG_ASYNC_OUTPUT_URI = "asyncInferenceConfig.outputConfig.outputUri must start with s3:// or file://"
MSG_ASYNC_FAILURE_URI = "asyncInferenceConfig.outputConfig.failureUri must start with s3:// or file://"
MSG_ASYNC_WEBHOOK = (
    "asyncInferenceConfig.outputConfig.notification: a webhook must be an http:// or https:// URL"
)
MSG_ASYNC_NO_SHADOWS = "shadowProductionVariants must be empty when asyncInferenceConfig is set"
MSG_MIN_ZERO_NEEDS_ASYNC = "autoscaling.minReplicas 0 is allowed only with asyncInferenceConfig"
MSG_BACKLOG_NEEDS_ASYNC = "autoscaling.targetBacklogPerInstance is allowed only with asyncInferenceConfig"
MSG_ASYNC_NEEDS_BACKLOG = (
    "autoscaling of an asyncInferenceConfig scales on the queue: use targetBacklogPerInstance"
)
MSG_SERVERLESS_OR_INSTANCE = "a production variant needs exactly one of instanceType or serverlessConfig"
MSG_SERVERLESS_NO_COUNT = (
    "a serverless variant scales with its traffic: remove initialInstanceCount"
    " (serverlessConfig.provisionedConcurrency keeps capacity warm)"
)
MSG_SERVERLESS_NO_AUTOSCALING = "a serverless variant scales with its traffic: remove autoscaling (serverlessConfig.maxConcurrency bounds it)"
MSG_SERVERLESS_NO_RESOURCES = (
    "a serverless variant's resources follow serverlessConfig.memorySizeInMB and it runs on CPU:"
    " remove resources (a GPU needs an instanceType)"
)
MSG_SERVERLESS_MEMORY_STEP = "serverlessConfig.memorySizeInMB must be a multiple of 1024 (1024 to 6144)"
MSG_SERVERLESS_PROVISIONED = "serverlessConfig.provisionedConcurrency must not exceed maxConcurrency"
MSG_SERVERLESS_NOT_ASYNC = (
    "serverlessConfig is for real-time variants: an asyncInferenceConfig scales to zero on its queue"
)
MSG_SERVERLESS_NO_SHADOWS = "shadowProductionVariants cannot be serverless: give them an instanceType"
MSG_CAPTURE_URI = "dataCapture.destinationUri must start with s3:// or file://"
MSG_CAPTURE_MODES = "dataCapture.captureModes must name Input, Output or both, each once"
# Strings CEL reads have a bound, so the API server can price the rules (its cost limit).
URI_MAX = 1024
# A location with something after the scheme; the rules below say the same in CEL.
_STORAGE_CEL = "matches('^(s3|file)://.+')"
_WEBHOOK_CEL = "matches('^https?://.+')"


class Autoscaling(ApiModel):
    """A HorizontalPodAutoscaler for the variant."""

    min_replicas: int = Field(
        default=1, ge=0, le=1000, description="Fewest replicas; 0 (scale to zero) only in async configs."
    )
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
    target_backlog_per_instance: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description=(
            "Async configs only: queued messages per replica (SageMaker's ApproximateBacklogSizePerInstance);"
            " a KEDA ScaledObject on the variant's Redis stream."
        ),
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
            "rule": (
                "(has(self.targetInvocationsPerReplica) ? 1 : 0) + (has(self.targetCPUUtilization) ? 1 : 0)"
                " + (has(self.targetBacklogPerInstance) ? 1 : 0) == 1"
            ),
            "message": MSG_AUTOSCALING_TARGET,
        },
    ]

    @model_validator(mode="after")
    def _check(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(MSG_AUTOSCALING_BOUNDS)
        targets = (
            self.target_invocations_per_replica,
            self.target_cpu_utilization,
            self.target_backlog_per_instance,
        )
        if sum(t is not None for t in targets) != 1:
            raise ValueError(MSG_AUTOSCALING_TARGET)
        return self


class ServerlessConfig(ApiModel):
    """Capacity that follows the traffic down to zero; requests that find no free slot are held."""

    memory_size_in_mb: int = Field(
        ge=1024,
        le=6144,
        alias="memorySizeInMB",
        description="Memory of each replica in MiB, 1024 to 6144 in steps of 1024; CPU follows (1 per 2048).",
    )
    max_concurrency: int = Field(
        default=20, ge=1, le=200, description="Requests in flight for the whole variant; more are held."
    )
    provisioned_concurrency: int = Field(
        default=0, ge=0, le=200, description="Requests' worth of replicas kept warm; 0 scales to zero."
    )
    idle_seconds: int = Field(
        default=300,
        ge=10,
        le=86_400,
        description="No requests for this long: scale to provisionedConcurrency.",
    )
    cold_start_timeout_seconds: int = Field(
        default=180,
        ge=1,
        le=900,
        description="Longest a held request waits for a replica; then 503 with Retry-After.",
    )
    max_held_requests: int = Field(
        default=100, ge=0, le=10_000, description="Requests held at once; more get 429 with Retry-After."
    )

    x_kubernetes_validations: ClassVar[list[dict[str, str]]] = [
        {"rule": "self.memorySizeInMB % 1024 == 0", "message": MSG_SERVERLESS_MEMORY_STEP},
        {
            "rule": (
                "!has(self.provisionedConcurrency) || self.provisionedConcurrency"
                " <= (has(self.maxConcurrency) ? self.maxConcurrency : 20)"
            ),
            "message": MSG_SERVERLESS_PROVISIONED,
        },
    ]

    @model_validator(mode="after")
    def _check(self) -> ServerlessConfig:
        if self.memory_size_in_mb % 1024:
            raise ValueError(MSG_SERVERLESS_MEMORY_STEP)
        if self.provisioned_concurrency > self.max_concurrency:
            raise ValueError(MSG_SERVERLESS_PROVISIONED)
        return self


class ProductionVariant(ApiModel):
    """One fleet behind the endpoint: a model on some hardware with a share of the traffic."""

    variant_name: str = Field(
        pattern=DNS_LABEL, max_length=63, description="Unique name of the variant (DNS label)."
    )
    model_name: str = Field(
        pattern=DNS_SUBDOMAIN, max_length=253, description="A Model in the same namespace."
    )
    instance_type: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        description="Key into the operator's instance-type catalog (or serverlessConfig).",
    )
    serverless_config: ServerlessConfig | None = Field(
        default=None,
        description="Serverless: replicas follow the traffic down to zero (instead of an instanceType).",
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

    x_kubernetes_validations: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "has(self.instanceType) != has(self.serverlessConfig)",
            "message": MSG_SERVERLESS_OR_INSTANCE,
        },
        {
            "rule": "!has(self.serverlessConfig) || !has(self.initialInstanceCount)",
            "message": MSG_SERVERLESS_NO_COUNT,
        },
        {
            "rule": "!has(self.serverlessConfig) || !has(self.autoscaling)",
            "message": MSG_SERVERLESS_NO_AUTOSCALING,
        },
        {
            "rule": "!has(self.serverlessConfig) || !has(self.resources)",
            "message": MSG_SERVERLESS_NO_RESOURCES,
        },
    ]

    @model_validator(mode="after")
    def _check(self) -> ProductionVariant:
        if (self.instance_type is None) == (self.serverless_config is None):
            raise ValueError(MSG_SERVERLESS_OR_INSTANCE)
        if self.serverless_config is not None:
            if "initial_instance_count" in self.model_fields_set:
                raise ValueError(MSG_SERVERLESS_NO_COUNT)
            if self.autoscaling is not None:
                raise ValueError(MSG_SERVERLESS_NO_AUTOSCALING)
            if self.resources is not None:
                raise ValueError(MSG_SERVERLESS_NO_RESOURCES)
        return self

    @property
    def is_serverless(self) -> bool:
        return self.serverless_config is not None


class AsyncNotification(ApiModel):
    """Webhooks told (CloudEvents JSON) when an inference succeeded or failed."""

    success_webhook: str | None = Field(
        default=None, max_length=URI_MAX, description="http(s) URL told of each success."
    )
    error_webhook: str | None = Field(
        default=None, max_length=URI_MAX, description="http(s) URL told of each failure."
    )

    x_kubernetes_validations: ClassVar[list[dict[str, str]]] = [
        {
            "rule": f"(!has(self.successWebhook) || self.successWebhook.{_WEBHOOK_CEL})"
            f" && (!has(self.errorWebhook) || self.errorWebhook.{_WEBHOOK_CEL})",
            "message": MSG_ASYNC_WEBHOOK,
        }
    ]

    @model_validator(mode="after")
    def _check(self) -> AsyncNotification:
        for url in (self.success_webhook, self.error_webhook):
            if url is not None and not re.match(r"^https?://.+", url):
                raise ValueError(MSG_ASYNC_WEBHOOK)
        return self


class AsyncOutputConfig(ApiModel):
    """Where answers and failures of async inferences are written."""

    output_uri: str = Field(max_length=URI_MAX, description="Answers go to OUTPUT/ID.out (s3:// or file://).")
    failure_uri: str | None = Field(
        default=None,
        max_length=URI_MAX,
        description="Failures go to FAILURE/ID-error.out with the reason; absent: OUTPUT/failures/.",
    )
    notification: AsyncNotification | None = Field(
        default=None, description="Webhooks told of successes and failures."
    )

    x_kubernetes_validations: ClassVar[list[dict[str, str]]] = [
        {"rule": f"self.outputUri.{_STORAGE_CEL}", "message": MSG_ASYNC_OUTPUT_URI},
        {
            "rule": f"!has(self.failureUri) || self.failureUri.{_STORAGE_CEL}",
            "message": MSG_ASYNC_FAILURE_URI,
        },
    ]

    @model_validator(mode="after")
    def _check(self) -> AsyncOutputConfig:
        if not re.match(STORAGE_URI, self.output_uri):
            raise ValueError(MSG_ASYNC_OUTPUT_URI)
        if self.failure_uri is not None and not re.match(STORAGE_URI, self.failure_uri):
            raise ValueError(MSG_ASYNC_FAILURE_URI)
        return self

    @property
    def failure_location(self) -> str:
        """failureUri, else OUTPUT/failures/: SageMaker makes it optional, and a failure needs a place."""
        if self.failure_uri is not None:
            return self.failure_uri
        return self.output_uri.rstrip("/") + "/failures/"


class AsyncClientConfig(ApiModel):
    """How each replica's worker takes messages."""

    max_concurrent_invocations_per_instance: int = Field(
        default=4, ge=1, le=1000, description="Messages one replica works on at once."
    )


class AsyncInferenceConfig(ApiModel):
    """Makes every production variant an async fleet fed by a Redis stream."""

    output_config: AsyncOutputConfig = Field(description="Where answers and failures are written.")
    client_config: AsyncClientConfig = Field(
        default_factory=AsyncClientConfig, description="Per-replica concurrency."
    )


CaptureMode = Literal["Input", "Output"]
CAPTURE_MODES: tuple[CaptureMode, ...] = ("Input", "Output")
DEFAULT_TEXT_CONTENT_TYPES = ("text/csv", "application/json")


class DataCapture(ApiModel):
    """Sampled requests and answers written as JSON Lines (SageMaker's capture shape) for monitoring."""

    sampling_percentage: float = Field(
        ge=0, le=100, description="Share of requests captured (0 to 100), decided by the inference id."
    )
    destination_uri: str = Field(
        max_length=URI_MAX,
        description="Files go to DEST/ENDPOINT/VARIANT/yyyy/mm/dd/hh/UUID.jsonl (s3:// or file://).",
    )
    capture_modes: list[CaptureMode] = Field(
        default_factory=lambda: list(CAPTURE_MODES),
        min_length=1,
        max_length=2,
        description="What each event holds: the request (Input), the answer (Output) or both.",
        # A set: the API server itself refuses a repeated mode.
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    text_content_types: list[Annotated[str, Field(min_length=1, max_length=255)]] = Field(
        default_factory=lambda: list(DEFAULT_TEXT_CONTENT_TYPES),
        max_length=16,
        description="Content types written as text; others are written base64.",
    )
    max_file_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        le=1024**3,
        description="A capture file is closed and uploaded at this size...",
    )
    max_file_age_seconds: int = Field(
        default=60, ge=1, le=3600, description="...or this many seconds after its first event."
    )
    credentials_secret_ref: LocalObjectReference | None = Field(
        default=None,
        description=(
            "A Secret whose keys become the capturing container's environment (AWS_ACCESS_KEY_ID,"
            " AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL...); absent: the pod's own identity."
        ),
    )

    x_kubernetes_validations: ClassVar[list[dict[str, str]]] = [
        {"rule": f"self.destinationUri.{_STORAGE_CEL}", "message": MSG_CAPTURE_URI},
    ]

    @model_validator(mode="after")
    def _check(self) -> DataCapture:
        if not re.match(STORAGE_URI, self.destination_uri):
            raise ValueError(MSG_CAPTURE_URI)
        if len(set(self.capture_modes)) != len(self.capture_modes):
            raise ValueError(MSG_CAPTURE_MODES)
        return self


def _variants_cel(condition: str) -> str:
    """condition holds for every production and shadow variant (v is the variant)."""
    return (
        f"self.productionVariants.all(v, {condition})"
        f" && (!has(self.shadowProductionVariants) || self.shadowProductionVariants.all(v, {condition}))"
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
    async_inference_config: AsyncInferenceConfig | None = Field(
        default=None,
        description="Asynchronous inference: requests are queued, answers written to outputUri.",
    )
    data_capture: DataCapture | None = Field(
        default=None, description="Capture sampled requests and answers of every variant for monitoring."
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
        {
            "rule": (
                "!has(self.asyncInferenceConfig) || !has(self.shadowProductionVariants)"
                " || size(self.shadowProductionVariants) == 0"
            ),
            "message": MSG_ASYNC_NO_SHADOWS,
        },
        {
            "rule": "!has(self.asyncInferenceConfig) || self.productionVariants.all(v, !has(v.serverlessConfig))",
            "message": MSG_SERVERLESS_NOT_ASYNC,
        },
        {
            "rule": (
                "!has(self.shadowProductionVariants)"
                " || self.shadowProductionVariants.all(v, !has(v.serverlessConfig))"
            ),
            "message": MSG_SERVERLESS_NO_SHADOWS,
        },
        {
            "rule": "has(self.asyncInferenceConfig) || "
            + _variants_cel(
                "!has(v.autoscaling) || !has(v.autoscaling.minReplicas) || v.autoscaling.minReplicas >= 1"
            ),
            "message": MSG_MIN_ZERO_NEEDS_ASYNC,
        },
        {
            "rule": "has(self.asyncInferenceConfig) || "
            + _variants_cel("!has(v.autoscaling) || !has(v.autoscaling.targetBacklogPerInstance)"),
            "message": MSG_BACKLOG_NEEDS_ASYNC,
        },
        {
            "rule": "!has(self.asyncInferenceConfig) || "
            + _variants_cel("!has(v.autoscaling) || has(v.autoscaling.targetBacklogPerInstance)"),
            "message": MSG_ASYNC_NEEDS_BACKLOG,
        },
    ]

    @model_validator(mode="after")
    def _check(self) -> EndpointConfigSpec:
        names = [v.variant_name for v in self.production_variants + self.shadow_production_variants]
        if len(names) != len(set(names)):
            raise ValueError(MSG_VARIANT_NAMES_UNIQUE)
        if not any(v.initial_variant_weight > 0 for v in self.production_variants):
            raise ValueError(MSG_WEIGHTS_POSITIVE)
        if any(v.is_serverless for v in self.shadow_production_variants):
            raise ValueError(MSG_SERVERLESS_NO_SHADOWS)
        if self.async_inference_config is not None and any(v.is_serverless for v in self.production_variants):
            raise ValueError(MSG_SERVERLESS_NOT_ASYNC)
        scaled = [v.autoscaling for v in self.production_variants + self.shadow_production_variants]
        scalings = [a for a in scaled if a is not None]
        if self.async_inference_config is not None:
            if self.shadow_production_variants:
                raise ValueError(MSG_ASYNC_NO_SHADOWS)
            if any(a.target_backlog_per_instance is None for a in scalings):
                raise ValueError(MSG_ASYNC_NEEDS_BACKLOG)
        else:
            if any(a.min_replicas < 1 for a in scalings):
                raise ValueError(MSG_MIN_ZERO_NEEDS_ASYNC)
            if any(a.target_backlog_per_instance is not None for a in scalings):
                raise ValueError(MSG_BACKLOG_NEEDS_ASYNC)
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

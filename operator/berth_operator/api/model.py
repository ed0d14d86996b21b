"""Model: what to serve (a model file and how to run it). Spec is immutable."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .meta import (
    MODEL_URI,
    SHA256_HEX,
    ApiModel,
    Condition,
    EnvVar,
    LocalObjectReference,
    Resource,
    conditions_field,
)

MSG_MODEL_IMMUTABLE = "Model spec is immutable: create a new Model and reference it from a new EndpointConfig"
MSG_MULTI_MODEL_PREFIX = (
    "modelUri: mode MultiModel serves every .onnx and .tar.gz under a prefix: end modelUri with /"
)
MSG_MULTI_MODEL_NO_SHA256 = (
    "sha256: mode MultiModel serves many files; each model's digest is read from NAME.sha256 beside it"
)
MSG_MULTI_MODEL_SETTINGS = "multiModel: only mode MultiModel reads these settings"
MSG_MULTI_MODEL_NO_WARMUP = (
    "warmupRequests: mode MultiModel loads each model on its first request and a warm-up request names"
    " no model; a rollout warms the old fleet's most used models instead (multiModel.warmModels)"
)
ModelMode = Literal["SingleModel", "MultiModel"]
# The Model is SingleModel (mode left out means SingleModel), in CEL.
_SINGLE_CEL = "(!has(self.mode) || self.mode == 'SingleModel')"
_MULTI_CEL = "(has(self.mode) && self.mode == 'MultiModel')"


class RuntimeSettings(ApiModel):
    """Tuning of the built-in ONNX Runtime server."""

    max_batch_size: int = Field(
        default=32,
        ge=1,
        le=4096,
        description=(
            "Largest number of rows merged into one ONNX Runtime call. Requests merge only when every"
            " output follows the batch's rows; a model whose answer for a row depends on the other rows"
            " (a batch mean, a sort across rows) must set 1, which the runtime cannot detect."
        ),
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


class WarmupRequest(ApiModel):
    """A request a new replica answers before it takes traffic (SageMaker's warm-up on load)."""

    content_type: str = Field(
        default="application/json", min_length=1, max_length=255, description="Content-Type of the body."
    )
    body: str = Field(max_length=65_536, description="The payload sent to /invocations, as text.")


class MultiModelSettings(ApiModel):
    """How a MultiModel Model's replicas hold the models under its prefix."""

    cache_bytes: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Memory the loaded models of one replica may hold, in bytes (default: 80% of the"
            " container's memory limit); the least recently used idle model is unloaded to make room,"
            " and one larger than this is refused with 507."
        ),
    )
    max_loaded_models: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Most models one replica holds loaded at once (default: only cacheBytes counts).",
    )
    warm_models: int = Field(
        default=10,
        ge=0,
        le=1000,
        description=(
            "A Berth extension: how many of the old fleet's most used models a rollout's new fleet"
            " loads before it takes traffic (0: none, the new fleet starts cold)."
        ),
    )


class ModelSpec(ApiModel):
    """What to serve."""

    model_uri: str = Field(
        pattern=MODEL_URI,
        max_length=2048,
        description=(
            "Where the model is: s3://, http(s)://, pvc://CLAIM/PATH or file:// (local mode). "
            "A .tar.gz is unpacked and the .onnx inside is served. Mode MultiModel: a prefix ending"
            " in /, under which each .onnx or .tar.gz is a model named by its relative path."
        ),
    )
    mode: ModelMode = Field(
        default="SingleModel",
        description=(
            "SingleModel: modelUri is one model. MultiModel: modelUri is a prefix; a request names"
            " its model (X-Berth-Target-Model or /v2/models/NAME), which is loaded on first use."
        ),
    )
    multi_model: MultiModelSettings | None = Field(
        default=None, description="Mode MultiModel: the replicas' model cache and rollout warm-up."
    )
    sha256: str | None = Field(
        default=None,
        pattern=SHA256_HEX,
        max_length=64,
        description=(
            "Expected SHA-256 of the downloaded file; a mismatch fails the load. Not with mode"
            " MultiModel (NAME.sha256 beside each model is checked)."
        ),
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

    warmup_requests: list[WarmupRequest] = Field(
        default_factory=list,
        max_length=10,
        description=(
            "Requests each new replica answers (each a 2xx) before it reports ready: a cold start"
            " pays its first-call costs before a client waits on it."
        ),
    )

    x_kubernetes_validations: ClassVar[list[dict[str, str]]] = [
        {"rule": "self == oldSelf", "message": MSG_MODEL_IMMUTABLE},
        {
            "rule": f"{_SINGLE_CEL} || self.modelUri.endsWith('/')",
            "message": MSG_MULTI_MODEL_PREFIX,
        },
        {"rule": f"{_SINGLE_CEL} || !has(self.sha256)", "message": MSG_MULTI_MODEL_NO_SHA256},
        {"rule": f"{_MULTI_CEL} || !has(self.multiModel)", "message": MSG_MULTI_MODEL_SETTINGS},
        {
            "rule": f"{_SINGLE_CEL} || !has(self.warmupRequests) || size(self.warmupRequests) == 0",
            "message": MSG_MULTI_MODEL_NO_WARMUP,
        },
    ]

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.mode == "MultiModel":
            if not self.model_uri.endswith("/"):
                raise ValueError(MSG_MULTI_MODEL_PREFIX)
            if self.sha256 is not None:
                raise ValueError(MSG_MULTI_MODEL_NO_SHA256)
            if self.warmup_requests:
                raise ValueError(MSG_MULTI_MODEL_NO_WARMUP)
        elif self.multi_model is not None:
            raise ValueError(MSG_MULTI_MODEL_SETTINGS)
        return self

    @property
    def is_multi_model(self) -> bool:
        return self.mode == "MultiModel"

    @property
    def multi_model_settings(self) -> MultiModelSettings:
        """multiModel, or its defaults when the Model leaves it out."""
        return self.multi_model or MultiModelSettings()


class ModelStatus(ApiModel):
    """What the operator observed about the Model (written by the operator)."""

    observed_generation: int | None = Field(default=None, description="Last metadata.generation seen.")
    conditions: list[Condition] = conditions_field("Ready.")


class Model(Resource):
    """A model to serve: where its file is and how to run it. Spec is immutable."""

    KIND: ClassVar[str] = "Model"
    PLURAL: ClassVar[str] = "models"
    SHORT_NAME: ClassVar[str] = "bm"
    kind: str = "Model"
    spec: ModelSpec
    status: ModelStatus | None = None

"""Model: what to serve (a model file and how to run it). Spec is immutable."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

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


class ModelSpec(ApiModel):
    """What to serve."""

    model_uri: str = Field(
        pattern=MODEL_URI,
        max_length=2048,
        description=(
            "Where the model is: s3://, http(s)://, pvc://CLAIM/PATH or file:// (local mode). "
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
    ]


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

"""Model: what to serve (a model file and how to run it). Spec is immutable."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from berth_serving.config import DEFAULT_PORT
from pydantic import Field, model_validator

from .meta import (
    DNS_LABEL,
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
MSG_PIPELINE_OR_MODEL_URI = (
    "modelUri: give exactly one of modelUri (one model) and pipeline (2 to 15 stages run as one model)"
)
MSG_PIPELINE_STAGES = "pipeline: an inference pipeline has 2 to 15 stages (leave pipeline out for one model)"
MSG_PIPELINE_SINGLE_MODEL = (
    "pipeline: mode MultiModel serves many models under a prefix; a pipeline is one model, so its mode"
    " is SingleModel"
)
MSG_PIPELINE_NO_SHA256 = "sha256: a pipeline has no one file to check; give each stage its own sha256"
MSG_PIPELINE_NO_IMAGE = (
    "image: a pipeline runs in Berth's runtime, which calls the stages; give the stage that needs its"
    " own container an image and a port instead"
)
MSG_PIPELINE_FIRST_ONNX = (
    "pipeline: the first stage must be an ONNX model (modelUri): its inputs are the pipeline's inputs"
)
MSG_STAGE_NAMES_UNIQUE = "pipeline: stage names must be unique (an unnamed stage N is named stage-N)"
MSG_STAGE_PORTS_UNIQUE = "pipeline: each image stage needs a port of its own (they share the pod's network)"
MSG_STAGE_ONE_OF = "modelUri: a stage is exactly one of an ONNX model (modelUri) and a container (image)"
MSG_STAGE_PORT = "port: an image stage listens on the port it names, and only an image stage has one"
MSG_STAGE_RESERVED_PORT = (
    "port: 8080 is the pipeline server's own port and 9091 an async worker's metrics port; choose another"
)
MSG_STAGE_SHA256 = "sha256: only an ONNX stage (modelUri) has a file to check"
MSG_STAGE_ENV = "env: only an image stage's container takes env (the Model's env is the runtime's)"
MSG_STAGE_OUTPUTS_UNIQUE = "outputs: each output is named once"
MSG_STAGE_DEFAULT_NAME = (
    "name: stage-N is the name an unnamed stage gets from its position; leave name out or choose another"
)
ModelMode = Literal["SingleModel", "MultiModel"]
# The Model is SingleModel (mode left out means SingleModel), in CEL.
_SINGLE_CEL = "(!has(self.mode) || self.mode == 'SingleModel')"
_MULTI_CEL = "(has(self.mode) && self.mode == 'MultiModel')"
# The Model is an inference pipeline (pipeline left out or empty: it is not), in CEL.
_PIPELINE_CEL = "(has(self.pipeline) && size(self.pipeline) > 0)"
MIN_STAGES, MAX_STAGES = 2, 15
# The async worker sidecar's /metrics in an async variant's pods (planner/asyncinf.py).
ASYNC_WORKER_METRICS_PORT = 9091
# The pod's ports a stage's container cannot take: the server's, and an async worker's metrics.
RESERVED_STAGE_PORTS = (DEFAULT_PORT, ASYNC_WORKER_METRICS_PORT)
STAGE_NAME_MAX = 40  # leaves room for the containers named after it (storage-initializer-NAME)
_DEFAULT_STAGE_NAME = r"^stage-[0-9]+$"
OutputName = Annotated[str, Field(min_length=1, max_length=256)]


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


class PipelineStageSpec(ApiModel):
    """A pipeline stage: an ONNX model run in Berth's runtime, or a container honouring the serving contract."""

    name: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=STAGE_NAME_MAX,
        description=(
            "A Berth extension: the stage's name (default stage-N, N its position from 1), unique in"
            " the pipeline. It labels berth_stage_latency_seconds{stage} and is what"
            " X-Berth-Failed-Stage says when the stage fails."
        ),
    )
    model_uri: str | None = Field(
        default=None,
        pattern=MODEL_URI,
        max_length=2048,
        description=(
            "An ONNX stage: where its model is, as Model.modelUri (s3://, http(s)://, pvc://CLAIM/PATH,"
            " file:// in local mode; a .tar.gz is unpacked). Run in the runtime's process."
        ),
    )
    sha256: str | None = Field(
        default=None,
        pattern=SHA256_HEX,
        max_length=64,
        description="An ONNX stage: the expected SHA-256 of its downloaded file; a mismatch fails the load.",
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description=(
            "An image stage: a container of the pod that honours the serving contract (POST"
            " /invocations, GET /ping) on `port`, called over localhost. Not in local mode."
        ),
    )
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="An image stage: the port its container listens on (not 8080 or 9091), unique.",
    )
    outputs: list[OutputName] = Field(
        default_factory=list,
        max_length=64,
        # A set: the API server refuses a repeated output itself (a CEL rule comparing every pair
        # of 64 names was over the server's cost budget).
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description=(
            "Keep only these of the stage's outputs, in this order (default: all). The next stage takes"
            " them by name, else by position."
        ),
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=64, description="An image stage: extra environment of its container."
    )

    x_kubernetes_validations: ClassVar[list[dict[str, str]]] = [
        {"rule": "has(self.modelUri) != has(self.image)", "message": MSG_STAGE_ONE_OF},
        {"rule": "has(self.image) == has(self.port)", "message": MSG_STAGE_PORT},
        {
            "rule": "!has(self.port) || "
            + " && ".join(f"self.port != {port}" for port in RESERVED_STAGE_PORTS),
            "message": MSG_STAGE_RESERVED_PORT,
        },
        {"rule": "!has(self.sha256) || has(self.modelUri)", "message": MSG_STAGE_SHA256},
        {"rule": "!has(self.env) || size(self.env) == 0 || has(self.image)", "message": MSG_STAGE_ENV},
        {
            "rule": f"!has(self.name) || !self.name.matches('{_DEFAULT_STAGE_NAME}')",
            "message": MSG_STAGE_DEFAULT_NAME,
        },
    ]

    @model_validator(mode="after")
    def _check(self) -> PipelineStageSpec:
        if (self.model_uri is None) == (self.image is None):
            raise ValueError(MSG_STAGE_ONE_OF)
        if (self.image is None) != (self.port is None):
            raise ValueError(MSG_STAGE_PORT)
        if self.port in RESERVED_STAGE_PORTS:
            raise ValueError(MSG_STAGE_RESERVED_PORT)
        if self.sha256 is not None and self.model_uri is None:
            raise ValueError(MSG_STAGE_SHA256)
        if self.env and self.image is None:
            raise ValueError(MSG_STAGE_ENV)
        if len(set(self.outputs)) != len(self.outputs):
            raise ValueError(MSG_STAGE_OUTPUTS_UNIQUE)
        if self.name is not None and re.match(_DEFAULT_STAGE_NAME, self.name):
            raise ValueError(MSG_STAGE_DEFAULT_NAME)
        return self

    @property
    def is_image(self) -> bool:
        return self.image is not None


class ModelSpec(ApiModel):
    """What to serve."""

    model_uri: str | None = Field(
        default=None,
        pattern=MODEL_URI,
        max_length=2048,
        description=(
            "Where the model is: s3://, http(s)://, pvc://CLAIM/PATH or file:// (local mode). "
            "A .tar.gz is unpacked and the .onnx inside is served. Mode MultiModel: a prefix ending"
            " in /, under which each .onnx or .tar.gz is a model named by its relative path."
            " Exactly one of modelUri and pipeline."
        ),
    )
    pipeline: list[PipelineStageSpec] = Field(
        default_factory=list,
        max_length=MAX_STAGES,
        description=(
            "An inference pipeline instead of modelUri: 2 to 15 stages run serially in one pod, one"
            " request in and one answer out. The outputs of a stage feed the inputs of the next by"
            " name, else by position; a wiring that cannot work fails the load naming both"
            " signatures. The first stage is an ONNX model (its inputs are the pipeline's)."
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
        {"rule": f"has(self.modelUri) != {_PIPELINE_CEL}", "message": MSG_PIPELINE_OR_MODEL_URI},
        {
            "rule": f"!{_PIPELINE_CEL} || size(self.pipeline) >= {MIN_STAGES}",
            "message": MSG_PIPELINE_STAGES,
        },
        {"rule": f"!{_PIPELINE_CEL} || {_SINGLE_CEL}", "message": MSG_PIPELINE_SINGLE_MODEL},
        {"rule": f"!{_PIPELINE_CEL} || !has(self.sha256)", "message": MSG_PIPELINE_NO_SHA256},
        {"rule": f"!{_PIPELINE_CEL} || !has(self.image)", "message": MSG_PIPELINE_NO_IMAGE},
        {
            "rule": f"!{_PIPELINE_CEL} || has(self.pipeline[0].modelUri)",
            "message": MSG_PIPELINE_FIRST_ONNX,
        },
        {
            # exists_one over the list, not over a filter() of it: the API server's cost estimate
            # of a filter inside a loop was over its budget.
            # (ternaries rather than || and &&: the same meaning, and the offline evaluator of
            # tests/support/celk8s.py gets them right inside nested macros)
            "rule": "!has(self.pipeline) || self.pipeline.all(s, has(s.name) ?"
            " self.pipeline.exists_one(t, has(t.name) ? t.name == s.name : false) : true)",
            "message": MSG_STAGE_NAMES_UNIQUE,
        },
        {
            "rule": "!has(self.pipeline) || self.pipeline.all(s, has(s.port) ?"
            " self.pipeline.exists_one(t, has(t.port) ? t.port == s.port : false) : true)",
            "message": MSG_STAGE_PORTS_UNIQUE,
        },
        {
            "rule": f"{_SINGLE_CEL} || !has(self.modelUri) || self.modelUri.endsWith('/')",
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
        if (self.model_uri is None) == (not self.pipeline):
            raise ValueError(MSG_PIPELINE_OR_MODEL_URI)
        if self.pipeline:
            self._check_pipeline()
        if self.mode == "MultiModel":
            if self.model_uri is not None and not self.model_uri.endswith("/"):
                raise ValueError(MSG_MULTI_MODEL_PREFIX)
            if self.sha256 is not None:
                raise ValueError(MSG_MULTI_MODEL_NO_SHA256)
            if self.warmup_requests:
                raise ValueError(MSG_MULTI_MODEL_NO_WARMUP)
        elif self.multi_model is not None:
            raise ValueError(MSG_MULTI_MODEL_SETTINGS)
        return self

    def _check_pipeline(self) -> None:
        if len(self.pipeline) < MIN_STAGES:
            raise ValueError(MSG_PIPELINE_STAGES)
        if self.mode == "MultiModel":
            raise ValueError(MSG_PIPELINE_SINGLE_MODEL)
        if self.sha256 is not None:
            raise ValueError(MSG_PIPELINE_NO_SHA256)
        if self.image is not None:
            raise ValueError(MSG_PIPELINE_NO_IMAGE)
        if self.pipeline[0].is_image:
            raise ValueError(MSG_PIPELINE_FIRST_ONNX)
        named = [stage.name for stage in self.pipeline if stage.name is not None]
        if len(set(named)) != len(named):
            raise ValueError(MSG_STAGE_NAMES_UNIQUE)
        ports = [stage.port for stage in self.pipeline if stage.port is not None]
        if len(set(ports)) != len(ports):
            raise ValueError(MSG_STAGE_PORTS_UNIQUE)

    @property
    def is_multi_model(self) -> bool:
        return self.mode == "MultiModel"

    @property
    def is_pipeline(self) -> bool:
        return bool(self.pipeline)

    @property
    def stages(self) -> tuple[tuple[str, PipelineStageSpec], ...]:
        """The pipeline's stages with their names (an unnamed stage N is stage-N, from 1)."""
        return tuple((stage.name or f"stage-{i}", stage) for i, stage in enumerate(self.pipeline, 1))

    @property
    def uri(self) -> str:
        """modelUri of a Model that has one (every Model but a pipeline)."""
        if self.model_uri is None:
            raise ValueError("a pipeline Model has no modelUri: read its stages")
        return self.model_uri

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

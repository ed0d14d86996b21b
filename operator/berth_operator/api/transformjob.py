"""TransformJob: a batch transform of a dataset in object storage by a Model. Spec is immutable."""

from __future__ import annotations

from typing import ClassVar, Literal

from berth_serving.multimodel.names import MAX_NAME_LENGTH, name_problem
from berth_serving.transform.jsonpath import FilterError, parse_filter
from pydantic import Field, model_validator

from .endpointconfig import URI_MAX, DataCapture
from .meta import DNS_SUBDOMAIN, STORAGE_URI, ApiModel, Condition, Resource, conditions_field

FILTER_MAX = 256
MSG_FILTER_SYNTAX = (
    "inputFilter and outputFilter are JSONPath filters starting with $ (e.g. $[1:], $.features)"
)
MSG_TRANSFORM_IMMUTABLE = "TransformJob spec is immutable: create a new TransformJob to run again"
MSG_NPY_NEEDS_NO_SPLIT = (
    "input.contentType application/x-npy needs input.splitType None (one array per object)"
)
MSG_JOIN_NEEDS_LINES = "joinSource Input needs input.splitType Line and output.assembleWith Line"
MSG_OUTPUT_NOT_INPUT = "output.uri must differ from input.uri"
MSG_TARGET_MODEL_PATH = (
    "targetModel: a model's path under the Model's prefix, such as customer-17.tar.gz or eu/fraud.onnx:"
    " no leading or trailing /, no empty, '.' or '..' segment"
)
# No control character and no backslash (the API server's schema check; pydantic's is name_problem).
TARGET_MODEL_CHARACTERS = r"^[^\x00-\x1f\x7f\\]+$"
_TARGET_MODEL_CEL = (
    "!has(self.targetModel) || (!self.targetModel.startsWith('/') && !self.targetModel.endsWith('/')"
    " && !self.targetModel.contains('//') && !self.targetModel.matches('(^|/)[.][.]?(/|$)'))"
)


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


class TransformDataCapture(DataCapture):
    """Each record's input and its answer line as a capture event (SageMaker's
    CreateTransformJob DataCaptureConfig): the EndpointConfig's fields and checks, every record
    captured unless samplingPercentage says otherwise."""

    sampling_percentage: float = Field(
        default=100,
        ge=0,
        le=100,
        description="Share of records captured (0 to 100), decided by each record's id (OBJECT:INDEX).",
    )
    destination_uri: str = Field(
        max_length=URI_MAX,
        description="Files go to DEST/JOBNAME/transform/yyyy/mm/dd/hh/UUID.jsonl (s3:// or file://).",
    )


class TransformJobSpec(ApiModel):
    """Run a Model over a dataset in object storage and write the predictions back. Immutable."""

    model_name: str = Field(
        pattern=DNS_SUBDOMAIN, max_length=253, description="A Model in the same namespace."
    )
    target_model: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        pattern=TARGET_MODEL_CHARACTERS,
        description=(
            "The model to run when modelName is a MultiModel Model: its path under the Model's prefix"
            " (customer-17.tar.gz); required then, and refused for a SingleModel Model."
        ),
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
        description=(
            "Largest batch of input records, in bytes; a single record larger than this is malformed "
            "(named in the errors object, counted against maxErrors)."
        ),
    )
    max_concurrent_transforms: int = Field(
        default=2,
        ge=1,
        le=64,
        description="ONNX Runtime calls side by side per instance (at most one per CPU), each by a worker that also reads, parses and encodes its own batches.",
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
    input_filter: str | None = Field(
        default=None,
        max_length=FILTER_MAX,
        description="What the model sees of each record (SageMaker's InputFilter, a JSONPath): $[1:] or"
        " $[0,2,5] for CSV, $.features or $['a','b'] for JSON Lines.",
    )
    output_filter: str | None = Field(
        default=None,
        max_length=FILTER_MAX,
        description="What is written of each joined record (SageMaker's OutputFilter): $[0,-1],"
        " $['id','SageMakerOutput'].",
    )
    max_errors: int = Field(
        default=0,
        ge=0,
        le=1_000_000_000,
        description="Malformed records tolerated per instance; they are listed in INPUT.errors objects.",
    )
    data_capture: TransformDataCapture | None = Field(
        default=None,
        description="Capture each record's input and answer as JSON Lines (eventMetadata.source transform).",
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
        {"rule": _TARGET_MODEL_CEL, "message": MSG_TARGET_MODEL_PATH},
        {
            "rule": "(!has(self.inputFilter) || self.inputFilter.startsWith('$'))"
            " && (!has(self.outputFilter) || self.outputFilter.startsWith('$'))",
            "message": MSG_FILTER_SYNTAX,
        },
    ]

    @model_validator(mode="after")
    def _check(self) -> TransformJobSpec:
        if self.join_source == "Input" and (
            self.input.split_type != "Line" or self.output.assemble_with != "Line"
        ):
            raise ValueError(MSG_JOIN_NEEDS_LINES)
        if self.output.uri == self.input.uri:
            raise ValueError(MSG_OUTPUT_NOT_INPUT)
        for flag, text in (("inputFilter", self.input_filter), ("outputFilter", self.output_filter)):
            if text is not None:
                if not text.startswith("$"):
                    raise ValueError(MSG_FILTER_SYNTAX)
                try:
                    parse_filter(text, flag)  # the same parser `berth transform` runs
                except FilterError as error:
                    raise ValueError(str(error)) from None
        if self.target_model is not None and (
            name_problem(self.target_model) is not None or self.target_model.endswith("/")
        ):
            raise ValueError(MSG_TARGET_MODEL_PATH)
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
    conditions: list[Condition] = conditions_field("Complete and Failed.")


class TransformJob(Resource):
    """A batch transform: a Model run over a dataset in object storage, predictions written back."""

    KIND: ClassVar[str] = "TransformJob"
    PLURAL: ClassVar[str] = "transformjobs"
    SHORT_NAME: ClassVar[str] = "btj"
    kind: str = "TransformJob"
    spec: TransformJobSpec
    status: TransformJobStatus | None = None

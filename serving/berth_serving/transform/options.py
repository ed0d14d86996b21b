"""What one `berth transform` run does: the CLI flags, and the pod args the operator writes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from berth_serving.transform.jsonpath import FilterError, JsonPath, parse_filter

CSV = "text/csv"
JSON_LINES = "application/jsonlines"
NPY = "application/x-npy"
CONTENT_TYPES = (CSV, JSON_LINES, NPY)
ACCEPT_TYPES = (CSV, JSON_LINES)
OUTPUT_SUFFIX = ".out"  # SageMaker's convention: the predictions of INPUT are in INPUT.out
ERRORS_SUFFIX = ".errors"  # malformed records of INPUT (with an error budget) are listed in INPUT.errors
DEFAULT_MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
DEFAULT_MAX_BATCH_SIZE = 256  # raw ORT on the MLP: 256 fastest here (2 calls: 116,000 rows/s, 512: 113,000)


@dataclass(frozen=True)
class TransformOptions:
    input_uri: str
    output_uri: str
    content_type: str = CSV
    split_type: Literal["Line", "None"] = "Line"
    compression: Literal["None", "Gzip"] = "None"
    accept: str = CSV
    assemble_with: Literal["Line", "None"] = "Line"
    batch_strategy: Literal["SingleRecord", "MultiRecord"] = "MultiRecord"
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE  # rows per ONNX Runtime call
    # ONNX Runtime calls side by side (at most one per CPU), each with its next batch queued
    max_concurrent_transforms: int = 2
    join_source: Literal["None", "Input"] = "None"
    max_errors: int = 0
    shard_index: int = 0
    shard_count: int = 1
    # SageMaker's DataProcessing (jsonpath.py): what the model sees of each record, and what is
    # kept of the record written (the joined one with joinSource Input). "" or "$": all of it.
    input_filter: str = ""
    output_filter: str = ""

    def check(self) -> None:
        """Refuse combinations the engine cannot honour (the CRD refuses them at admission too)."""
        if self.content_type not in CONTENT_TYPES:
            raise ValueError(f"content type must be one of {', '.join(CONTENT_TYPES)}")
        if self.accept not in ACCEPT_TYPES:
            raise ValueError(f"accept must be one of {', '.join(ACCEPT_TYPES)}")
        if self.content_type == NPY and self.split_type != "None":
            raise ValueError("application/x-npy input needs --split-type None (one array per object)")
        if self.join_source == "Input" and (self.split_type != "Line" or self.assemble_with != "Line"):
            raise ValueError("--join-source Input needs --split-type Line and --assemble-with Line")
        if self.input_uri.rstrip("/") == self.output_uri.rstrip("/"):
            raise ValueError("the output URI must differ from the input URI")
        if not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"shard index {self.shard_index} is not in 0..{self.shard_count - 1}")
        self.filters()

    def filters(self) -> tuple[JsonPath | None, JsonPath | None]:
        """The input and output filters, parsed; ValueError (FilterError) naming the one that
        cannot parse or cannot apply to these records."""
        selected = parse_filter(self.input_filter, "--input-filter")
        kept = parse_filter(self.output_filter, "--output-filter")
        for flag, path in (("--input-filter", selected), ("--output-filter", kept)):
            if path is not None and self.split_type != "Line":
                raise FilterError(f"{flag} needs --split-type Line: a filter selects from each record")
        if kept is not None and self.assemble_with != "Line":
            raise FilterError(
                "--output-filter needs --assemble-with Line: it selects from each record written"
            )
        if selected is not None and self.content_type == CSV and not selected.by_index:
            raise FilterError(
                f"--input-filter {selected.text!r}: a text/csv record is an array of columns; "
                "select them by index, e.g. $[1:] or $[0,2,5]"
            )
        if kept is not None and self.accept == CSV and not kept.by_index:
            raise FilterError(
                f"--output-filter {kept.text!r}: a text/csv output line is an array of columns; "
                "select them by index, e.g. $[0,-1]"
            )
        if (
            kept is not None
            and self.join_source == "Input"
            and self.content_type == JSON_LINES
            and self.accept == CSV
        ):
            raise FilterError(
                "--output-filter on JSON Lines records joined with their answers needs --accept "
                "application/jsonlines: the joined record is a JSON object, not columns"
            )
        return selected, kept

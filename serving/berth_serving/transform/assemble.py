"""Records out: the model's outputs for a block, as the bytes appended to the output object.

assembleWith Line writes a line per record (CSV: the first output's row, as the serving runtime
answers text/csv; JSON Lines: the prediction, or {NAME: value} for several outputs). assembleWith
None appends each batch's answer as the serving runtime would send it. joinSource Input puts
the input record in front of its prediction: CSV `input,prediction`, JSON
`{"input": record, "output": prediction}`. An outputFilter selects from each line before it is
written (filters.py: from SageMaker's joined record when joined).

A batch's numbers are written in one call, not row by row (measured per row of 10 float32
values: the serving runtime's %-format 4.8 us, Arrow's write_csv 3.4 us, orjson 0.5 us): a
matrix of finite numbers is written by orjson, whose rows become lines (shortest round-trip
spelling, so a float32 prints as 0.1, not 0.100000001); one with NaN or infinity (JSON has
neither: orjson would write null) by Arrow's write_csv, which spells them nan and inf as the
serving runtime does; anything else (strings, booleans, ZipMap's maps) as the serving runtime
writes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from berth_serving import codecs
from berth_serving.transform.filters import joined_record
from berth_serving.transform.jsonpath import JsonPath, Miss
from berth_serving.transform.options import CSV, JSON_LINES


def merge_outputs(parts: Sequence[list[Any]]) -> list[Any]:
    """Outputs of several calls (SingleRecord) as one batch, output by output."""
    if len(parts) == 1:
        return parts[0]
    merged: list[Any] = []
    for index in range(len(parts[0])):
        pieces = [part[index] for part in parts]
        if isinstance(pieces[0], np.ndarray):
            merged.append(np.concatenate(pieces))
        else:
            merged.append([item for piece in pieces for item in piece])
    return merged


class Assembler:
    def __init__(
        self,
        output_names: Sequence[str],
        *,
        accept: str,
        assemble_with: str,
        join_source: str,
        input_type: str,
        output_filter: JsonPath | None = None,
    ) -> None:
        self.names = list(output_names)
        self.accept = accept
        self.assemble_with = assemble_with
        self.join = join_source == "Input"
        self.input_type = input_type
        self.output_filter = output_filter

    def encode(self, outputs: list[Any], inputs: list[bytes]) -> bytes:
        named = dict(zip(self.names, outputs, strict=True))
        if self.assemble_with == "None":
            if self.accept == CSV:
                return codecs.encode(named, codecs.CSV)
            return codecs.encode(named, codecs.JSON) + b"\n"
        if self.accept == CSV:
            text = csv_lines(outputs[0]) if outputs else None
            if text is None:
                text = codecs.encode(named, codecs.CSV)  # a line per record already
            if not self.join:
                return text
            lines = text.split(b"\n")[:-1]
            lines = [raw.rstrip(b"\r\n") + b"," + line for raw, line in zip(inputs, lines, strict=True)]
            return b"\n".join(lines) + b"\n"
        if not self.join and len(outputs) == 1:
            text = json_lines(outputs[0])
            if text is not None:
                return text
        predictions = self._per_record(named)
        if self.join:
            documents: list[Any] = [
                {"input": self._input_value(raw), "output": value}
                for raw, value in zip(inputs, predictions, strict=True)
            ]
        else:
            documents = predictions
        return b"".join(codecs.dumps(document) + b"\n" for document in documents)

    def encode_filtered(self, outputs: list[Any], inputs: list[bytes]) -> tuple[bytes, list[tuple[int, str]]]:
        """A line per record through the outputFilter, and the records it cannot select from
        (their index in the batch and why), which are not written."""
        path = self.output_filter
        assert path is not None and self.assemble_with == "Line"
        label = f"output filter {path.text}"
        named = dict(zip(self.names, outputs, strict=True))
        kept: list[bytes] = []
        failed: list[tuple[int, str]] = []
        if self.accept == CSV:
            text = csv_lines(outputs[0]) if outputs else None
            if text is None:
                text = codecs.encode(named, codecs.CSV)
            lines = text.split(b"\n")[:-1]
            if self.join:
                lines = [raw.rstrip(b"\r\n") + b"," + line for raw, line in zip(inputs, lines, strict=True)]
            for index, line in enumerate(lines):
                try:
                    kept.append(b",".join(path.columns(line.split(b","))) + b"\n")
                except Miss as miss:
                    failed.append((index, f"{label}: {miss}"))
            return b"".join(kept), failed
        predictions = self._per_record(named)
        if self.join:
            documents = [
                joined_record(raw, value, self.input_type)
                for raw, value in zip(inputs, predictions, strict=True)
            ]
        else:
            documents = predictions
        for index, document in enumerate(documents):
            try:
                kept.append(codecs.dumps(path.select(document)) + b"\n")
            except Miss as miss:
                failed.append((index, f"{label}: {miss}"))
        return b"".join(kept), failed

    def _per_record(self, named: dict[str, Any]) -> list[Any]:
        columns = {name: _rows(value) for name, value in named.items()}
        if len(columns) == 1:
            return next(iter(columns.values()))
        rows = len(next(iter(columns.values())))
        return [{name: column[index] for name, column in columns.items()} for index in range(rows)]

    def _input_value(self, raw: bytes) -> Any:
        if self.input_type == JSON_LINES:
            return orjson.loads(raw)
        return raw.decode("utf-8").rstrip("\r\n")


def _rows(value: Any) -> list[Any]:
    if isinstance(value, np.ndarray):
        if value.dtype == np.float16:
            value = value.astype(np.float32)
        return value.tolist()
    return list(value)


def _numbers(value: Any) -> np.ndarray | None:
    """The output as a C-ordered matrix (rows, values) of integers or float32/64, or None."""
    if not isinstance(value, np.ndarray) or value.ndim == 0 or value.size == 0:
        return None
    if value.dtype.kind not in "iu" and value.dtype not in (np.float32, np.float64):
        return None
    if value.ndim > 2:
        value = value.reshape(value.shape[0], -1)
    return np.ascontiguousarray(value)


def _finite(array: np.ndarray) -> bool:
    return array.dtype.kind in "iu" or bool(np.isfinite(array).all())


def json_lines(value: Any) -> bytes | None:
    """A line per row, each the row as JSON (a number, or an array of them), in one orjson call."""
    array = _numbers(value)
    if array is None or not _finite(array):
        return None  # NaN and infinity: the per-record path writes them as null
    text = orjson.dumps(array, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
    return text.replace(b"],[" if array.ndim == 2 else b",", b"]\n[" if array.ndim == 2 else b"\n") + b"\n"


def csv_lines(value: Any) -> bytes | None:
    """A line per row, values separated by commas; None for what only codecs writes."""
    array = _numbers(value)
    if array is None:
        return None
    if _finite(array):
        if array.ndim == 1:
            return orjson.dumps(array, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].replace(b",", b"\n") + b"\n"
        text = orjson.dumps(array, option=orjson.OPT_SERIALIZE_NUMPY)[2:-2]
        return text.replace(b"],[", b"\n") + b"\n"
    import pyarrow as pa  # only here: finite matrices never need it (arrow.py says why)
    import pyarrow.csv as pcsv

    from berth_serving.transform.arrow import text_write_options

    columns = [array] if array.ndim == 1 else [array[:, index] for index in range(array.shape[1])]
    batch = pa.record_batch(
        [pa.array(column) for column in columns], names=[f"c{i}" for i in range(len(columns))]
    )
    sink = pa.BufferOutputStream()
    pcsv.write_csv(batch, sink, write_options=text_write_options())
    return bytes(sink.getvalue().to_pybytes())

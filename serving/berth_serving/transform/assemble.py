"""Records out: the model's outputs for a block, as the bytes appended to the output object.

assembleWith Line writes a line per record (CSV: the first output's row, as the serving runtime
answers text/csv; JSON Lines: the prediction, or {NAME: value} for several outputs). assembleWith
None appends each batch's answer as the serving runtime would send it. joinSource Input puts
the input record in front of its prediction: CSV `input,prediction`, JSON
`{"input": record, "output": prediction}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from berth_serving import codecs
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
    ) -> None:
        self.names = list(output_names)
        self.accept = accept
        self.assemble_with = assemble_with
        self.join = join_source == "Input"
        self.input_type = input_type

    def encode(self, outputs: list[Any], inputs: list[bytes]) -> bytes:
        named = dict(zip(self.names, outputs, strict=True))
        if self.assemble_with == "None":
            if self.accept == CSV:
                return codecs.encode(named, codecs.CSV)
            return codecs.encode(named, codecs.JSON) + b"\n"
        if self.accept == CSV:
            if not self.join:
                return codecs.encode(named, codecs.CSV)  # a line per record already
            lines = codecs.encode(named, codecs.CSV).split(b"\n")[:-1]
            lines = [raw.rstrip(b"\r\n") + b"," + line for raw, line in zip(inputs, lines, strict=True)]
            return b"\n".join(lines) + b"\n"
        predictions = self._per_record(named)
        if self.join:
            documents: list[Any] = [
                {"input": self._input_value(raw), "output": value}
                for raw, value in zip(inputs, predictions, strict=True)
            ]
        else:
            documents = predictions
        return b"".join(codecs.dumps(document) + b"\n" for document in documents)

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

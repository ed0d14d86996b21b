"""The model's input/output signature, read from ONNX Runtime, and the checks that turn
whatever a client sent into exactly the arrays the model takes.
(tensors.to_dtype: a value the model's dtype cannot hold is a 400, never wrapped or rounded).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from berth_serving.graph import row_aligned_outputs
from berth_serving.tensors import ORT_DTYPES, ValueMismatch, dtype_name, to_dtype


class SignatureError(ValueError):
    """The request does not fit the model's inputs (a 400)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    onnx_type: str
    dtype: np.dtype[Any] | None  # None for non-tensors (ZipMap's sequence of maps)
    shape: tuple[int | None, ...] | None  # None entries are dynamic; None shape = unknown rank
    dim_labels: tuple[str, ...]
    batch_dim: str | None = None  # the symbolic name of a dynamic first dimension, when it has one

    @property
    def is_tensor(self) -> bool:
        return self.dtype is not None

    @cached_property
    def batch_dynamic(self) -> bool:
        return bool(self.shape) and self.shape is not None and self.shape[0] is None

    @cached_property
    def batch_tail(self) -> tuple[int, ...] | None:
        """The dims after a dynamic first one when all of them are fixed ([N,16] -> (16,)): an
        array of that shape with at least one row fits as it is, one tuple comparison."""
        shape = self.shape
        if not shape or shape[0] is not None or any(dim is None for dim in shape[1:]):
            return None
        return tuple(dim for dim in shape[1:] if dim is not None)

    def describe(self) -> str:
        """`x float32[N,16]`, as error messages and logs show it."""
        if self.dtype is None:
            return f"{self.name} {self.onnx_type}"
        dims = "?" if self.shape is None else ",".join(self.dim_labels)
        return f"{self.name} {dtype_name(self.dtype)}[{dims}]"


def _spec(node: Any) -> TensorSpec:
    dtype = ORT_DTYPES.get(node.type)
    raw_shape = node.shape if isinstance(node.shape, list) else None
    if dtype is None or raw_shape is None:
        return TensorSpec(node.name, node.type, dtype, None, ())
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else None for dim in raw_shape)
    labels = tuple(
        str(dim) if isinstance(dim, int) and dim >= 0 else (dim if isinstance(dim, str) and dim else "N")
        for dim in raw_shape
    )
    batch_dim = raw_shape[0] if raw_shape and isinstance(raw_shape[0], str) and raw_shape[0] else None
    # A symbolic first dimension reads best as N whatever the exporter called it.
    if labels and shape[0] is None:
        labels = ("N", *labels[1:])
    return TensorSpec(node.name, node.type, dtype, shape, labels, batch_dim)


_FROM_SESSION = object()


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Outputs the graph shows to be row-wise in the inputs (graph.py), whatever their dims say.
    row_aligned: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_session(cls, session: Any, model_path: Path | str | object | None = _FROM_SESSION) -> Signature:
        """The signature of a loaded session. `model_path` lets the graph prove outputs
        row-wise; by default it is the file the session was loaded from, when it says
        (ONNX Runtime keeps it), and None means the signature alone decides."""
        inputs = tuple(_spec(node) for node in session.get_inputs())
        outputs = tuple(_spec(node) for node in session.get_outputs())
        if model_path is _FROM_SESSION:
            model_path = getattr(session, "_model_path", None)
        aligned: frozenset[str] = frozenset()
        if isinstance(model_path, str | Path) and all(spec.batch_dynamic for spec in inputs):
            ranks = {spec.name: len(spec.shape) if spec.shape is not None else None for spec in inputs}
            aligned = row_aligned_outputs(model_path, ranks)
        return cls(inputs, outputs, aligned)

    @cached_property
    def batchable(self) -> bool:
        """Requests can be merged along the first axis and split back by rows: every input has
        a dynamic first dimension and every output follows it, either declared (its first
        dimension is the inputs' own symbol, e.g. N) or shown by the graph (skl2onnx's
        anonymous dimensions and ZipMap). Another symbol ([K,2], [num_detections,2]), a fixed
        size or an unknown shape is not batch-aligned."""
        if not self.inputs or not all(spec.is_tensor and spec.batch_dynamic for spec in self.inputs):
            return False
        symbols = {spec.batch_dim for spec in self.inputs} - {None}
        return all(
            spec.name in self.row_aligned
            or (spec.is_tensor and spec.batch_dynamic and spec.batch_dim in symbols)
            for spec in self.outputs
        )

    @cached_property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs)

    @cached_property
    def _input_set(self) -> frozenset[str]:
        return frozenset(self.input_names)

    def expected(self) -> str:
        """`expected input 'x' float32[N,16]` (or inputs, comma separated)."""
        parts = ", ".join(f"'{spec.name}' {spec.describe().split(' ', 1)[1]}" for spec in self.inputs)
        return f"expected input{'s' if len(self.inputs) > 1 else ''} {parts}"

    def prepare(self, values: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
        """Convert decoded request values to the model's arrays; returns them and the row count.
        Raises SignatureError naming the expected signature when they do not fit."""
        known = self._input_set
        for name in values:
            if name not in known:
                raise SignatureError(f"unknown input {name!r}; {self.expected()}")
        arrays: dict[str, np.ndarray] = {}
        rows: int | None = None
        for spec in self.inputs:
            if spec.name not in values:
                raise SignatureError(f"missing input {spec.name!r}; {self.expected()}")
            array = self._convert(spec, values[spec.name])
            arrays[spec.name] = array
            if spec.batch_dynamic:
                if rows is not None and array.shape[0] != rows:
                    raise SignatureError(f"inputs have different numbers of rows; {self.expected()}")
                rows = array.shape[0]
        return arrays, (rows if rows is not None else 1)

    def _convert(self, spec: TensorSpec, value: Any) -> np.ndarray:
        array = self._as_dtype(spec, value)
        tail = spec.batch_tail
        if tail is not None and array.shape[1:] == tail and array.ndim == len(tail) + 1 and array.shape[0]:
            return array  # the usual request: [rows, fixed dims...]
        shape = spec.shape
        if shape is None:
            return array
        if array.ndim == len(shape) - 1 and shape and shape[0] in (None, 1):
            array = array[np.newaxis, ...]  # one instance sent without its batch dimension
        if array.ndim != len(shape) or any(
            want is not None and want != got for want, got in zip(shape, array.shape, strict=True)
        ):
            got = ",".join(str(d) for d in array.shape)
            raise SignatureError(f"{self.expected()}, got {dtype_name(array.dtype)}[{got}] for {spec.name!r}")
        if shape and shape[0] is None and array.shape[0] == 0:
            raise SignatureError(f"empty batch; {self.expected()}")
        return array

    def _as_dtype(self, spec: TensorSpec, value: Any) -> np.ndarray:
        if spec.dtype is None:
            raise SignatureError(f"input {spec.name!r} is {spec.onnx_type}, which this server cannot feed")
        try:
            return to_dtype(value, spec.dtype)
        except ValueMismatch as error:
            raise SignatureError(f"input {spec.name!r}: {error}; {self.expected()}") from None

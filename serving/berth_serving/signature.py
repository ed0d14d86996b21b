"""The model's input/output signature, read from ONNX Runtime, and the checks that turn
whatever a client sent into exactly the arrays the model takes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

# ONNX Runtime type strings -> numpy dtypes (and the Open Inference Protocol datatype names).
ORT_DTYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(string)": np.dtype(object),
}


class SignatureError(ValueError):
    """The request does not fit the model's inputs (a 400)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    onnx_type: str
    dtype: np.dtype[Any] | None  # None for non-tensors (ZipMap's sequence of maps)
    shape: tuple[int | None, ...] | None  # None entries are dynamic; None shape = unknown rank
    dim_labels: tuple[str, ...]

    @property
    def is_tensor(self) -> bool:
        return self.dtype is not None

    @property
    def batch_dynamic(self) -> bool:
        return bool(self.shape) and self.shape is not None and self.shape[0] is None

    def describe(self) -> str:
        """`x float32[N,16]`, as error messages and logs show it."""
        if self.dtype is None:
            return f"{self.name} {self.onnx_type}"
        dtype = "string" if self.dtype == np.dtype(object) else str(self.dtype)
        dims = "?" if self.shape is None else ",".join(self.dim_labels)
        return f"{self.name} {dtype}[{dims}]"


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
    # A symbolic first dimension reads best as N whatever the exporter called it.
    if labels and shape[0] is None:
        labels = ("N", *labels[1:])
    return TensorSpec(node.name, node.type, dtype, shape, labels)


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def from_session(cls, session: Any) -> Signature:
        return cls(
            tuple(_spec(node) for node in session.get_inputs()),
            tuple(_spec(node) for node in session.get_outputs()),
        )

    @cached_property
    def batchable(self) -> bool:
        """Requests can be merged along the first axis: every input has a dynamic batch
        dimension and every output can be split by rows (a tensor with a dynamic first
        dimension, or a sequence such as ZipMap's)."""
        inputs_ok = all(spec.is_tensor and spec.batch_dynamic for spec in self.inputs)
        outputs_ok = all(
            (spec.is_tensor and spec.batch_dynamic) or spec.onnx_type.startswith("seq(")
            for spec in self.outputs
        )
        return inputs_ok and outputs_ok

    @cached_property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs)

    def expected(self) -> str:
        """`expected input 'x' float32[N,16]` (or inputs, comma separated)."""
        parts = ", ".join(f"'{spec.name}' {spec.describe().split(' ', 1)[1]}" for spec in self.inputs)
        return f"expected input{'s' if len(self.inputs) > 1 else ''} {parts}"

    def prepare(self, values: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
        """Convert decoded request values to the model's arrays; returns them and the row count.
        Raises SignatureError naming the expected signature when they do not fit."""
        unknown = [name for name in values if name not in self.input_names]
        if unknown:
            raise SignatureError(f"unknown input {unknown[0]!r}; {self.expected()}")
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
        shape = spec.shape
        if shape is None:
            return array
        if array.ndim == len(shape) - 1 and shape and shape[0] in (None, 1):
            array = array[np.newaxis, ...]  # one instance sent without its batch dimension
        if array.ndim != len(shape) or any(
            want is not None and want != got for want, got in zip(shape, array.shape, strict=True)
        ):
            got = ",".join(str(d) for d in array.shape)
            raise SignatureError(
                f"{self.expected()}, got {_dtype_name(array.dtype)}[{got}] for {spec.name!r}"
            )
        if shape and shape[0] is None and array.shape[0] == 0:
            raise SignatureError(f"empty batch; {self.expected()}")
        return array

    def _as_dtype(self, spec: TensorSpec, value: Any) -> np.ndarray:
        dtype = spec.dtype
        if dtype is None:
            raise SignatureError(f"input {spec.name!r} is {spec.onnx_type}, which this server cannot feed")
        try:
            if isinstance(value, np.ndarray):
                array = value
            elif dtype.kind == "f":
                # Numbers from JSON or CSV convert straight to the float type (fast path).
                return np.asarray(value, dtype=dtype)
            else:
                array = np.asarray(value)
        except (ValueError, TypeError) as error:
            raise SignatureError(
                f"input {spec.name!r} is not a regular numeric array; {self.expected()}"
            ) from error
        if array.dtype == dtype:
            return array
        if array.dtype == np.dtype(object) or array.dtype.kind in "USV":
            if dtype == np.dtype(object) and array.dtype.kind in "UO":
                return array.astype(object)
            raise SignatureError(f"input {spec.name!r} is not a regular numeric array; {self.expected()}")
        if np.can_cast(array.dtype, dtype, casting="same_kind") or (
            array.dtype.kind == "f" and dtype.kind in "iu" and bool(np.all(np.mod(array, 1) == 0))
        ):
            return array.astype(dtype)
        raise SignatureError(
            f"{self.expected()}, got {_dtype_name(array.dtype)} for {spec.name!r} (cannot convert safely)"
        )


def _dtype_name(dtype: np.dtype[Any]) -> str:
    return "string" if dtype.kind in "OUS" else str(dtype)
